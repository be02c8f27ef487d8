"""Graceful reload (SIGHUP / SIGUSR2): new code takes over, nothing fails."""

from __future__ import annotations

import signal
from pathlib import Path

from test_pool_support import Load, PoolMaster, wait_for, write_app


def test_sighup_reload_under_load_switches_code_with_no_failed_request(tmp_path: Path) -> None:
    with PoolMaster(tmp_path, ["--workers", "3"]) as m:
        m.wait_ready(3)
        load = Load(m.address, concurrency=6)
        try:
            for version in ("2", "3", "4"):
                write_app(tmp_path, version)
                m.signal(signal.SIGHUP)
                wait_for(
                    lambda v=version: f"version={v}".encode() in m.request("/").body,  # type: ignore[misc]
                    what=f"version {version}",
                )
                m.wait_log(f"generation {int(version) - 1} serving")
        finally:
            load.stop()
        assert load.failed == [], load.failed[:5]
        assert load.ok > 0
        # The last old workers may still be finishing what was queued for
        # them when they were told to stop; then three remain.
        wait_for(lambda: len(m.worker_pids()) == 3, what="three workers")
        assert all(b"version=4" in m.request("/").body for _ in range(6))


def test_reload_with_broken_code_keeps_the_old_workers(tmp_path: Path) -> None:
    with PoolMaster(tmp_path, ["--workers", "2"]) as m:
        m.wait_ready(2)
        before = m.worker_pids()
        write_app(tmp_path, "2", broken=True)
        m.signal(signal.SIGUSR2)
        m.wait_log("reload failed")
        assert "this version cannot be imported" in m.log()
        assert m.worker_pids() == before
        assert b"version=1" in m.request("/").body


def test_preload_app_reload_reexecs_the_master_with_new_code(tmp_path: Path) -> None:
    with PoolMaster(tmp_path, ["--workers", "2", "--preload-app"]) as m:
        m.wait_ready(2)
        old_workers = m.worker_pids()
        load = Load(m.address, concurrency=6)
        try:
            write_app(tmp_path, "2")
            m.signal(signal.SIGHUP)
            wait_for(lambda: b"version=2" in m.request("/").body, what="version 2")
            m.wait_log("re-executed")
            wait_for(
                lambda: not any(Path(f"/proc/{pid}").exists() for pid in old_workers),
                what="the old workers finished and reaped",
            )
        finally:
            load.stop()
        assert load.failed == [], load.failed[:5]
        assert load.ok > 0
        assert m.proc.poll() is None, "the master kept its pid across exec"
        assert all(b"version=2" in m.request("/").body for _ in range(4))


def test_preload_app_reload_with_broken_code_changes_nothing(tmp_path: Path) -> None:
    with PoolMaster(tmp_path, ["--workers", "2", "--preload-app"]) as m:
        m.wait_ready(2)
        before = m.worker_pids()
        write_app(tmp_path, "2", broken=True)
        m.signal(signal.SIGHUP)
        m.wait_log("reload failed")
        assert m.worker_pids() == before
        assert b"version=1" in m.request("/").body


def test_a_reload_whose_new_workers_recycle_at_once_still_completes(tmp_path: Path) -> None:
    """max_requests 3 under load: a new worker may serve its 3 and leave before the master looks.

    That worker was ready, so the new code starts: the reload goes on. It
    used to wait for it forever, replacing no one, while the old workers
    recycled away until none was left and every request hung.
    """
    args = ["--workers", "2", "--max-requests", "3", "--max-requests-jitter", "0"]
    with PoolMaster(tmp_path, args, status=False) as m:
        m.wait_log(f"master {m.pid} ready")
        load = Load(m.address, concurrency=4, target="/")
        try:
            for generation in range(1, 9):
                m.signal(signal.SIGHUP)
                m.wait_log(f"generation {generation} serving", timeout=30)
        finally:
            load.stop()
        assert load.failed == [], load.failed[:5]
