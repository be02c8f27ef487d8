"""Process supervision: signals around a preload re-exec, and workers of a dead master.

Threats: an operator (or logrotate, or systemd) sends signals in quick
succession, some of which land while the master is between two interpreters
or still importing the app; and a master killed with SIGKILL (OOM killer, a
careless ``kill -9``) leaves workers behind. Neither may cost a running
site: the master must never die of a signal it handles, and workers must
not outlive their master, which would keep a socket path nobody supervises.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest
from test_pool_support import PoolMaster, wait_for, write_app

from fcgi.client import Response

#: Signals an operator (or logrotate) may send while a reload is under way.
BURST = (signal.SIGHUP, signal.SIGUSR2, signal.SIGUSR1) * 2


def pool_processes(sock_path: str) -> dict[int, tuple[int, str]]:
    """Every live process whose command line names ``sock_path``, or that runs in
    its directory (a worker's process title no longer names it): pid -> (ppid, state)."""
    found = {}
    home = str(Path(sock_path).parent)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            stat = (entry / "stat").read_text()
            cwd = str((entry / "cwd").readlink())
        except OSError:
            continue
        if sock_path.encode() not in cmdline and cwd != home:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] in ("Z", "X"):
            continue  # dead, waiting to be reaped: not serving anything
        found[int(entry.name)] = (int(fields[1]), fields[0])
    return found


def orphans(m: PoolMaster) -> dict[int, tuple[int, str]]:
    """Pool processes that are not the master and not its children."""
    return {
        pid: info
        for pid, info in pool_processes(m.socket).items()
        if pid != m.pid and info[0] != m.pid
    }


def reexec_count(m: PoolMaster) -> int:
    return m.log().count("re-executing the master")


def wait_reexec(m: PoolMaster, before: int) -> None:
    """Return as soon as the master logged that it is about to exec."""
    wait_for(lambda: reexec_count(m) > before, timeout=30, what="the master re-executing")


def serves(m: PoolMaster, text: str) -> bool:
    """True once ``/`` answers with ``text``; fails at once if the master died."""
    code = m.proc.poll()
    assert code is None, f"the master died ({code}: negative is a signal)\n{m.log()}"
    return text.encode() in m.request("/").body


# -- item 2: signals around the re-exec ------------------------------------------------


def test_signal_burst_during_preload_reexec_does_not_kill_the_master(tmp_path: Path) -> None:
    with PoolMaster(tmp_path, ["--workers", "2", "--preload-app"]) as m:
        m.wait_ready(2)
        for version in ("2", "3", "4"):
            write_app(tmp_path, version)
            before = reexec_count(m)
            m.signal(signal.SIGHUP)
            # The exec follows the log line at once: the burst lands while the
            # new interpreter starts, before it has any handler of its own.
            wait_reexec(m, before)
            for sig in BURST:
                m.signal(sig)
            wait_for(
                lambda v=version: serves(m, f"version={v}"),  # type: ignore[misc]
                timeout=60,
                what=f"version {version}",
            )
        # Every queued reload has run its course: the master settles and none
        # of the workers it ever had is left without it.
        wait_for(lambda: not orphans(m), timeout=30, what="no orphaned worker")
        wait_for(
            lambda: len(pool_processes(m.socket)) == 3, timeout=60, what="master and 2 workers"
        )
        assert m.proc.poll() is None, m.log()
        assert all(b"version=4" in m.request("/").body for _ in range(4))
        assert m.stop() == 0
    assert not pool_processes(m.socket)


@pytest.mark.parametrize("moment", ["checking the new code", "between interpreters"])
def test_sigterm_during_preload_reexec_stops_the_master_cleanly(
    tmp_path: Path, moment: str
) -> None:
    with PoolMaster(tmp_path, ["--workers", "2", "--preload-app"]) as m:
        m.wait_ready(2)
        write_app(tmp_path, "2")
        m.signal(signal.SIGHUP)
        if moment == "between interpreters":
            wait_reexec(m, 0)
        # Else at once: while the master imports the new code in a
        # subprocess, a stop that must not be forgotten by the exec.
        m.signal(signal.SIGTERM)
        code = m.proc.wait(60)
        assert code == 0, f"master ended with {code} (negative: killed by the signal)\n{m.log()}"
        assert "graceful stop" in m.log()
        wait_for(lambda: not pool_processes(m.socket), timeout=30, what="no process left")


SLOW_IMPORT_APP = """
import time
time.sleep(3)
from poolapp import app
"""


