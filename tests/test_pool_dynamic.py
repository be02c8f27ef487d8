"""Dynamic and ondemand pools under a scripted load of concurrent slow requests."""

from __future__ import annotations

from pathlib import Path

from test_pool_support import Load, PoolMaster, wait_for


def test_dynamic_pool_grows_to_max_children_and_settles_back(tmp_path: Path) -> None:
    args = [
        "--pm", "dynamic", "--max-children", "5", "--start-servers", "2",
        "--min-spare-servers", "1", "--max-spare-servers", "2",
    ]  # fmt: skip
    with PoolMaster(tmp_path, args) as m:
        doc = m.wait_ready(2)
        assert doc["process manager"] == "dynamic"
        load = Load(m.address, concurrency=8, target="/sleep?0.3")
        try:
            wait_for(lambda: m.status()["max children reached"] >= 1, what="pool full")
            totals = [m.status()["total processes"] for _ in range(5)]
        finally:
            load.stop()
        assert load.failed == []
        assert all(1 <= t <= 5 for t in totals), totals
        assert "server reached max_children setting (5)" in m.log()
        # Idle workers above max_spare_servers are retired, one per heartbeat.
        wait_for(lambda: m.status()["idle processes"] <= 2, timeout=30, what="settled")
        doc = m.status()
        assert doc["max active processes"] >= 4
        assert doc["total processes"] <= 3


def test_ondemand_starts_on_connection_and_retires_idle_workers(tmp_path: Path) -> None:
    args = ["--pm", "ondemand", "--max-children", "3", "--process-idle-timeout", "1"]
    with PoolMaster(tmp_path, args) as m:
        m.wait_log("ready")
        # No worker until a connection waits.
        assert "spawned child" not in m.log()
        response = m.request("/")
        assert response.status == 200
        assert m.status()["total processes"] >= 1
        load = Load(m.address, concurrency=5, target="/sleep?0.3")
        try:
            wait_for(lambda: m.status()["max children reached"] >= 1, what="pool full")
        finally:
            load.stop()
        assert load.failed == []
        m.wait_log("idle for 1 s: retiring", timeout=30)
        wait_for(lambda: "exited with code 0" in m.log(), what="idle exit")
