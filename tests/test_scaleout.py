"""Scale-out: nginx's ``upstream`` over two fcgi hosts, one of which dies mid-load.

Three "hosts" on this machine, each a network namespace created by the test
(addresses 10.77.x.y exist only inside them): ``a`` and ``b`` each run
``fcgi serve frontend_app:app --bind 0.0.0.0:9000``; ``fe`` runs nginx with
deploy/nginx/upstream.conf and is wired to each by a veth pair.  A load
generator in ``fe`` sends GETs; after some have completed, host b dies
(SIGKILL).  Every client request must still succeed (fastcgi_next_upstream),
and every request sent after the kill was answered by host a.

Two shapes of host: a single ``fcgi serve`` process, and a real pool
(``--workers 2 --status-path /status``) whose master and workers die together,
the whole process group, the way a machine dies.  For the pools, the survivor's
status page (fetched with ``fcgi request`` inside its namespace) must account
for exactly the requests the clients got from it: every response names the
worker pid that produced it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import grp
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import pytest
from webservers import (
    DEPLOY_DIR,
    START_TIMEOUT,
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
ADDR_A = "10.77.1.2"
ADDR_B = "10.77.2.2"
POOL_WORKERS = 2
STATUS = "/status?json&full"


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


@dataclasses.dataclass
class Cluster:
    """Two fcgi hosts and nginx, started in ``lab``'s namespaces."""

    tmp_path: Path
    namespaces: dict[str, str]
    procs: list[subprocess.Popen[bytes]] = dataclasses.field(default_factory=list)
    hosts: dict[str, subprocess.Popen[bytes]] = dataclasses.field(default_factory=dict)
    logs: dict[str, Path] = dataclasses.field(default_factory=dict)

    def explain(self) -> str:
        return "\n".join(f"--- {name} log:\n{tail(read_text(p))}" for name, p in self.logs.items())

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop_process(proc)

    def start_host(self, name: str, extra: Sequence[str] = ()) -> subprocess.Popen[bytes]:
        """``fcgi serve frontend_app:app`` on 0.0.0.0:9000 in host ``name``'s namespace."""
        self.logs[name] = self.tmp_path / f"{name}.log"
        command = [
            sys.executable, "-m", "fcgi", "serve", "frontend_app:app",
            "--bind", f"0.0.0.0:{PORT_FCGI}", *extra,
        ]  # fmt: skip
        proc = in_ns(
            self.namespaces[name], command, self.logs[name], env=backend_env(), cwd=str(TESTS_DIR)
        )
        self.procs.append(proc)
        self.hosts[name] = proc
        return proc

    def start_nginx(self, site_name: str) -> None:
        """nginx in ``fe`` with deploy/nginx/SITE over hosts a and b."""
        nginx = _find_nginx()
        prefix = self.tmp_path / "nginx"
        for sub in ("client_body", "fastcgi", "proxy", "scgi", "uwsgi"):
            (prefix / "tmp" / sub).mkdir(parents=True)
        shutil.copyfile(nginx_conf_dir(nginx) / "fastcgi_params", prefix / "fastcgi_params")
        site = prefix / site_name
        site.write_text(
            render_template(
                (DEPLOY_DIR / "nginx" / site_name).read_text(),
                {
                    "listen": f"127.0.0.1:{PORT_HTTP}",
                    "backend_a": f"{ADDR_A}:{PORT_FCGI}",
                    "backend_b": f"{ADDR_B}:{PORT_FCGI}",
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
        self.logs["nginx"] = prefix / "error.log"
        fe = self.namespaces["fe"]
        nginx_proc = in_ns(
            fe, [nginx, "-p", f"{prefix}/", "-c", str(conf), "-e", str(self.logs["nginx"])],
            self.tmp_path / "nginx.stderr",
        )  # fmt: skip
        self.procs.append(nginx_proc)
        wait_listening(fe, PORT_HTTP, nginx_proc, self.logs["nginx"])

    def run_load(self, kill: Callable[[], None]) -> tuple[list[dict[str, Any]], int]:
        """REQUESTS GETs from ``fe``; ``kill()`` once KILL_AFTER have completed.

        Returns every result in completion order (``late``: sent after ``kill()``
        returned) and how many had completed by then.
        """
        self.logs["load"] = self.tmp_path / "load.log"
        url = f"http://127.0.0.1:{PORT_HTTP}/scale/echo?x=1"
        load = in_ns(
            self.namespaces["fe"],
            [sys.executable, str(TESTS_DIR / "scaleout_load.py"), url, str(REQUESTS), str(THREADS)],
            self.logs["load"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.procs.append(load)
        assert load.stdout is not None and load.stdin is not None
        summary = None
        killed = False
        for raw in load.stdout:
            line = raw.decode().strip()
            if line.startswith("progress ") and not killed and int(line.split()[1]) >= KILL_AFTER:
                kill()
                killed = True
                load.stdin.write(b"mark\n")
                load.stdin.flush()
            elif line.startswith("{"):
                summary = json.loads(line)
        load.wait(STOP_TIMEOUT)
        assert killed and summary is not None, self.explain()
        results: list[dict[str, Any]] = summary["results"]
        failed = [r for r in results if "error" in r]
        assert len(results) == REQUESTS, self.explain()
        assert failed == [], f"{len(failed)} failed client requests: {failed[:5]}\n{self.explain()}"
        mark: int = summary["mark"]
        return results, mark

    def status(self, name: str) -> dict[str, Any]:
        """Host ``name``'s pool status page (JSON, full), once no request but
        this one is running there, so that every finished request is counted.

        Fetched with ``fcgi request`` inside the host's namespace, on the pool's
        own socket: the same thing nginx talks to.
        """
        command = [
            "ip", "netns", "exec", self.namespaces[name],
            sys.executable, "-m", "fcgi", "request", f"127.0.0.1:{PORT_FCGI}", STATUS,
        ]  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        last = ""
        while True:
            result = subprocess.run(
                command, capture_output=True, text=True, env=backend_env(), timeout=START_TIMEOUT
            )
            last = f"exit {result.returncode}\n{result.stdout}{result.stderr}"
            if result.returncode == 0:
                doc: dict[str, Any] = json.loads(result.stdout)
                if doc["active requests"] == 1:  # only the status request itself
                    return doc
            code = self.hosts[name].poll()
            assert code is None and time.monotonic() < deadline, (
                f"no quiet status page from host {name} (exit status {code}): {last}\n"
                f"{self.explain()}"
            )
            time.sleep(0.1)


@pytest.fixture
def cluster(lab: Lab, tmp_path: Path) -> Generator[Cluster, None, None]:
    fe, host_a, host_b = lab.ns("fe"), lab.ns("a"), lab.ns("b")
    lab.wire(fe, "10.77.1.1", host_a, ADDR_A, 1)
    lab.wire(fe, "10.77.2.1", host_b, ADDR_B, 2)
    cluster = Cluster(tmp_path, {"fe": fe, "a": host_a, "b": host_b})
    try:
        yield cluster
    finally:
        cluster.stop()


def test_nginx_upstream_survives_a_dead_pool(cluster: Cluster) -> None:
    for name in ("a", "b"):
        proc = cluster.start_host(name)
        wait_listening(cluster.namespaces[name], PORT_FCGI, proc, cluster.logs[name])
    cluster.start_nginx("upstream.conf")

    # Host b's fcgi dies without a goodbye, mid-load.
    results, _ = cluster.run_load(lambda: stop_process(cluster.hosts["b"], signal.SIGKILL))

    explain = cluster.explain
    pid_a = cluster.hosts["a"].pid
    before = {r["pid"] for r in results[:KILL_AFTER]}
    assert pid_a in before and len(before) == 2, f"both hosts served: {before}\n{explain()}"
    after = {r["pid"] for r in results if r["late"]}  # sent once host b was gone
    assert after == {pid_a}, f"after the kill only host a answers: {after}\n{explain()}"
    assert cluster.hosts["a"].poll() is None, explain()
    # nginx did meet the dead host, and moved those requests on.
    assert f"{ADDR_B}:{PORT_FCGI}" in read_text(cluster.logs["nginx"]), explain()


def worker_requests(status: dict[str, Any]) -> dict[int, int]:
    """Requests finished per worker pid, as the status page counts them.

    The worker answering this very status request is still in it: its count
    does not include it yet.
    """
    return {p["pid"]: p["requests"] for p in status["processes"]}


def wait_workers_idle(master: int, count: int, explain: Callable[[], str]) -> None:
    """Wait until ``master`` has ``count`` workers whose process title says idle."""
    deadline = time.monotonic() + START_TIMEOUT
    titles: list[str] = []
    while True:
        titles = []
        children = Path(f"/proc/{master}/task/{master}/children")
        with contextlib.suppress(OSError):
            for pid in children.read_text().split():
                with contextlib.suppress(OSError):
                    titles.append(Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"))
        if sum("fcgi worker" in t and "idle" in t for t in titles) == count:
            return
        assert time.monotonic() < deadline, f"workers not all idle: {titles}\n{explain()}"
        time.sleep(0.05)


def serving_status(status: dict[str, Any]) -> int:
    """Pid of the worker that answered this status page."""
    # The page shows URIs without their query (status_full_query is off).
    path = STATUS.split("?", 1)[0]
    (pid,) = [p["pid"] for p in status["processes"] if p["request uri"] == path]
    return int(pid)


def running(pid: int) -> bool:
    """``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def wait_gone(pids: set[int], why: Callable[[], str]) -> None:
    deadline = time.monotonic() + STOP_TIMEOUT
    while alive := {pid for pid in pids if running(pid)}:
        assert time.monotonic() < deadline, f"still running after SIGKILL: {alive}\n{why()}"
        time.sleep(0.05)


@pytest.mark.parametrize("site", ["upstream.conf", "upstream-keepalive.conf"])
def test_pools_status_accounts_for_every_request(cluster: Cluster, site: str) -> None:
    pool = ["--workers", str(POOL_WORKERS), "--user", "root", "--status-path", "/status"]
    for name in ("a", "b"):
        cluster.start_host(name, pool)
    # Every worker up and waiting first: the master is ready with its first
    # worker, and a worker still starting shows in the status page without a
    # pid. Watched from outside (ps), since a request would be counted.
    for name in ("a", "b"):
        wait_workers_idle(cluster.hosts[name].pid, POOL_WORKERS, cluster.explain)
    # Readiness is the status page itself (a plain connect would be counted
    # as an accepted connection too, which would muddle the books).
    base = {name: cluster.status(name) for name in ("a", "b")}
    explain = cluster.explain
    pids = {name: set(worker_requests(doc)) for name, doc in base.items()}
    for name, doc in base.items():
        why = f"host {name}: {doc}\n{explain()}"
        assert doc["total processes"] == POOL_WORKERS, why
        assert doc["accepted conn"] == 1, why  # this status request
        assert sum(worker_requests(doc).values()) == 0, why
    assert not pids["a"] & pids["b"], f"{pids}\n{explain()}"
    cluster.start_nginx(site)

    def host_dies() -> None:
        # The whole host goes: master and workers at once (one process group).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(cluster.hosts["b"].pid, signal.SIGKILL)
        cluster.hosts["b"].wait(STOP_TIMEOUT)
        wait_gone(pids["b"], explain)

    results, _ = cluster.run_load(host_dies)

    answered = Counter(int(r["pid"]) for r in results)
    assert set(answered) <= pids["a"] | pids["b"], f"{answered} vs {pids}\n{explain()}"
    before = {r["pid"] for r in results[:KILL_AFTER]}
    assert before & pids["a"] and before & pids["b"], f"both served: {before}\n{explain()}"
    # Requests sent once host b was gone (a response b wrote just before it
    # died may still reach its client after the kill).
    after = {r["pid"] for r in results if r["late"]}
    assert after and after <= pids["a"], f"after the kill only host a answers: {after}\n{explain()}"
    assert f"{ADDR_B}:{PORT_FCGI}" in read_text(cluster.logs["nginx"]), explain()

    final = cluster.status("a")
    why = f"answered by host a: {dict(answered)}\nbefore: {base['a']}\nafter: {final}\n{explain()}"
    assert cluster.hosts["a"].poll() is None, why
    # The same workers throughout: nothing was restarted, no count was lost.
    assert set(worker_requests(final)) == pids["a"], why
    by_a = sum(answered[pid] for pid in pids["a"])
    # Per worker: the client responses carrying its pid, plus the first status
    # request if it was the one that answered it.
    first = serving_status(base["a"])
    for pid, count in worker_requests(final).items():
        assert count == answered[pid] + (pid == first), f"worker {pid}\n{why}"
    if site == "upstream.conf":
        # One FastCGI connection per request: the two status requests and
        # every request host a answered.
        assert final["accepted conn"] == by_a + 2, why
    else:
        # Kept connections carry several requests each.
        assert 2 < final["accepted conn"] <= by_a + 2, why
