"""``fcgi.serve()``: the one call that puts an app behind a web server.

Without pool settings it runs the app in this process (the single-process
server); with ``workers=`` or ``pm=`` it hands over to the process manager.
Started by a web server with a listening socket on fd 0 (mod_fcgid, lighttpd
``bin-path``, spawn-fcgi) it serves that socket; started as a plain CGI
script it answers the one request and returns.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from typing import Any
from wsgiref.handlers import CGIHandler

from fcgi import forkguard
from fcgi.driver import Driver
from fcgi.errors import ConfigError
from fcgi.hooks import WorkerHooks
from fcgi.interface import choose_worker, resolve_interface
from fcgi.listeners import Listeners, address_of, open_single
from fcgi.logsetup import reopen_log_files
from fcgi.options import ServerOptions, make_options
from fcgi.pool import reexec
from fcgi.pool.config import MasterConfig, PoolConfig, apply_values, validate_master
from fcgi.pool.master import GRACEFUL_STOP_SIGNALS, RELOAD_SIGNALS, run_master
from fcgi.pool.worker_hooks import (
    SingleProcessHooks,
    SlowRequestWatcher,
    single_process_needs_hooks,
)
from fcgi.pool.worker_process import driver_factory
from fcgi.settings import GLOBAL_KEYS, POOL_KEYS, SETTINGS, ConfigErrors
from fcgi.wsgi import WSGIApp

#: make_options lives with the options it makes (fcgi.options) and is still
#: importable from here, where it was first.
__all__ = ["make_options", "open_listeners", "run_single", "serve"]

log = logging.getLogger("fcgi.serve")


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
        return Listeners.handed_over(handover.sockets, handover.owned_paths)
    return open_single([bind] if isinstance(bind, str) else bind or [], mode=mode, backlog=backlog)


def serve(
    app: WSGIApp,
    bind: str | Sequence[str] | None = None,
    *,
    workers: int | None = None,
    app_spec: str | None = None,
    socket_mode: int | str | None = None,
    backlog: int | None = None,
    allowed_clients: str | Sequence[str] | None = None,
    # Every setting of fcgi.settings.SETTINGS but ``app`` (the object is the
    # first argument), None meaning the table's default. Written out for mypy;
    # tests/test_settings_table.py holds this list and the table together.
    error_log: str | None = None,
    log_level: str | None = None,
    log_config: str | None = None,
    syslog_facility: str | None = None,
    syslog_ident: str | None = None,
    pid_file: str | None = None,
    process_control_timeout: float | str | None = None,
    emergency_restart_threshold: int | None = None,
    emergency_restart_interval: float | str | None = None,
    systemd_interval: float | str | None = None,
    listen: str | Sequence[str] | None = None,
    listen_backlog: int | None = None,
    listen_owner: str | None = None,
    listen_group: str | None = None,
    listen_mode: int | str | None = None,
    listen_allowed_clients: str | Sequence[str] | None = None,
    worker: str | None = None,
    interface: str | None = None,
    chdir: str | None = None,
    pm: str | None = None,
    max_children: int | None = None,
    start_servers: int | None = None,
    min_spare_servers: int | None = None,
    max_spare_servers: int | None = None,
    max_spawn_rate: int | None = None,
    process_idle_timeout: float | str | None = None,
    max_requests: int | None = None,
    max_requests_jitter: int | None = None,
    max_memory: int | str | None = None,
    request_terminate_timeout: float | str | None = None,
    request_slowlog_timeout: float | str | None = None,
    slowlog: str | None = None,
    user: str | None = None,
    group: str | None = None,
    clear_env: bool | None = None,
    env: Mapping[str, str] | None = None,
    catch_workers_output: bool | None = None,
    preload_app: bool | None = None,
    access_log: str | None = None,
    access_format: str | None = None,
    status_path: str | None = None,
    ping_path: str | None = None,
    ping_response: str | None = None,
    status_listen: str | None = None,
    status_full_query: bool | None = None,
    read_timeout: float | str | None = None,
    request_header_timeout: float | str | None = None,
    send_timeout: float | str | None = None,
    script_name: str | None = None,
    max_params: int | None = None,
    max_params_bytes: int | str | None = None,
    max_body_size: int | str | None = None,
    threads: int | None = None,
    max_conns: int | None = None,
    max_reqs: int | None = None,
) -> int:
    """Serve ``app`` (over FastCGI, or uwsgi or SCGI) until SIGTERM (graceful) or SIGINT.

    ``app_spec`` (``module:app``, as the command line names it) lets a reload
    of the single-process server check that the new code imports before it
    re-executes; without it the reload re-executes unchecked.

    ``bind`` (the ``listen`` setting) is one address or several (see
    :mod:`fcgi.sockets`), each speaking FastCGI unless prefixed ``uwsgi:`` or
    ``scgi:``; None means the socket a web server left on fd 0, or plain CGI
    when there is none. ``socket_mode``, ``backlog`` and
    ``allowed_clients`` are ``listen_mode``, ``listen_backlog`` and
    ``listen_allowed_clients``. ``worker`` is "sync" (one request at a time,
    WSGI apps), "asyncio" (concurrent, ASGI apps only; chosen automatically
    for an ASGI app) or "trio" (concurrent, WSGI and ASGI). ``workers=N`` (a
    static pool of N) or any setting that needs several processes (``pm``,
    ``max_children``, ``user``... see the settings table) runs the pool's
    master with ``app`` in every worker; otherwise this process serves alone.
    Every mistake is raised at once as
    :class:`~fcgi.settings.ConfigErrors`. Returns the exit code.
    """
    given: dict[str, Any] = {
        name: value
        for name, value in locals().items()
        if name in SETTINGS and name != "app" and value is not None
    }
    problems: list[str] = []
    for alias, name, value in (
        ("bind", "listen", bind),
        ("socket_mode", "listen_mode", socket_mode),
        ("backlog", "listen_backlog", backlog),
        ("allowed_clients", "listen_allowed_clients", allowed_clients),
    ):
        if value is not None and name in given:
            problems.append(f"fcgi.serve({alias}=): the same setting as {name}=: give one")
        elif value is not None:
            given[name] = value
    if workers is not None:
        given["pm"], given["max_children"] = "static", workers  # max_children checks N
    master = workers is not None or any(SETTINGS[name].master for name in given)
    config = MasterConfig(source="fcgi.serve()")
    app_name: str = app_spec or getattr(app, "__qualname__", None) or "app"
    pool = PoolConfig(app=app_name, app_object=app)
    config.pools.append(pool)
    for target, keys in ((pool, POOL_KEYS), (config, GLOBAL_KEYS)):
        values = {
            name: (list(v) if SETTINGS[name].kind == "list" and not isinstance(v, str) else v,
                   f"fcgi.serve({name}=)")
            for name, v in given.items()
            if name in keys
        }  # fmt: skip
        apply_values(target, values, problems)
    validate_master(config, problems, single=not master)
    if problems:
        raise ConfigErrors(problems)
    if master:
        return run_master(config)
    if pool.chdir:
        os.chdir(pool.chdir)
    if "log_level" in given:
        # PHP-FPM's "notice" has no logging level of its own: it logs as info.
        logging.getLogger("fcgi").setLevel(getattr(logging, config.log_level.upper(), "INFO"))
    options = pool.server_options(multiprocess=False)
    interface_used = resolve_interface(app, options.interface)
    options.interface = interface_used
    worker_used = choose_worker(pool.worker, interface_used)
    listeners = open_listeners(pool.listen, mode=pool.listen_mode, backlog=pool.listen_backlog)
    if not listeners.sockets:
        if not _started_as_cgi():
            raise ConfigError(
                "nothing to listen on: give an address (--bind unix:/run/app.sock or "
                "--bind 127.0.0.1:9000), or start fcgi from a web server that passes a "
                "listening socket on fd 0"
            )
        if interface_used == "asgi":
            raise ConfigError("an ASGI app cannot run as a CGI script: give an address to bind")
        log.debug("fd 0 is not a listening socket: answering one request as CGI")
        CGIHandler().run(app)
        return 0
    try:
        run_single(app, listeners, options, worker=worker_used, app_spec=app_spec, pool=pool)
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


def run_single(
    app: WSGIApp,
    listeners: Listeners,
    options: ServerOptions,
    worker: str = "sync",
    app_spec: str | None = None,
    pool: PoolConfig | None = None,
) -> None:
    """The single-process server: this process is the only worker.

    ``pool`` holds its settings beyond ``options``: with an access log, a
    status or ping path or a slowlog it keeps a scoreboard of one and serves
    them as a pool's worker does (:class:`~fcgi.pool.worker_hooks.SingleProcessHooks`,
    and :class:`~fcgi.pool.worker_hooks.SlowRequestWatcher` in place of the
    master's slowlog check). A file that cannot be opened raises
    :class:`~fcgi.errors.ConfigError` before anything is served.

    Signals mean what they mean to a pool's master:

    * SIGTERM, SIGQUIT: graceful stop. The unix socket files this process
      created (``listeners.owned_paths``) are removed at once (and
      forgotten): while the queued requests are served no new connection can
      join the queue by path, and a successor may bind the path without waiting.
    * SIGHUP, SIGUSR2: reload. The request in progress is finished, then the
      process re-executes itself with the same command line, its listening
      sockets kept open across the exec (connections wait in their queue, the
      socket file is never removed). With ``app_spec`` the new code is first
      imported in a subprocess; if that fails the old code goes on serving.
    * SIGUSR1: reopen log files (the access log, error_log and log_config
      files, after logrotate moved them; with stderr there is nothing to do).
    * SIGINT: stop at once.

    The same signals are blocked while a re-executed image starts (they stay
    pending until the handlers below are in place).
    """
    reload_asked = False
    stop_asked = False
    #: The signal that asked for the graceful stop, named in the last line.
    stop_signal = 0
    server: Driver

    def graceful(signum: int, frame: object) -> None:
        # No log line here: a handler that writes to a stream the interrupted
        # code may be writing to fails (the pool master queues its signals
        # for the same reason). The last line names the signal.
        nonlocal stop_asked, stop_signal
        stop_asked = True
        stop_signal = signum
        server.stop()
        listeners.remove_files()

    def reload(signum: int, frame: object) -> None:
        nonlocal reload_asked
        reload_asked = True
        server.stop()

    def reopen(signum: int, frame: object) -> None:
        if hooks is not None:
            hooks.reopen()
        reopen_log_files()
        # After the reopening: the line shows in the new file, the one to check.
        log.info("SIGUSR1: log files reopened")

    handlers = {
        **dict.fromkeys(GRACEFUL_STOP_SIGNALS, graceful),
        **dict.fromkeys(RELOAD_SIGNALS, reload),
        signal.SIGUSR1: reopen,
    }
    sockets = listeners.sockets
    # What each listener speaks, for the drivers (the CLI's options have none).
    options.protocols = {**options.protocols, **listeners.protocols}
    names = ", ".join(_named(sock, options.protocols) for sock in sockets)

    def ready() -> None:
        log.info("serving on %s (pid %d, single process, %s worker)", names, os.getpid(), worker)

    hooks, watcher = _observe(pool, sockets)
    try:
        server = _make_worker(app, sockets, options, worker, hooks)
    except BaseException:
        _stop_observing(hooks, watcher)
        raise
    # Installed once, for the whole life of the process (reloads included):
    # between two servers a signal must still find its handler.
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    try:
        if watcher is not None:
            watcher.start()
        while True:
            # Held since the exec of a reload (or the start of `fcgi serve`):
            # delivered now, to the handlers.
            reexec.unblock_signals()
            try:
                # Said once the worker can serve: after an ASGI app's
                # lifespan startup, which may still refuse (exit 3).
                server.serve_forever(ready)
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
                server = _make_worker(app, sockets, options, worker, hooks)
                continue
            # From here a signal waits for the next image; a stop asked during
            # the check wins over the reload.
            reexec.block_signals()
            if stop_asked:
                break
            log.info("reloading: re-executing with the same sockets")
            try:
                reexec.exec_master(
                    reexec.Handover(listeners.names(), list(listeners.owned_paths))
                )
            except OSError as exc:
                log.error(
                    "reload failed: cannot exec %s: %s; old code goes on", sys.executable, exc
                )
                server = _make_worker(app, sockets, options, worker, hooks)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        reexec.unblock_signals()
        _stop_observing(hooks, watcher)
    if stop_signal:
        log.info("stopped (%s: graceful stop)", signal.Signals(stop_signal).name)
    else:
        log.info("stopped")


def _observe(
    pool: PoolConfig | None, listeners: Sequence[socket.socket]
) -> tuple[SingleProcessHooks | None, SlowRequestWatcher | None]:
    """The scoreboard of one and the slowlog thread, if a setting asks for them.

    Made once per process and kept across failed reloads: the counters of
    the status page run from the start of this image. None when nothing
    needs them, so that the plain server pays nothing per request.
    """
    if pool is None or not single_process_needs_hooks(pool):
        return None, None
    hooks = SingleProcessHooks.open(pool, listeners)
    watcher = None
    if pool.request_slowlog_timeout > 0:
        watcher = SlowRequestWatcher(hooks, pool.request_slowlog_timeout)
    return hooks, watcher


def _stop_observing(hooks: SingleProcessHooks | None, watcher: SlowRequestWatcher | None) -> None:
    if watcher is not None:
        watcher.stop()
    if hooks is not None:
        hooks.close()


def _named(sock: socket.socket, protocols: Mapping[int, str]) -> str:
    """A listener's address for the "serving on" line, with its protocol if not FastCGI."""
    protocol = protocols.get(sock.fileno())
    return f"{protocol}:{address_of(sock)}" if protocol else address_of(sock)


def _make_worker(
    app: WSGIApp,
    listeners: Sequence[socket.socket],
    options: ServerOptions,
    worker: str,
    hooks: WorkerHooks | None = None,
) -> Driver:
    return driver_factory(worker)(listeners, app, options, hooks)
