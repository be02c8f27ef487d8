"""``fcgi.serve()``: the one call that puts an app behind a web server.

Without pool settings it runs the app in this process (the single-process
server); with ``workers=`` or ``pm=`` it hands over to the process manager.
Started by a web server with a listening socket on fd 0 (mod_fcgid, lighttpd
``bin-path``, spawn-fcgi) it serves that socket; started as a plain CGI
script it answers the one request and returns.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import signal
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fcgi import forkguard, systemd
from fcgi.connection import Limits
from fcgi.errors import ConfigError
from fcgi.interface import choose_worker, resolve_interface
from fcgi.options import ServerOptions
from fcgi.sockets import (
    inherited_fd0,
    open_listener,
    parse_allowed_clients,
    parse_bind,
    socket_path,
)
from fcgi.sync_worker import SyncWorker
from fcgi.wsgi import WSGIApp

log = logging.getLogger("fcgi.serve")


def make_options(
    *,
    read_timeout: float = 30.0,
    script_name: str | None = None,
    max_params: int = 1000,
    max_params_bytes: int = 256 * 1024,
    allowed_clients: Sequence[str] | str = (),
    multiprocess: bool = False,
    stderr_tracebacks: bool = True,
    interface: str = "auto",
    threads: int = 10,
    max_conns: int = 256,
    max_reqs: int = 256,
    max_body_size: int = 512 * 1024 * 1024,
    request_header_timeout: float = 5.0,
    send_timeout: float = 60.0,
) -> ServerOptions:
    """Build :class:`ServerOptions` from keyword settings, validating each."""
    if read_timeout <= 0:
        raise ConfigError(f"read_timeout must be positive, got {read_timeout}")
    if max_params < 1 or max_params_bytes < 1:
        raise ConfigError("max_params and max_params_bytes must be positive")
    if script_name is not None and script_name and not script_name.startswith("/"):
        raise ConfigError(f"script_name must be empty or start with '/', got {script_name!r}")
    if threads < 1 or max_conns < 1 or max_reqs < 1:
        raise ConfigError("threads, max_conns and max_reqs must be positive")
    if request_header_timeout <= 0:
        raise ConfigError(f"request_header_timeout must be positive, got {request_header_timeout}")
    if send_timeout <= 0:
        raise ConfigError(f"send_timeout must be positive, got {send_timeout}")
    if max_body_size < 0:
        raise ConfigError(f"max_body_size must not be negative (0: no limit), got {max_body_size}")
    allowed = parse_allowed_clients(allowed_clients)
    env_allowed = os.environ.get("FCGI_WEB_SERVER_ADDRS")
    if env_allowed:
        allowed += parse_allowed_clients(env_allowed)
    return ServerOptions(
        read_timeout=read_timeout,
        limits=Limits(
            max_params=max_params,
            max_params_bytes=max_params_bytes,
            max_body_size=max_body_size,
        ),
        request_header_timeout=request_header_timeout,
        send_timeout=send_timeout,
        script_name=script_name,
        allowed_clients=allowed,
        multiprocess=multiprocess,
        stderr_tracebacks=stderr_tracebacks,
        interface=interface,
        threads=threads,
        max_conns=max_conns,
        max_reqs=max_reqs,
    )


@dataclass
class Listeners:
    """The sockets a server listens on, and the socket files it must remove."""

    sockets: list[socket.socket] = field(default_factory=list)
    #: Unix socket files this process created: removed on exit. Sockets
    #: inherited from a parent (fd 0, fd://N, systemd) belong to the parent.
    owned_paths: list[str] = field(default_factory=list)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        for path in self.owned_paths:
            with contextlib.suppress(OSError):
                os.unlink(path)


def open_listeners(
    bind: str | Sequence[str] | None, *, mode: int = 0o660, backlog: int = 511
) -> Listeners:
    """Bind every address; without any, adopt systemd's sockets or fd 0.

    No sockets at all means "run as CGI".
    """
    if isinstance(bind, str):
        bind = [bind]
    if not bind:
        activated = systemd.listen_fds()
        if activated:
            return Listeners(activated)
        inherited = inherited_fd0()
        return Listeners([inherited] if inherited is not None else [])
    listeners = Listeners()
    try:
        for spec in bind:
            sock = open_listener(spec, mode=mode, backlog=backlog)
            listeners.sockets.append(sock)
            if parse_bind(spec).kind == "unix":
                path = socket_path(sock)
                if path:
                    listeners.owned_paths.append(path)
    except BaseException:
        listeners.close()
        raise
    return listeners


def serve(
    app: WSGIApp,
    bind: str | Sequence[str] | None = None,
    *,
    socket_mode: int = 0o660,
    backlog: int = 511,
    worker: str = "sync",
    workers: int | None = None,
    **settings: Any,
) -> int:
    """Serve ``app`` over FastCGI until SIGTERM (graceful) or SIGINT.

    ``bind`` is one address or several (see :mod:`fcgi.sockets`); None means
    the socket a web server left on fd 0, or plain CGI when there is none.
    ``worker`` is "sync" (one request at a time) or "trio" (concurrent; the
    only one for ASGI apps, chosen automatically for them). ``workers=N`` or
    any process-manager setting (``pm``, ``max_children``, ``user``... the
    names of :class:`fcgi.pool.config.PoolConfig`) runs the pool's master with
    ``app`` in every worker; otherwise this process serves alone with the
    :func:`make_options` settings. Returns the exit code.
    """
    if workers is not None or set(settings) - _SINGLE_PROCESS_SETTINGS:
        return _serve_pool(app, bind, socket_mode, backlog, worker, workers, settings)
    options = make_options(**settings)
    interface = resolve_interface(app, options.interface)
    options.interface = interface
    worker = choose_worker(worker, interface)
    listeners = open_listeners(bind, mode=socket_mode, backlog=backlog)
    if not listeners.sockets and interface == "asgi":
        raise ConfigError("an ASGI app cannot run as a CGI script: give an address to bind")
    if not listeners.sockets:
        from wsgiref.handlers import CGIHandler

        log.debug("fd 0 is not a listening socket: answering one request as CGI")
        CGIHandler().run(app)
        return 0
    try:
        run_single(
            app, listeners.sockets, options, worker=worker, owned_paths=listeners.owned_paths
        )
    finally:
        listeners.close()
    return 0


#: Keywords of make_options(): anything else given to serve() is a pool setting.
_SINGLE_PROCESS_SETTINGS = frozenset(inspect.signature(make_options).parameters)


def _serve_pool(
    app: Any,
    bind: str | Sequence[str] | None,
    socket_mode: int,
    backlog: int,
    worker: str,
    workers: int | None,
    settings: dict[str, Any],
) -> int:
    """Run the process manager with ``app`` (an object) in every worker."""
    from fcgi.pool.config import (
        GLOBAL_KEYS,
        MasterConfig,
        PoolConfig,
        apply_settings,
        validate_master,
    )
    from fcgi.pool.master import run_master

    if not bind:
        raise ConfigError("a pool needs bind=: the address it listens on")
    source = "fcgi.serve()"
    pool = PoolConfig(app=getattr(app, "__qualname__", "app"), app_object=app)
    pool.listen = (bind,) if isinstance(bind, str) else tuple(bind)
    pool.listen_mode = socket_mode
    pool.listen_backlog = backlog
    pool.worker = worker
    if workers is not None:
        settings = {**settings, "pm": "static", "max_children": workers}
    if "allowed_clients" in settings:
        settings["listen_allowed_clients"] = settings.pop("allowed_clients")
    config = MasterConfig(pools=[pool], source=source)
    apply_settings(pool, {k: v for k, v in settings.items() if k not in GLOBAL_KEYS}, source)
    apply_settings(config, {k: v for k, v in settings.items() if k in GLOBAL_KEYS}, source)
    validate_master(config)
    return run_master(config)


def run_single(
    app: WSGIApp,
    listeners: Sequence[socket.socket],
    options: ServerOptions,
    worker: str = "sync",
    owned_paths: list[str] | None = None,
) -> None:
    """The single-process server: this process is the only worker.

    ``owned_paths``: the unix socket files this process created. A graceful
    stop removes them at once (and empties the list), as the pool's master
    does: while the queued requests are served no new connection can join the
    queue by path, and a successor may bind the path without waiting.
    """
    if worker == "trio":
        from fcgi.trio_worker import TrioWorker

        server: SyncWorker | TrioWorker = TrioWorker(listeners, app, options)
    else:
        server = SyncWorker(listeners, app, options)

    def graceful(signum: int, frame: object) -> None:
        server.stop()
        if owned_paths:
            for path in owned_paths:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            owned_paths.clear()

    previous = {sig: signal.signal(sig, graceful) for sig in (signal.SIGTERM, signal.SIGQUIT)}
    names = ", ".join(_listener_name(sock) for sock in listeners)
    log.info("serving on %s (pid %d, single process, %s worker)", names, os.getpid(), worker)
    try:
        server.serve_forever()
    finally:
        forkguard.verify()  # a child the app forked must not close or unlink anything
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.close()
    log.info("stopped")


def _listener_name(sock: socket.socket) -> str:
    path = socket_path(sock)
    if path:
        return f"unix:{path}"
    name = sock.getsockname()
    if isinstance(name, tuple):
        host = f"[{name[0]}]" if ":" in name[0] else name[0]
        return f"{host}:{name[1]}"
    return f"fd {sock.fileno()}"
