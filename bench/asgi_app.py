"""The ASGI twin of ``bench/app.py``: the same routes answering the same bytes.

The ASGI peers (uvicorn, hypercorn) serve this one, so that every row of the benchmark runs
the same application logic.  Routes, chosen by ``scope["path"]``, are those of
:mod:`bench.app` (``/hello``, ``/64k``, ``/size/N``, ``/post``, ``/upload``, ``/slow``, 404
otherwise), with the same status, ``Content-Type`` and ``Content-Length`` and body bytes;
``tests/test_bench_smoke.py`` checks that route by route.

``/slow`` waits without blocking the event loop, as an async app waiting on a database would.
The wait has to work under uvicorn (asyncio) and hypercorn's trio worker alike, and without a
dependency that neither server brings: :func:`_sleep` asks asyncio for a running loop and falls
back to trio when there is none.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from bench.app import BODY_64K, HELLO, MAX_SIZE, SLOW_BODY, SLOW_SECONDS, _sized

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_TEXT = b"text/plain"
_NOT_FOUND = b"Not Found"


async def _sleep(seconds: float) -> None:
    """Sleep on whichever event loop runs this coroutine: asyncio (uvicorn) or trio."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # no asyncio loop in this thread: hypercorn's trio worker
        import trio

        await trio.sleep(seconds)
    else:
        await asyncio.sleep(seconds)


async def _read_length(receive: Receive) -> int:
    """Receive the whole request body and return how many bytes it had."""
    total = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect: the client went away
            return total
        total += len(message.get("body", b""))
        if not message.get("more_body", False):
            return total


async def _lifespan(receive: Receive, send: Send) -> None:
    """Acknowledge startup and shutdown: the servers log a failure for an app that does not."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The benchmark ASGI application."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    path: str = scope["path"]
    status = 200
    if path == "/hello":
        body = HELLO
    elif path == "/64k":
        body = BODY_64K
    elif path in ("/post", "/upload"):
        body = str(await _read_length(receive)).encode()
    elif path == "/slow":
        await _sleep(SLOW_SECONDS)
        body = SLOW_BODY
    elif path.startswith("/size/") and path[6:].isdigit() and int(path[6:]) <= MAX_SIZE:
        body = _sized(int(path[6:]))
    else:
        status, body = 404, _NOT_FOUND
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", _TEXT),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
