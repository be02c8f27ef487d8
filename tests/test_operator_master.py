"""The master after "ready": workers that cannot start, crashes in C, exit statuses.

Each test runs ``fcgi serve`` for real (a master in a subprocess, its
workers, a unix socket) and does what an operator or a deploy would do to it:
break the app's code under a running pool and fix it again, let workers die
in different ways, start pools that cannot start.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from test_pool_support import ROOT, PoolMaster, wait_for, write_app

from fcgi.client import FastCGIClient, build_params
from fcgi.exit_codes import EXIT_APP_IMPORT, EXIT_WORKERS


def status_text(address: str) -> str:
    """The plain-text status page, as PHP-FPM's own scripts read it."""
    with FastCGIClient(address, timeout=30.0) as client:
        return client.request(build_params("/status")).body.decode()


def test_a_broken_deploy_under_a_running_pool_is_retried_until_fixed(tmp_path: Path) -> None:
    """New workers that cannot import the app: the master backs off, then recovers."""
    status = f"unix:{tmp_path / 'status.sock'}"
    args = ["--workers", "2", "--max-requests", "1", "--status-listen", status]
    with PoolMaster(tmp_path, args) as m:
        wait_for(lambda: m.status(status)["idle processes"] == 2, what="2 workers")
        assert m.status(status)["start failures"] == 0
        assert m.status(status)["start backoff"] == 0
        # A deploy breaks the code; each worker is replaced after one request.
        write_app(tmp_path, "2", broken=True)
        assert b"version=1" in m.request("/").body  # the worker then exits
        m.wait_log("retrying in 1 s")
        m.wait_log("retrying in 2 s")
        # The surviving worker still answers (and is then replaced, too).
        assert b"version=1" in m.request("/").body
        m.wait_log("retrying in 4 s", timeout=60)
        page = m.status(status)
        assert page["start failures"] >= 3 and page["start backoff"] >= 4, page
        text = status_text(status)
        assert re.search(r"^start failures:\s+\d+$", text, re.M), text
        assert re.search(r"^start backoff:\s+\d+$", text, re.M), text
        assert m.proc.poll() is None
        # One log line per attempt, each wait twice the one before.
        waits = [float(w) for w in re.findall(r"retrying in ([\d.]+) s", m.log())]
        assert waits[:3] == [1, 2, 4], waits
        assert waits == sorted(waits) and len(set(waits)) == len(waits), waits
        # The fix is deployed: the next attempt starts, the pool fills up again.
        write_app(tmp_path, "3")
        response = m.request("/", timeout=120)
        assert b"version=3" in response.body, (response, m.log())
        m.wait_log("start retries are over")
        wait_for(lambda: m.status(status)["idle processes"] == 2, what="pool full again")
        assert m.status(status)["start backoff"] == 0
        assert m.proc.poll() is None
    assert m.proc.returncode == 0, m.log()


def test_an_ondemand_pool_whose_next_worker_cannot_start_keeps_its_master(
    tmp_path: Path,
) -> None:
    """Broken after "ready", before any worker started: the first request waits for a fix.

    The master retries (it used to exit 3 here, on the first request); once
    the code is fixed the waiting request is answered by the new code.
    """
    args = ["--pm", "ondemand", "--max-children", "2"]
    with PoolMaster(tmp_path, args, status=False) as m:
        m.wait_log(f"master {m.pid} ready")
        write_app(tmp_path, "2", broken=True)
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(m.request, "/", 120.0)
            m.wait_log("retrying in 2 s", timeout=60)
            assert m.proc.poll() is None and not waiting.done()
            write_app(tmp_path, "3")
            assert b"version=3" in waiting.result(180).body, m.log()
        m.wait_log("start retries are over")
        assert m.proc.poll() is None
    assert m.proc.returncode == 0, m.log()


CRASH_APP = """
import os, signal

def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif path == "/bus":
        os.kill(os.getpid(), signal.SIGBUS)
    elif path == "/exit":
        os._exit(9)
    elif path == "/interrupt":
        raise KeyboardInterrupt("the worker dies of an exception")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"pid={os.getpid()}".encode()]
"""


