"""What the ASGI tests share: the app helpers and the worker kinds that run them.

The trio and asyncio workers serve ASGI through the same code (fcgi.multiplex,
fcgi.asgi), so a behaviour of an ASGI app is written once, in test_asgi.py,
and runs under every :data:`KINDS` entry (its ``kind`` fixture). A kind names
the worker's factory and the two things an app needs from its own event loop:
how to sleep and what cancellation raises. Apps use those, never trio or
asyncio directly, so the same app runs unchanged under either worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from test_trio_worker import Running, running_worker

from fcgi.asyncio_worker import AsyncioWorker, LoopFactory
from fcgi.trio_worker import TrioWorker

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]

#: The event loops the asyncio worker runs on: its own always, uvloop when installed.
LOOPS: dict[str, LoopFactory] = {"asyncio": asyncio.new_event_loop}
with contextlib.suppress(ImportError):
    import uvloop

    LOOPS["uvloop"] = uvloop.new_event_loop


@dataclass(frozen=True)
class WorkerKind:
    """One worker (and loop) an ASGI test runs under."""

    name: str
    #: Builds the worker from (listeners, app, options, hooks), as running_worker calls it.
    make: Callable[..., Any]
    #: The loop's own sleep: apps poll a threading object with it, or wait to be cancelled.
    sleep: Callable[[float], Awaitable[Any]]
    #: What an app sees when the worker cancels it (an aborted request).
    cancelled: type[BaseException]

    def running(
        self, app: Any, tmp_path: Path, hooks: Any = None, **settings: Any
    ) -> contextlib.AbstractContextManager[Running]:
        """This worker serving ``app`` on a unix socket in a background thread."""
        return running_worker(app, tmp_path, hooks, make=self.make, **settings)


KINDS: dict[str, WorkerKind] = {
    "trio": WorkerKind("trio", TrioWorker, trio.sleep, trio.Cancelled),
    **{
        name: WorkerKind(
            name,
            functools.partial(AsyncioWorker, loop_factory=factory),
            asyncio.sleep,
            asyncio.CancelledError,
        )
        for name, factory in LOOPS.items()
    },
}


async def read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        assert message["type"] == "http.request"
        body += message["body"]
        if not message["more_body"]:
            return body


async def respond(
    send: Send, status: int, body: bytes, content_type: bytes = b"text/plain"
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type)],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await respond(send, 200, b"hello " + scope["query_string"])
