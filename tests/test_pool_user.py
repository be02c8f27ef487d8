"""A root master runs its workers as another user, and the environment it is told to."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fcgi.client import FastCGIClient, build_params

ROOT = Path(__file__).resolve().parent.parent

APP = """
import os

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    keep = os.environ.get("KEEP_ME", "-")
    drop = os.environ.get("DROP_ME", "-")
    return [f"uid={os.getuid()} gid={os.getgid()} keep={keep} drop={drop}".encode()]
"""


@contextmanager
def pool(args: list[str]) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    # Somewhere www-data can read the app: pytest's own tmp dirs are root-only.
    work = Path(tempfile.mkdtemp(prefix="fcgi-user-"))
    work.chmod(0o755)
    (work / "userapp.py").write_text(APP)
    (work / "userapp.py").chmod(0o644)
    sock = f"unix:{work}/pool.sock"
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{work}", DROP_ME="secret")
    log = open(work / "master.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "fcgi", "serve", "userapp:app", "--bind", sock, *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=work,
    )
    try:
        deadline = time.monotonic() + 30
        while not (work / "pool.sock").exists():
            assert proc.poll() is None, (work / "master.log").read_text()
            assert time.monotonic() < deadline, "the pool never listened"
            time.sleep(0.05)
        yield sock, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
            shutil.rmtree(work, ignore_errors=True)


def ask(sock: str) -> str:
    deadline = time.monotonic() + 30
    while True:
        try:
            with FastCGIClient(sock, timeout=10) as client:
                response = client.request(build_params("/"))
            assert response.status == 200, response
            return response.body.decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_workers_run_as_the_configured_user_with_a_clean_environment() -> None:
    www = pwd.getpwnam("www-data")
    args = ["--workers", "2", "--user", "www-data", "--clear-env", "--env", "KEEP_ME=yes"]
    args += ["--listen-owner", "www-data"]
    with pool(args) as (sock, proc):
        answer = ask(sock)
        assert answer == f"uid={www.pw_uid} gid={www.pw_gid} keep=yes drop=-"
        path = sock[len("unix:") :]
        assert os.stat(path).st_uid == www.pw_uid, "listen_owner applied to the socket"
        assert proc.poll() is None


def test_a_root_master_refuses_root_workers_unless_told() -> None:
    command = [sys.executable, "-m", "fcgi", "serve", "userapp:app"]
    command += ["--bind", "unix:/tmp/x.sock", "--workers", "1"]
    proc = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=30,
    )
    assert proc.returncode == 2
    assert "the master runs as root" in proc.stderr
    assert "Traceback" not in proc.stderr
