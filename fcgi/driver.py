"""What every driver (sync, trio, asyncio) has in common, written once.

A driver turns sockets into calls of the sans-IO core and of the app. The
three differ in how they wait (epoll, trio, asyncio) but must agree on the
rest: which accept() errors are the connection's and which the process's,
how a param is read as a number, and what the process that runs them (the
single-process server, a pool worker) may ask of them.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Mapping
from typing import Protocol

#: accept() errors that concern only the connection being taken (it was reset
#: while queued, the network under it failed, a firewall rule refused it:
#: Linux reports errors pending on the new connection this way, and accept(2)
#: says to go on with the next one).
ACCEPT_RETRY = frozenset(
    (
        errno.ECONNABORTED,
        errno.EINTR,
        errno.EPROTO,
        errno.EPERM,
        errno.ENETDOWN,
        errno.ENOPROTOOPT,
        errno.EHOSTDOWN,
        getattr(errno, "ENONET", errno.EHOSTDOWN),
        errno.EHOSTUNREACH,
        errno.EOPNOTSUPP,
        errno.ENETUNREACH,
        errno.ETIMEDOUT,
    )
)
#: accept() errors from lack of resources (out of file descriptors, memory):
#: the connection stays queued and the listener stays ready, so retrying at
#: once would spin (and log) as fast as the CPU allows until a descriptor frees.
ACCEPT_STARVED = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
#: Seconds a driver waits before trying accept() again after one of those.
ACCEPT_PAUSE = 0.1


def int_param(params: Mapping[str, str], name: str) -> int | None:
    """The param ``name`` as an integer; None if absent or not a number."""
    try:
        return int(params[name])
    except (KeyError, ValueError):
        return None


class Driver(Protocol):
    """What a process needs of the driver it runs (each driver satisfies it).

    ``serve_forever`` calls ``ready()`` once it can serve (after an ASGI
    app's lifespan start-up): only then does a pool count the worker as
    started, or the single process say it serves. ``stop`` is signal-safe;
    ``close`` comes after ``serve_forever`` has returned.
    """

    def serve_forever(self, ready: Callable[[], None] | None = None) -> None: ...

    def stop(self) -> None: ...

    def close(self) -> None:
        """Release what the driver holds besides the listeners (its wake-up pipe)."""


#: Refusals of one connection (an unknown role, an id past the limit,
#: OVERLOADED) logged as warnings; the rest go to the debug level. Each
#: refusal is a line, and a peer can send thousands of BEGIN_REQUESTs in one
#: packet: unbounded, a single connection would fill the log.
REFUSALS_WARNED = 3


def log_refusal(log: logging.Logger, count: int, message: str, *args: object) -> None:
    """Log the ``count``-th refusal (from 1) of a connection: a few warnings, then debug."""
    if count < REFUSALS_WARNED:
        log.warning(message, *args)
    elif count == REFUSALS_WARNED:
        log.warning(message + "; further refusals on this connection are logged as debug", *args)
    else:
        log.debug(message, *args)
