"""The pool running trio workers: an ASGI app and concurrent requests per worker."""

from __future__ import annotations

import textwrap
import threading
from pathlib import Path

from test_pool_support import PoolMaster

ASGI_APP = """
import os, trio

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/sleep":
        await trio.sleep(float(scope["query_string"] or b"0.3"))
    body = f"asgi pid={os.getpid()} path={scope['path']}".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
"""


def test_wsgi_app_in_a_trio_pool(tmp_path: Path) -> None:
    with PoolMaster(tmp_path, ["--workers", "2", "--worker", "trio"]) as m:
        m.wait_ready(2)
        assert b"version=1" in m.request("/").body


def test_pool_detects_an_asgi_app(tmp_path: Path) -> None:
    (tmp_path / "asgiapp.py").write_text(textwrap.dedent(ASGI_APP))
    with PoolMaster(tmp_path, ["--workers", "1", "--worker", "trio"], app="asgiapp:app") as m:
        m.wait_ready(1)
        assert m.request("/hello").body.startswith(b"asgi pid=")
        # One worker, requests at once: the trio worker serves them concurrently.
        results: list[bytes] = []
        threads = [
            threading.Thread(target=lambda: results.append(m.request("/sleep").body))
            for _ in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(results) == 8 and all(b.startswith(b"asgi pid=") for b in results)
        status = m.status()
        assert status["accepted conn"] >= 9


def test_status_counts_concurrent_requests_of_a_trio_worker(tmp_path: Path) -> None:
    (tmp_path / "asgiapp.py").write_text(textwrap.dedent(ASGI_APP))
    with PoolMaster(tmp_path, ["--workers", "1", "--worker", "trio"], app="asgiapp:app") as m:
        m.wait_ready(1)
        seen: list[int] = []
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                seen.append(m.status()["active requests"])

        threads = [threading.Thread(target=lambda: m.request("/sleep")) for _ in range(6)]
        watcher = threading.Thread(target=watch)
        watcher.start()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        stop.set()
        watcher.join(30)
        # The status request itself runs too; six sleeping ones overlap it.
        assert max(seen) >= 3, seen
        doc = m.status()
        assert doc["processes"][0]["active requests"] == 1  # only the status request


def test_dynamic_trio_pool_counts_spare_concurrency_not_busy_processes(tmp_path: Path) -> None:
    (tmp_path / "asgiapp.py").write_text(textwrap.dedent(ASGI_APP))
    args = ["--worker", "trio", "--pm", "dynamic", "--max-children", "4"]
    args += ["--start-servers", "1", "--min-spare-servers", "1", "--max-spare-servers", "2"]
    with PoolMaster(tmp_path, args, app="asgiapp:app") as m:
        m.wait_ready(1)
        seen: list[int] = []
        threads = [threading.Thread(target=lambda: m.request("/sleep?3")) for _ in range(4)]
        for thread in threads:
            thread.start()
        # Several heartbeats pass while four requests share the one worker,
        # which still has room (threads=10): a sync pool would have grown.
        while any(thread.is_alive() for thread in threads):
            seen.append(m.status()["total processes"])
        for thread in threads:
            thread.join(30)
        assert max(seen) == 1, seen
