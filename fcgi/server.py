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
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fcgi import forkguard, systemd
from fcgi.connection import Limits
from fcgi.errors import ConfigError
from fcgi.interface import choose_worker, resolve_interface
from fcgi.options import ServerOptions
from fcgi.pool import reexec
from fcgi.sockets import (
    inherited_fd0,
    open_listener,
    parse_allowed_clients,
    parse_bind,
    socket_path,
)
from fcgi.sync_worker import SyncWorker
from fcgi.wsgi import WSGIApp

if TYPE_CHECKING:
    from fcgi.trio_worker import TrioWorker

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

    After a reload (SIGHUP re-executes the process, see :func:`run_single`)
    the sockets come from the previous image instead, still open and with
    their queue intact. No sockets at all means "run as CGI".
    """
    handover = reexec.take_handover()
    if handover.sockets:
        return Listeners(list(handover.sockets.values()), handover.owned_paths)
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
    app_spec: str | None = None,
    **settings: Any,
) -> int:
    """Serve ``app`` over FastCGI until SIGTERM (graceful) or SIGINT.

    ``app_spec`` (``module:app``, as the command line names it) lets a reload
    of the single-process server check that the new code imports before it
    re-executes; without it the reload re-executes unchecked.

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
    if not listeners.sockets:
        if not _started_as_cgi():
            raise ConfigError(
                "nothing to listen on: give an address (--bind unix:/run/app.sock or "
                "--bind 127.0.0.1:9000), or start fcgi from a web server that passes a "
                "listening socket on fd 0"
            )
        if interface == "asgi":
            raise ConfigError("an ASGI app cannot run as a CGI script: give an address to bind")
        from wsgiref.handlers import CGIHandler

        log.debug("fd 0 is not a listening socket: answering one request as CGI")
        CGIHandler().run(app)
        return 0
    try:
        run_single(
            app,
            listeners.sockets,
            options,
            worker=worker,
            owned_paths=listeners.owned_paths,
            app_spec=app_spec,
        )
    finally:
        reexec.unblock_signals()
        listeners.close()
    return 0


def _started_as_cgi() -> bool:
    """True if a web server ran this process as a CGI script (RFC 3875).

    A CGI server sets GATEWAY_INTERFACE and gives the request body on stdin;
    a person at a terminal who forgot --bind gets an error, not one "CGI
    request" answered with the terminal's environment.
    """
    if not os.environ.get("GATEWAY_INTERFACE", "").startswith("CGI/"):
        return False
    try:
        return not os.isatty(0)
    except OSError:
        return True


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
    app_spec: str | None = None,
) -> None:
    """The single-process server: this process is the only worker.

    Signals mean what they mean to a pool's master:

    * SIGTERM, SIGQUIT: graceful stop. The unix socket files this process
      created (``owned_paths``) are removed at once (and the list emptied):
      while the queued requests are served no new connection can join the
      queue by path, and a successor may bind the path without waiting.
    * SIGHUP, SIGUSR2: reload. The request in progress is finished, then the
      process re-executes itself with the same command line, its listening
      sockets kept open across the exec (connections wait in their queue, the
      socket file is never removed). With ``app_spec`` the new code is first
      imported in a subprocess; if that fails the old code goes on serving.
    * SIGUSR1: reopen log files (the server itself logs to stderr: nothing to
      do, but logrotate's signal must not kill it).
    * SIGINT: stop at once.

    The same signals are blocked while a re-executed image starts (they stay
    pending until the handlers below are in place).
    """
    reload_asked = False
    stop_asked = False
    server: SyncWorker | TrioWorker

    def graceful(signum: int, frame: object) -> None:
        nonlocal stop_asked
        stop_asked = True
        server.stop()
        if owned_paths:
            for path in owned_paths:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            owned_paths.clear()

    def reload(signum: int, frame: object) -> None:
        nonlocal reload_asked
        reload_asked = True
        server.stop()

    def reopen(signum: int, frame: object) -> None:
        log.info("SIGUSR1: nothing to reopen (this server logs to stderr)")

    handlers = {
        signal.SIGTERM: graceful,
        signal.SIGQUIT: graceful,
        signal.SIGHUP: reload,
        signal.SIGUSR2: reload,
        signal.SIGUSR1: reopen,
    }
    names = ", ".join(_listener_name(sock) for sock in listeners)
    server = _make_worker(app, listeners, options, worker)
    # Installed once, for the whole life of the process (reloads included):
    # between two servers a signal must still find its handler.
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    try:
        while True:
            # Held since the exec of a reload (or the start of `fcgi serve`):
            # delivered now, to the handlers.
            reexec.unblock_signals()
            log.info(
                "serving on %s (pid %d, single process, %s worker)", names, os.getpid(), worker
            )
            try:
                server.serve_forever()
            finally:
                forkguard.verify()  # a child the app forked must not close or unlink anything
                server.close()
            if stop_asked or not reload_asked:
                break
            reload_asked = False
            error = reexec.import_error([(app_spec, None)]) if app_spec else None
            if error is not None:
                log.error(
                    "reload failed: the new code does not import: %s; old code goes on", error
                )
                server = _make_worker(app, listeners, options, worker)
                continue
            # From here a signal waits for the next image; a stop asked during
            # the check wins over the reload.
            reexec.block_signals()
            if stop_asked:
                break
            log.info("reloading: re-executing with the same sockets")
            try:
                reexec.exec_master(
                    reexec.Handover(dict(_by_name(listeners)), list(owned_paths or []))
                )
            except OSError as exc:
                log.error(
                    "reload failed: cannot exec %s: %s; old code goes on", sys.executable, exc
                )
                server = _make_worker(app, listeners, options, worker)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        reexec.unblock_signals()
    log.info("stopped")


def _make_worker(
    app: WSGIApp, listeners: Sequence[socket.socket], options: ServerOptions, worker: str
) -> SyncWorker | TrioWorker:
    if worker == "trio":
        from fcgi.trio_worker import TrioWorker

        return TrioWorker(listeners, app, options)
    return SyncWorker(listeners, app, options)


def _by_name(listeners: Sequence[socket.socket]) -> list[tuple[str, socket.socket]]:
    """Each listener under a name of its own (the handover's keys)."""
    return [(f"{_listener_name(sock)}#{i}", sock) for i, sock in enumerate(listeners)]


def _listener_name(sock: socket.socket) -> str:
    path = socket_path(sock)
    if path:
        return f"unix:{path}"
    name = sock.getsockname()
    if isinstance(name, tuple):
        host = f"[{name[0]}]" if ":" in name[0] else name[0]
        return f"{host}:{name[1]}"
    return f"fd {sock.fileno()}"