def start_slow_preload(tmp_path: Path) -> PoolMaster:
    (tmp_path / "slowapp.py").write_text(SLOW_IMPORT_APP)
    m = PoolMaster(tmp_path, ["--workers", "1", "--preload-app"], app="slowapp:app")
    m.wait_log("preloading slowapp:app")
    return m


def test_sighup_while_the_app_is_preloaded_at_first_start_is_not_fatal(tmp_path: Path) -> None:
    with start_slow_preload(tmp_path) as m:
        for sig in BURST:
            m.signal(sig)
        assert m.proc.poll() is None, m.log()
        m.wait_ready(1)
        assert b"version=1" in m.request("/").body
        assert m.proc.poll() is None, m.log()
        assert m.stop() == 0


def test_sigterm_while_the_app_is_preloaded_at_first_start_stops_cleanly(tmp_path: Path) -> None:
    with start_slow_preload(tmp_path) as m:
        m.signal(signal.SIGTERM)
        code = m.proc.wait(60)
        assert code == 0, f"master ended with {code}\n{m.log()}"
        assert "graceful stop" in m.log()
        wait_for(lambda: not pool_processes(m.socket), timeout=30, what="no process left")


# -- item 3: workers of a dead master ---------------------------------------------------


def request_in_thread(m: PoolMaster, target: str) -> tuple[threading.Thread, list[Response]]:
    results: list[Response] = []
    thread = threading.Thread(target=lambda: results.append(m.request(target, timeout=60)))
    thread.start()
    return thread, results


def wait_busy(m: PoolMaster, uri: str) -> None:
    wait_for(
        lambda: any(p["request uri"].startswith(uri) for p in m.status()["processes"]),
        what=f"a worker busy with {uri}",
    )


@pytest.mark.parametrize("worker", ["sync", "trio"])
def test_workers_finish_and_exit_when_the_master_is_killed(tmp_path: Path, worker: str) -> None:
    m = PoolMaster(tmp_path, ["--workers", "2", "--worker", worker])
    try:
        m.wait_ready(2)
        workers = m.worker_pids()
        thread, results = request_in_thread(m, "/sleep?3")
        wait_busy(m, "/sleep")
        m.proc.kill()
        m.proc.wait()
        thread.join(60)
        # The request in flight when the master died is answered in full.
        assert results and results[0].status == 200, results
        done = time.monotonic()
        # The bound is ~2 s; 15 s leaves room for a loaded machine.
        wait_for(
            lambda: not (workers & set(pool_processes(m.socket))),
            timeout=15,
            what="every worker of the dead master gone",
        )
        print(f"workers gone {time.monotonic() - done:.2f} s after the last response")
        # Each says why it left (the first master's log: they inherited it).
        assert m.log().count("exiting: the master is gone") == len(workers), m.log()
    finally:
        m.stop()
    # A new master takes the same path without anyone removing the socket file.
    with PoolMaster(tmp_path, ["--workers", "2", "--worker", worker]) as again:
        again.wait_ready(2)
        assert b"version=1" in again.request("/").body
        assert "removing stale socket" in again.log()


def test_new_master_waits_for_leftover_workers_still_holding_the_socket(tmp_path: Path) -> None:
    m = PoolMaster(tmp_path, ["--workers", "2"])
    try:
        m.wait_ready(2)
        thread, results = request_in_thread(m, "/sleep?4")
        wait_busy(m, "/sleep")
        m.proc.kill()
        m.proc.wait()
        # The dead master's worker still finishes its request, holding the
        # listening socket meanwhile: the new master must not take it for a
        # live server, nor take the path from under it; it waits.
        again = PoolMaster(tmp_path, ["--workers", "1"])
        try:
            again.wait_log("still hold the socket")
            thread.join(60)
            assert results and results[0].status == 200, results
            # Until the leftover worker exits, a client may still reach it
            # (it serves what was queued before it stops): only then is the
            # path the new master's.
            again.wait_log("removing stale socket")
            again.wait_ready(1)
            assert b"version=1" in again.request("/").body
        finally:
            again.stop()
    finally:
        m.stop()


def test_a_live_master_keeps_its_socket(tmp_path: Path) -> None:
    with PoolMaster(tmp_path, ["--workers", "1"]) as m:
        m.wait_ready(1)
        second = tmp_path / "second"
        second.mkdir()
        other = PoolMaster(second, ["--workers", "1", "--bind", m.address])
        try:
            assert other.proc.wait(30) == 2
        finally:
            other.stop()
        text = other.log_path.read_text()
        assert f"another server is listening there (pid {m.pid})" in text, text
        assert b"version=1" in m.request("/").body
