"""A served request or a closed connection leaves nothing for the cyclic garbage collector.

Objects freed by reference counting go at once; objects in a reference cycle
wait for a collection, and a worker that makes a cycle per request or per
connection pays a gen-0 collection every few hundred of them (the asyncio
worker's request cycle was one: tests/test_asyncio_perf_paths.py). The
cyclic GC is switched off here, so what is freed was freed by reference
counting; the objects of each WSGI worker's connections must all go.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from test_trio_worker import params_for, running_worker, wait_for

from fcgi import sync_worker, trio_worker
from fcgi.connection import ServerConnection


def hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello " + environ["QUERY_STRING"].encode()]


def _alive(kind: type) -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, kind))


WORKERS = {
    "sync": (sync_worker.SyncWorker, sync_worker._Connection),
    "trio": (trio_worker.TrioWorker, trio_worker._Connection),
}


@pytest.mark.parametrize("kind", sorted(WORKERS))
def test_closed_connections_leave_nothing_for_the_cycle_collector(
    tmp_path: Path, kind: str, no_cycle_collector: None
) -> None:
    make, connection_type = WORKERS[kind]
    with running_worker(hello, tmp_path, make=make) as w:
        before = _alive(ServerConnection)
        for number in range(20):
            # A connection per request, as nginx without keep-alive opens them.
            client = w.client()
            reply = client.request(1, params_for("/", query=str(number)))
            assert reply.body == b"hello %d" % number
            client.close()
        kept = w.client()
        for rid in range(1, 11):  # and requests on one kept connection
            assert kept.request(rid, params_for("/", query="kept")).body == b"hello kept"
        kept.close()
        # Of 21 closed connections, at most the last may still be alive: the
        # worker's loop may name it in a local variable until its next event.
        wait_for(
            lambda: _alive(connection_type) <= 1 and _alive(ServerConnection) <= before + 1,
            "the connections' objects to be freed",
        )
