"""WSGI or ASGI? Telling the two kinds of app apart, and which worker runs each.

Kept free of trio so the sync worker's start-up does not pay for importing it.
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Any, Literal

from fcgi.errors import ConfigError

log = logging.getLogger("fcgi.serve")

Interface = Literal["wsgi", "asgi"]
INTERFACES = ("auto", "wsgi", "asgi")
WORKERS = ("sync", "trio", "asyncio")


def _unwrap(app: Any) -> Any:
    while isinstance(app, functools.partial):
        app = app.func
    return app


def _positional_count(fn: Any) -> int | None:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    count = 0
    for param in signature.parameters.values():
        if param.kind is param.VAR_POSITIONAL:
            return None  # takes anything
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            count += 1
    return count


def detect_interface(app: Any) -> Interface:
    """ "asgi" for an ASGI 3 app, "wsgi" otherwise.

    An ASGI 3 app is a coroutine function, or an object whose ``__call__`` is
    one, taking ``(scope, receive, send)``. A coroutine function with another
    number of parameters is neither, and says so.
    """
    target = _unwrap(app)
    if inspect.iscoroutinefunction(target):
        fn = app
    else:
        call = getattr(target, "__call__", None)  # noqa: B004 - we want the method itself
        if call is None or not inspect.iscoroutinefunction(_unwrap(call)):
            return "wsgi"
        fn = app if isinstance(app, functools.partial) else call
    count = _positional_count(fn)
    if count is not None and count != 3:
        raise ConfigError(
            f"{app!r} is an async callable taking {count} positional arguments: an ASGI 3 "
            "app takes (scope, receive, send), and a WSGI app is not async"
        )
    return "asgi"


def resolve_interface(app: Any, requested: str) -> Interface:
    """The interface to serve ``app`` with: ``requested`` unless it is "auto"."""
    if requested == "auto":
        return detect_interface(app)
    if requested not in ("wsgi", "asgi"):
        raise ConfigError(f"interface must be one of {', '.join(INTERFACES)}, not {requested!r}")
    return "asgi" if requested == "asgi" else "wsgi"


def choose_worker(requested: str, interface: Interface) -> str:
    """The worker kind for an app: an ASGI app left on the sync worker gets asyncio.

    asyncio rather than trio, as measured (bench/RESULTS.md): the asyncio
    worker serves a request for about a third of the trio worker's CPU, and
    it runs the apps that call asyncio directly (``asyncio.sleep``, asyncio
    database drivers), which most ASGI apps are; anyio apps (Starlette,
    FastAPI) run on both. ``--worker trio`` still picks trio.
    """
    if requested not in WORKERS:
        raise ConfigError(f"worker must be one of {', '.join(WORKERS)}, not {requested!r}")
    if interface == "wsgi" and requested == "asyncio":
        raise ConfigError(
            "the asyncio worker runs ASGI apps only, and this app is a WSGI app: "
            "use --worker sync or --worker trio (or --interface asgi if it is ASGI)"
        )
    if interface == "asgi" and requested == "sync":
        log.info(
            "ASGI app: using the asyncio worker (the sync worker runs WSGI apps only; "
            "--worker trio for apps written for trio)"
        )
        return "asyncio"
    return requested
