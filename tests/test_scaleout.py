"""Scale-out: nginx's ``upstream`` over two fcgi hosts, one of which dies mid-load.

Three "hosts" on this machine, each a network namespace created by the test
(addresses 10.77.x.y exist only inside them): ``a`` and ``b`` each run
``fcgi serve frontend_app:app --bind 0.0.0.0:9000``; ``fe`` runs nginx with
deploy/nginx/upstream.conf and is wired to each by a veth pair.  A load
generator in ``fe`` sends GETs; after some have completed, host b's fcgi is
SIGKILLed.  Every client request must still succeed (fastcgi_next_upstream),
and every request completed after the kill was answered by host a.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
from collections.abc import Generator
from pathlib import Path

import pytest
from webservers import (
    DEPLOY_DIR,
    STOP_TIMEOUT,
    TESTS_DIR,
    backend_env,
    nginx_conf_dir,
    read_text,
    render_template,
    stop_process,
    tail,
)
from webservers import find_nginx as _find_nginx

REQUESTS = 600
KILL_AFTER = 150
THREADS = 6
PORT_FCGI = 9000
PORT_HTTP = 8080


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Lab:
    """Network namespaces and veth pairs, all removed by :meth:`remove`."""

    def __init__(self) -> None:
        self.tag = f"fcgi{os.getpid() % 100000}"
        self.namespaces: list[str] = []

    def ns(self, name: str) -> str:
        full = f"{self.tag}-{name}"
        ip("netns", "add", full)
        self.namespaces.append(full)
        ip("-n", full, "link", "set", "lo", "up")
        return full

    def wire(self, left: str, left_addr: str, right: str, right_addr: str, n: int) -> None:
        """A veth pair between two namespaces, with a /24 address on each end."""
        a, b = f"v{self.tag[4:]}{n}a", f"v{self.tag[4:]}{n}b"  # <= 15 characters
        ip("link", "add", a, "netns", left, "type", "veth", "peer", "name", b, "netns", right)
        for ns, dev, addr in ((left, a, left_addr), (right, b, right_addr)):
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")

    def remove(self) -> None:
        for ns in reversed(self.namespaces):  # deleting a namespace deletes its veths
            with contextlib.suppress(subprocess.CalledProcessError):
                ip("netns", "del", ns)


def in_ns(ns: str, argv: list[str], log: Path, **kwargs: object) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(  # type: ignore[call-overload,no-any-return]
            ["ip", "netns", "exec", ns, *argv],
            stdout=kwargs.pop("stdout", out),
            stderr=out,
            start_new_session=True,
            **kwargs,
        )


def wait_listening(ns: str, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Poll (a hang guard) until something in ``ns`` listens on ``port``."""
    probe = (
        "import socket, sys, time\n"
        f"end = time.monotonic() + {STOP_TIMEOUT * 2}\n"
        "while time.monotonic() < end:\n"
        "    s = socket.socket()\n"
        f"    if s.connect_ex(('127.0.0.1', {port})) == 0: sys.exit(0)\n"
        "    s.close(); time.sleep(0.05)\n"
        "sys.exit(1)\n"
    )
    result = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", probe])
    assert result.returncode == 0 and proc.poll() is None, (
        f"nothing on {ns}:{port}\n{read_text(log)}"
    )


@pytest.fixture
def lab() -> Generator[Lab, None, None]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.fail("the scale-out test needs root and iproute2 (ip netns)", pytrace=False)
    lab = Lab()
    try:
        yield lab
    finally:
        lab.remove()