@pytest.mark.parametrize("preload", [False, True], ids=["fork", "preload"])
def test_emergency_restart_counts_only_workers_killed_by_sigsegv_or_sigbus(
    tmp_path: Path, preload: bool
) -> None:
    (tmp_path / "crashapp.py").write_text(textwrap.dedent(CRASH_APP))
    args = ["--workers", "2", "--emergency-restart-threshold", "2"]
    args += ["--emergency-restart-interval", "600"]
    args += ["--preload-app"] if preload else []
    with PoolMaster(tmp_path, args, app="crashapp:app") as m:
        m.wait_ready(2)
        for target in ("/exit", "/interrupt", "/exit", "/interrupt"):
            assert m.request(target).status == 599  # the worker died mid-request
            m.wait_ready(2)
        assert "emergency_restart_threshold" not in m.log()
        assert "graceful reload" not in m.log() and "re-executed" not in m.log()
        assert m.request("/segv").status == 599
        m.wait_log("exited on signal 11 (SIGSEGV)")
        m.wait_ready(2)
        assert "emergency_restart_threshold" not in m.log()
        assert m.request("/bus").status == 599
        m.wait_log("killed by SIGSEGV or SIGBUS within 600 s (emergency_restart_threshold 2)")
        # A graceful reload, as SIGHUP does: new workers, or a new master
        # (same pid) when the app lives in it.
        m.wait_log("re-executed" if preload else "reload complete")
        m.wait_log("workers of the previous master to finish" if preload else "")
        m.wait_ready(2)
        if not preload:
            # The old generation's workers are listed until they have exited.
            wait_for(
                lambda: {p["generation"] for p in m.status()["processes"]} == {1},
                what="only generation 1 left",
            )
        assert m.proc.poll() is None


# -- exit statuses before "ready" ---------------------------------------------------

#: Imports in the master's start-up check (a child of its own), then no more.
IMPORTS_ONCE = """
import os
MARK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imported-once")
if os.path.exists(MARK):
    import module_that_does_not_exist
open(MARK, "w").close()

def app(environ, start_response):
    start_response("200 OK", [])
    return [b""]
"""

#: Imported by the start-up check with the pool's chdir as its directory: it
#: removes that directory, so the workers' chdir fails (as a directory
#: removed between the check and the start would).
REMOVES_CHDIR = """
import os
here = os.getcwd()
if os.path.basename(here) == "work":
    os.chdir("/")
    os.rmdir(here)

def app(environ, start_response):
    start_response("200 OK", [])
    return [b""]
"""


def serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fcgi", "serve", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=f"{ROOT}:{tmp_path}", PYTHONDONTWRITEBYTECODE="1"),
        timeout=120,
    )


def test_a_pool_whose_workers_cannot_import_the_app_exits_3(tmp_path: Path) -> None:
    (tmp_path / "onceapp.py").write_text(textwrap.dedent(IMPORTS_ONCE))
    sock = tmp_path / "app.sock"
    proc = serve(tmp_path, "onceapp:app", "--bind", f"unix:{sock}", "--workers", "2",
                 "--user", "root")  # fmt: skip
    assert proc.returncode == EXIT_APP_IMPORT, proc
    assert "workers cannot start" in proc.stderr and "exit code 3" in proc.stderr
    assert "ready" not in proc.stderr
    assert not sock.exists()


def test_a_pool_whose_workers_cannot_chdir_exits_4(tmp_path: Path) -> None:
    (tmp_path / "chdirapp.py").write_text(textwrap.dedent(REMOVES_CHDIR))
    (tmp_path / "work").mkdir()
    sock = tmp_path / "app.sock"
    proc = serve(tmp_path, "chdirapp:app", "--bind", f"unix:{sock}", "--workers", "2",
                 "--user", "root", "--chdir", str(tmp_path / "work"))  # fmt: skip
    assert proc.returncode == EXIT_WORKERS, proc
    assert "chdir" in proc.stderr and "exit code 4" in proc.stderr, proc.stderr
    assert "ready" not in proc.stderr
    assert not sock.exists()


def test_an_app_that_does_not_import_exits_3_in_every_mode(tmp_path: Path) -> None:
    sock = f"unix:{tmp_path / 'app.sock'}"
    single = serve(tmp_path, "nosuchmodule:app", "--bind", sock)
    assert single.returncode == EXIT_APP_IMPORT, single
    pool = serve(tmp_path, "nosuchmodule:app", "--bind", sock, "--workers", "2",
                 "--user", "root")  # fmt: skip
    assert pool.returncode == EXIT_APP_IMPORT, pool
    preload = serve(tmp_path, "nosuchmodule:app", "--bind", sock, "--workers", "2",
                    "--user", "root", "--preload-app")  # fmt: skip
    assert preload.returncode == EXIT_APP_IMPORT, preload
    assert "nosuchmodule" in preload.stderr and "Traceback" not in preload.stderr
