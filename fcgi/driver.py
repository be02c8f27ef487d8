"""What every driver (sync, trio, asyncio) has in common, written once.

A driver turns sockets into calls of the sans-IO core and of the app (the
core the listener's protocol asks for, :meth:`WorkerBase.core_for`: FastCGI,
uwsgi or SCGI, one interface and one set of events). The three drivers
differ in how they wait (epoll, trio, asyncio) but must agree on the rest:
which accept() errors are the connection's and which the process's, how a
param is read as a number, what the process that runs them (the
single-process server, a pool worker) may ask of them and how it stops them
(:class:`WorkerBase`), how refusals are logged, and the WSGI environ of a
request (:func:`wsgi_environ`). What only the two that serve many requests
at once (trio, asyncio) share is in :mod:`fcgi.multiplex`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Protocol

from mypy_extensions import mypyc_attr

from fcgi.connection import Limits, ServerConnection
from fcgi.hooks import NoHooks, WorkerHooks
from fcgi.options import ServerOptions
from fcgi.records import Role
from fcgi.scgi import ScgiConnection
from fcgi.sockets import FASTCGI, SCGI, UWSGI
from fcgi.uwsgi import UwsgiConnection
from fcgi.wsgi import ErrorStream, InputStream, build_environ, content_length

#: accept() errors that concern only the connection being taken (it was reset
#: while queued, the network under it failed, a firewall rule refused it:
#: Linux reports errors pending on the new connection this way, and accept(2)
#: says to go on with the next one).
ACCEPT_RETRY: Final = frozenset(
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
ACCEPT_STARVED: Final = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
#: Seconds a driver waits before trying accept() again after one of those.
ACCEPT_PAUSE: Final = 0.1

#: Most bytes read and thrown away while closing a connection whose request
#: body was not read to the end (so the web server sees our answer, not a reset).
MAX_DRAIN: Final = 64 * 1024 * 1024
#: Longest that drain may take, in seconds: a peer trickling the rest of a
#: body must not hold the worker (a sync worker's reads still wait up to
#: read_timeout each).
DRAIN_SECONDS: Final = 2.0


#: The sans-IO core of a connection, whichever protocol its listener speaks:
#: the three have one interface and yield the same events.
CoreConnection = ServerConnection | UwsgiConnection | ScgiConnection
#: What makes a new connection's core from the driver's limits.
CoreFactory = Callable[[Limits], CoreConnection]
#: The core for each protocol a bind spec can name (fcgi.sockets.PROTOCOLS).
CORES: Final[dict[str, CoreFactory]] = {
    FASTCGI: ServerConnection,
    UWSGI: UwsgiConnection,
    SCGI: ScgiConnection,
}


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
REFUSALS_WARNED: Final = 3


def log_refusal(log: logging.Logger, count: int, message: str, *args: object) -> None:
    """Log the ``count``-th refusal (from 1) of a connection: a few warnings, then debug."""
    if count < REFUSALS_WARNED:
        log.warning(message, *args)
    elif count == REFUSALS_WARNED:
        log.warning(message + "; further refusals on this connection are logged as debug", *args)
    else:
        log.debug(message, *args)


# Compiled by mypyc (see setup.py); the trio worker, which is not, builds on it.
@mypyc_attr(allow_interpreted_subclasses=True)
class WorkerBase:
    """What every driver's worker holds, and how the process running it stops it.

    ``stop()`` may come from a signal handler or another thread, where no
    event loop may be touched: it sets a flag and writes a byte to a pipe
    whose other end the driver's loop watches (epoll, trio, asyncio alike).
    """

    def __init__(
        self,
        listeners: Sequence[socket.socket],
        app: Any,
        options: ServerOptions | None = None,
        hooks: WorkerHooks | None = None,
    ) -> None:
        self.listeners = list(listeners)
        self.app = app
        self.options = options or ServerOptions()
        self.hooks: WorkerHooks = hooks or NoHooks()
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._setup()

    def _setup(self) -> None:
        """What a driver adds to this state; called last by ``__init__``.

        A hook rather than an ``__init__`` of each driver's own, so that the
        constructor's signature is written once, here, and type-checked at
        every call.
        """

    def core_for(self, listener: socket.socket) -> tuple[CoreFactory, bool]:
        """(the core for connections accepted on ``listener``, send tracebacks to the peer).

        Asked once per listener, when the driver starts to accept on it: the
        answer goes with the listener, so no connection pays for the choice.
        Tracebacks go to the web server only over FastCGI (FCGI_STDERR, which
        nginx logs) and only with ``stderr_tracebacks``: uwsgi and SCGI have
        no channel for them (the log has them either way).
        """
        protocol = self.options.protocols.get(listener.fileno(), FASTCGI)
        tracebacks = self.options.stderr_tracebacks and protocol == FASTCGI
        return CORES[protocol], tracebacks

    def stop(self) -> None:
        """Stop accepting, finish the requests in progress, return. Signal- and thread-safe."""
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"!")

    @property
    def stopping(self) -> bool:
        return self._stopping

    def close(self) -> None:
        """Release what the worker holds besides the listeners (its wake-up pipe)."""
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)


#: Role names by number, for ``fcgi.role``: a dict lookup per request, not an enum call.
ROLE_NAMES: Final = {role.value: role.name for role in Role}


def wsgi_environ(
    params: Mapping[str, str],
    options: ServerOptions,
    errors: ErrorStream,
    read_stdin: Callable[[], bytes | memoryview],
    read_data: Callable[[], bytes | memoryview] | None,
    *,
    role: int,
    multithread: bool,
) -> dict[str, Any]:
    """The WSGI environ of one request, as every driver that runs WSGI apps builds it.

    ``read_stdin`` and ``read_data`` give the next piece of FCGI_STDIN and
    FCGI_DATA (b"" at the end); ``read_data`` is None unless the role is
    FILTER, whose app finds the file in ``fcgi.data``.
    """
    environ = build_environ(
        params,
        InputStream(read_stdin, content_length(params)),
        errors,
        mount=options.script_name,
        multithread=multithread,
        multiprocess=options.multiprocess,
    )
    if read_data is not None:
        environ["fcgi.data"] = InputStream(read_data, int_param(params, "FCGI_DATA_LENGTH"))
    environ["fcgi.role"] = ROLE_NAMES[role]
    return environ