def test_nginx_upstream_survives_a_dead_pool(lab: Lab, tmp_path: Path) -> None:
    fe, host_a, host_b = lab.ns("fe"), lab.ns("a"), lab.ns("b")
    lab.wire(fe, "10.77.1.1", host_a, "10.77.1.2", 1)
    lab.wire(fe, "10.77.2.1", host_b, "10.77.2.2", 2)

    procs: list[subprocess.Popen[bytes]] = []
    logs = {name: tmp_path / f"{name}.log" for name in ("a", "b", "nginx", "load")}

    def explain() -> str:
        return "\n".join(f"--- {name} log:\n{tail(read_text(p))}" for name, p in logs.items())

    try:
        pools = {}
        for name, ns in (("a", host_a), ("b", host_b)):
            command = [
                sys.executable, "-m", "fcgi", "serve", "frontend_app:app",
                "--bind", f"0.0.0.0:{PORT_FCGI}",
            ]  # fmt: skip
            proc = in_ns(ns, command, logs[name], env=backend_env(), cwd=str(TESTS_DIR))
            procs.append(proc)
            wait_listening(ns, PORT_FCGI, proc, logs[name])
            pools[name] = proc

        nginx = _find_nginx()
        prefix = tmp_path / "nginx"
        for sub in ("client_body", "fastcgi", "proxy", "scgi", "uwsgi"):
            (prefix / "tmp" / sub).mkdir(parents=True)
        shutil.copyfile(nginx_conf_dir(nginx) / "fastcgi_params", prefix / "fastcgi_params")
        site = prefix / "upstream.conf"
        site.write_text(
            render_template(
                (DEPLOY_DIR / "nginx" / "upstream.conf").read_text(),
                {
                    "listen": f"127.0.0.1:{PORT_HTTP}",
                    "backend_a": f"10.77.1.2:{PORT_FCGI}",
                    "backend_b": f"10.77.2.2:{PORT_FCGI}",
                },
            )
        )
        conf = prefix / "nginx.conf"
        conf.write_text(
            render_template(
                (DEPLOY_DIR / "nginx" / "nginx-test.conf").read_text(),
                {
                    "prefix": str(prefix),
                    "site": str(site),
                    "user": pwd.getpwuid(os.geteuid()).pw_name,
                    "group": grp.getgrgid(os.getegid()).gr_name,
                },
            )
        )
        logs["nginx"] = prefix / "error.log"
        nginx_proc = in_ns(
            fe, [nginx, "-p", f"{prefix}/", "-c", str(conf), "-e", str(logs["nginx"])],
            tmp_path / "nginx.stderr",
        )  # fmt: skip
        procs.append(nginx_proc)
        wait_listening(fe, PORT_HTTP, nginx_proc, logs["nginx"])

        url = f"http://127.0.0.1:{PORT_HTTP}/scale/echo?x=1"
        load = in_ns(
            fe,
            [sys.executable, str(TESTS_DIR / "scaleout_load.py"), url, str(REQUESTS), str(THREADS)],
            logs["load"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        procs.append(load)
        assert load.stdout is not None and load.stdin is not None
        summary = None
        killed = False
        for raw in load.stdout:
            line = raw.decode().strip()
            if line.startswith("progress ") and not killed and int(line.split()[1]) >= KILL_AFTER:
                # Host b's fcgi dies without a goodbye, mid-load.
                stop_process(pools["b"], signal.SIGKILL)
                killed = True
                load.stdin.write(b"mark\n")
                load.stdin.flush()
            elif line.startswith("{"):
                summary = json.loads(line)
        load.wait(STOP_TIMEOUT)
        assert killed and summary is not None, explain()

        results = summary["results"]
        mark = summary["mark"]
        failed = [r for r in results if "error" in r]
        assert len(results) == REQUESTS, explain()
        assert failed == [], f"{len(failed)} failed client requests: {failed[:5]}\n{explain()}"
        pid_a = pools["a"].pid
        before = {r["pid"] for r in results[:KILL_AFTER]}
        assert pid_a in before and len(before) == 2, f"both hosts served: {before}\n{explain()}"
        after = {r["pid"] for r in results[mark:]}
        assert after == {pid_a}, f"after the kill only host a answers: {after}\n{explain()}"
        assert pools["a"].poll() is None, explain()
        # nginx did meet the dead host, and moved those requests on.
        assert "10.77.2.2:9000" in read_text(logs["nginx"]), explain()
    finally:
        for proc in reversed(procs):
            stop_process(proc)
