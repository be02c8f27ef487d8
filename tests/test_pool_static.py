"""A static pool in a real master: serving, crashes, limits, signals, status."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from test_pool_support import PoolMaster, run_concurrently, wait_for


def test_static_pool_serves_and_replaces_a_dead_worker(tmp_path: Path) -> None:
    with PoolMaster(tmp_path, ["--workers", "3"]) as m:
        doc = m.wait_ready(3)
        assert doc["process manager"] == "static"
        assert doc["total processes"] == 3
        assert m.request("/").status == 200
        before = m.worker_pids()
        # A worker that dies mid-request: only that request fails.
        response = m.request("/exit?7")
        assert response.status >= 500
        m.wait_log("exited with code 7")
        assert "during GET /exit?7" in m.log()
        wait_for(lambda: len(m.worker_pids()) == 3 and m.worker_pids() != before)
        assert m.request("/").status == 200
    assert m.proc.returncode == 0


def test_kill_9_of_a_busy_worker_fails_only_its_request(tmp_path: Path) -> None:
    with PoolMaster(tmp_path, ["--workers", "4"]) as m:
        m.wait_ready(4)
        calls = [lambda: m.request("/sleep?3") for _ in range(3)]
        victim_box: list[int] = []

        def kill_one() -> str:
            def busy() -> list[int]:
                procs = m.status()["processes"]
                return [
                    p["pid"]
                    for p in procs
                    if p["state"] == "Running" and p["request uri"] == "/sleep"
                ]

            pids = wait_for(busy, what="a busy worker")
            victim_box.append(pids[0])
            os.kill(pids[0], signal.SIGKILL)
            return "killed"

        results = run_concurrently([*calls, kill_one])
        statuses = sorted(r.status if hasattr(r, "status") else 599 for r in results[:3])
        failures = [s for s in statuses if s != 200]
        assert len(failures) <= 1, results
        m.wait_log(f"child {victim_box[0]} exited on signal 9 (SIGKILL)")
        # A replacement serves.
        wait_for(lambda: m.status()["total processes"] == 4, what="replacement")
        assert victim_box[0] not in m.worker_pids()
        assert m.request("/").status == 200


def test_max_requests_rotates_workers_without_failed_requests(tmp_path: Path) -> None:
    with PoolMaster(tmp_path, ["--workers", "2", "--max-requests", "5"]) as m:
        m.wait_ready(2)
        pids = set()
        for _ in range(30):
            response = m.request("/")
            assert response.status == 200, response
            pids.add(int(response.body.split(b"=")[1].split()[0]))
        assert len(pids) >= 4  # 30 requests / 5 per worker: several generations
        assert "max_requests" in m.log()


def test_request_terminate_timeout_kills_and_logs(tmp_path: Path) -> None:
    with PoolMaster(tmp_path, ["--workers", "2", "--request-terminate-timeout", "0.5"]) as m:
        m.wait_ready(2)
        response = m.request("/sleep?30")
        assert response.status >= 500
        log = m.wait_log("execution timed out")
        assert "method GET, uri /sleep?30" in log
        assert "terminating" in log
        wait_for(lambda: m.status()["total processes"] == 2)
        assert m.request("/").status == 200


def test_slowlog_records_the_stack_and_the_request_goes_on(tmp_path: Path) -> None:
    slowlog = tmp_path / "slow.log"
    args = ["--workers", "1", "--request-slowlog-timeout", "0.3", "--slowlog", str(slowlog)]
    with PoolMaster(tmp_path, args) as m:
        m.wait_ready(1)
        response = m.request("/slowfn?1.5")
        assert response.status == 200  # the request was not interrupted
        text = wait_for(lambda: slowlog.exists() and slowlog.read_text(), what="slowlog")
        assert "very_slow_function_for_slowlog" in text
        assert "/slowfn?1.5" in text
        assert "pid" in text
        assert "executing too slow" in m.log()
        assert m.status()["slow requests"] == 1


def test_max_memory_replaces_a_worker_gracefully(tmp_path: Path) -> None:
    with PoolMaster(tmp_path, ["--workers", "1", "--max-memory", "200M"]) as m:
        m.wait_ready(1)
        first = m.worker_pids()
        response = m.request("/hoard?300")
        assert response.status == 200  # the request itself completes
        m.wait_log("above max_memory")
        wait_for(lambda: m.worker_pids() and m.worker_pids() != first, what="replacement")
        assert m.request("/").status == 200


def test_graceful_stop_finishes_in_flight_requests(tmp_path: Path) -> None:
    m = PoolMaster(tmp_path, ["--workers", "3"])
    try:
        m.wait_ready(3)

        def sleeping() -> int:
            procs = m.status()["processes"]
            return sum(p["state"] == "Running" and p["request uri"] == "/sleep" for p in procs)

        def stop_when_busy() -> None:
            wait_for(lambda: sleeping() == 2, what="both requests running")
            m.signal(signal.SIGTERM)

        results = run_concurrently(
            [lambda: m.request("/sleep?1.5"), lambda: m.request("/sleep?1.5"), stop_when_busy]
        )
        assert [r.status for r in results[:2]] == [200, 200], results
        assert m.proc.wait(30) == 0
        assert "graceful stop" in m.log()
        assert not os.path.exists(m.socket)
    finally:
        m.stop()


def test_sigint_is_a_fast_stop(tmp_path: Path) -> None:
    m = PoolMaster(tmp_path, ["--workers", "2"])
    try:
        m.wait_ready(2)
        results = run_concurrently(
            [
                lambda: m.request("/sleep?30"),
                lambda: (
                    wait_for(lambda: m.status()["active processes"] >= 1),
                    m.signal(signal.SIGINT),
                ),
            ]
        )
        assert m.proc.wait(30) == 0
        assert getattr(results[0], "status", 599) != 200
        assert "fast stop" in m.log()
    finally:
        m.stop()


def test_status_formats_and_ping(tmp_path: Path) -> None:
    with PoolMaster(tmp_path, ["--workers", "2"]) as m:
        m.wait_ready(2)
        ping = m.request("/ping")
        assert (ping.status, ping.body) == (200, b"pong")
        assert "no-cache" in (ping.header("Cache-Control") or "")
        text = m.request("/status").body.decode()
        assert "pool:" in text and "process manager:" in text and "listen queue len:" in text
        full = m.request("/status?full").body.decode()
        assert full.count("pid:") == 2
        om = m.request("/status?openmetrics")
        assert om.header("Content-Type", "").startswith("application/openmetrics-text")
        assert om.body.decode().rstrip().endswith("# EOF")
        assert 'fcgi_total_processes{pool="www"} 2' in om.body.decode()
        html = m.request("/status?html&full").body.decode()
        assert "<table>" in html and "idle processes" in html
        doc = m.status()
        assert doc["listen queue len"] == 511  # from the kernel (sock_diag), unix socket
        assert doc["limits"]["max_children"] == 2
        assert len(doc["processes"]) == 2


def test_status_listen_answers_when_every_worker_is_busy(tmp_path: Path) -> None:
    side = f"unix:{tmp_path / 'status.sock'}"
    with PoolMaster(tmp_path, ["--workers", "1", "--status-listen", side]) as m:
        m.wait_ready(1)

        def check() -> dict[str, object]:
            # Busy with /sleep: the worker may still be finishing wait_ready's
            # own /status (a client has its answer before the slot says idle).
            doc = wait_for(
                lambda: (
                    (d := m.status(side))["active processes"] == 1
                    and d["processes"][0]["request uri"] == "/sleep"  # type: ignore[index]
                    and d
                ),
                what="busy with /sleep",
            )
            assert isinstance(doc, dict)
            return doc

        results = run_concurrently([lambda: m.request("/sleep?1.5"), check])
        doc = results[1]
        assert isinstance(doc, dict), results
        assert doc["idle processes"] == 0
        assert doc["processes"][0]["request uri"] == "/sleep"  # type: ignore[index]


def test_catch_workers_output(tmp_path: Path) -> None:
    with PoolMaster(tmp_path, ["--workers", "1", "--catch-workers-output"]) as m:
        m.wait_ready(1)
        (pid,) = m.worker_pids()
        assert m.request("/print").status == 200
        m.wait_log(f"child {pid} said into stdout: hello from the app")


def test_ttin_ttou_resize_a_static_pool(tmp_path: Path) -> None:
    with PoolMaster(tmp_path, ["--workers", "2"]) as m:
        m.wait_ready(2)
        m.signal(signal.SIGTTIN)
        wait_for(lambda: m.status()["total processes"] == 3, what="3 workers")
        m.signal(signal.SIGTTOU)
        wait_for(lambda: m.status()["total processes"] == 2, what="2 workers")
        m.signal(signal.SIGTTOU)  # one at a time: identical pending signals merge
        wait_for(lambda: m.status()["total processes"] == 1, what="1 worker")
        assert m.request("/").status == 200


def test_an_app_that_cannot_be_imported_stops_the_master(tmp_path: Path) -> None:
    m = PoolMaster(tmp_path, ["--workers", "2"], status=False, broken=True)
    try:
        code = m.proc.wait(30)
        assert code == 3
        assert "this version cannot be imported" in m.log()
    finally:
        m.stop()


def test_sigusr1_reopens_the_access_log(tmp_path: Path) -> None:
    access = tmp_path / "access.log"
    with PoolMaster(tmp_path, ["--workers", "1", "--access-log", str(access)]) as m:
        m.wait_ready(1)
        assert m.request("/?a=1").status == 200
        wait_for(lambda: access.exists() and '"GET /" 200' in access.read_text())
        access.rename(tmp_path / "access.log.1")
        m.signal(signal.SIGUSR1)
        m.wait_log("reopening log files")
        time.sleep(0.2)  # the worker handles its SIGUSR1 between requests
        wait_for(
            lambda: (
                m.request("/again").status == 200
                and access.exists()
                and "/again" in access.read_text()
            ),
            what="new access log",
        )
