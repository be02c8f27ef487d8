"""What a forked worker does, from the instant after fork() to os._exit().

The master forks from a state with no threads and no event loop, so the child
starts clean: it resets the master's signal handling, drops privileges, moves
to ``chdir``, trims the environment, imports the app (unless the master
preloaded it), builds its own driver and serves until told to stop.

Worker signals (sent by the master; not meant for people):

* SIGTERM, SIGQUIT: graceful: stop accepting, finish the current request, exit 0.
  SIGQUIT says the master stops the worker for being idle (pm = ondemand):
  its idle kept connections are closed, not passed on (see
  :attr:`fcgi.options.ServerOptions.handoff_on_stop`).
* SIGINT: exit now.
* SIGUSR1: reopen the access log, the error log file and the slowlog (fallback).
* SIGUSR2: append the running request's Python stack to the slowlog.
* FALLBACK_SIGNAL (:mod:`fcgi.stacks`, SIGPWR on Linux): faulthandler writes
  every thread's stack from C (a request stuck where Python cannot run).

Exit codes, read by the master (values from :mod:`fcgi.exit_codes`, so a
worker that cannot start says what the master itself will exit with if no
worker ever started): 0 normal; :data:`EXIT_APP_ERROR` (3) the app could not
be loaded (import error, not a WSGI/ASGI app) or its ASGI lifespan startup
failed (always before the worker says it is ready); :data:`EXIT_BOOT_ERROR` (4)
anything else stopped the start (user, group, ``chdir``, access log); any
other status is a crash.

A worker never outlives its master: the kernel sends it SIGTERM when the
master dies (``PR_SET_PDEATHSIG``), and it checks its parent pid too (the
master may have died before the worker asked for that signal, and the
signal follows the thread that forked, not the process). It then finishes
its request and exits, so a master killed with SIGKILL leaves nothing that
serves unsupervised or holds the socket.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import grp
import logging
import os
import pwd
import random
import signal
import socket
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, NoReturn

from fcgi import exit_codes, forkguard, stacks
from fcgi.app_loader import AppImportError, load_app
from fcgi.driver import Driver
from fcgi.errors import ConfigError, FastCGIError
from fcgi.escape import Lines
from fcgi.handoff import Channel
from fcgi.hooks import WorkerHooks
from fcgi.interface import choose_worker, resolve_interface
from fcgi.options import ServerOptions
from fcgi.pool.access_log import AccessLog
from fcgi.pool.config import PoolConfig
from fcgi.pool.logs import reopen_log_files
from fcgi.pool.reexec import MASTER_SIGNALS
from fcgi.pool.scoreboard import Scoreboard
from fcgi.pool.worker_hooks import ScoreboardHooks
from fcgi.proctitle import set_title, worker_starting_title

log = logging.getLogger("fcgi.pool")

#: Worker -> master: served and stopped as asked.
EXIT_OK = exit_codes.EXIT_OK
#: Worker -> master: the app cannot be loaded (raised as :class:`AppLoadError`).
EXIT_APP_ERROR = exit_codes.EXIT_APP_IMPORT
#: Worker -> master: any other :class:`BootError` (user, group, chdir, access log).
EXIT_BOOT_ERROR = exit_codes.EXIT_WORKERS

#: prctl(2) option: the signal this process gets when its parent dies.
PR_SET_PDEATHSIG = 1


DriverFactory = Callable[[Sequence[socket.socket], Any, ServerOptions, WorkerHooks | None], Driver]


@dataclass(slots=True)
class WorkerSpec:
    """Everything the master hands to a child at fork time."""

    config: PoolConfig
    board: Scoreboard
    index: int
    generation: int
    listeners: list[socket.socket]
    #: Listener descriptor -> its wire protocol, for those not speaking
    #: FastCGI (:attr:`fcgi.options.ServerOptions.protocols`).
    protocols: dict[int, str] = field(default_factory=dict)
    #: The pool's hand-off channel (sync workers: :mod:`fcgi.handoff`).
    handoff: Channel | None = None
    #: The app, when the master preloaded it.
    app: Any = None
    #: Master-only descriptors the child must close (signal pipe, other pools...).
    close_fds: list[int] = field(default_factory=list)
    #: Write ends of the stdout/stderr capture pipes (catch_workers_output).
    stdout_fd: int | None = None
    stderr_fd: int | None = None
    #: The master's pid, taken when the spec is made: before the fork, so a
    #: master that dies at once is still known as the parent to expect.
    master_pid: int = field(default_factory=os.getpid)


class BootError(FastCGIError):
    """The worker cannot start serving (bad app, bad user...)."""


class AppLoadError(BootError):
    """The app itself cannot be loaded: its import failed, or it is no WSGI/ASGI app.

    Its own class so that the worker's exit status tells the master which of
    the exit table's two start-up failures this is (3, not 4).
    """


def run_worker(spec: WorkerSpec) -> NoReturn:
    """Entry point in the child right after fork; never returns."""
    # This process serves; a process the app forks from it must not (fork guard).
    forkguard.arm()
    code = 1
    try:
        code = _serve(spec)
    except BootError as exc:
        # Lines: the reason may hold a traceback (the app failed to import),
        # ours to show line by line, not peer text to write as \x0A.
        name = spec.config.name
        log.error("[pool %s] child %d cannot start: %s", name, os.getpid(), Lines(str(exc)))
        code = EXIT_APP_ERROR if isinstance(exc, AppLoadError) else EXIT_BOOT_ERROR
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:
        if _lifespan_refused(exc):
            # The app refused to start (the driver logged its message): the
            # exit table's 3, as an import error, not a crash.
            log.error("[pool %s] child %d cannot start: %s", spec.config.name, os.getpid(), exc)
            code = EXIT_APP_ERROR
        else:
            log.critical(
                "[pool %s] child %d crashed:\n%s",
                spec.config.name,
                os.getpid(),
                Lines(traceback.format_exc().rstrip()),
            )
            code = 1
    finally:
        # A child the app forked that got this far must not flush the
        # worker's buffered output or log lines a second time.
        forkguard.verify()
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
            logging.shutdown()
        os._exit(code)


def _lifespan_refused(exc: BaseException) -> bool:
    """``exc`` is an ASGI app's failed lifespan startup (fcgi.asgi is loaded only for ASGI)."""
    asgi = sys.modules.get("fcgi.asgi")
    return asgi is not None and isinstance(exc, asgi.LifespanFailure)


def _reset_signals() -> None:
    # The master forks with its signals blocked (see Master._spawn): they stay
    # pending until _serve has installed the worker's handlers.
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_DFL)
    for sig in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGWINCH):
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGINT, lambda signum, frame: os._exit(0))


def _follow_master(
    master_pid: int, hooks: ScoreboardHooks, handoff: Channel | None = None
) -> None:
    """Arrange to stop (gracefully) when the master dies; stop now if it already has."""
    forkguard.expect_parent(master_pid)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG): %s", os.strerror(ctypes.get_errno()))
    # The master may have died before the prctl: then no signal will come.
    if forkguard.parent_gone():
        _orphaned(hooks, handoff)


def _orphaned(hooks: ScoreboardHooks, handoff: Channel | None = None) -> None:
    """The master is gone: stop after the current request, and say why at exit.

    No worker of the pool goes on serving: kept connections passed on now
    would wait in the channel for the last sibling to leave (fcgi.handoff).
    """
    hooks.stop_requested = True
    hooks.stop_reason = "the master is gone"
    if handoff is not None:
        handoff.refuse_more()


def _redirect_output(spec: WorkerSpec) -> None:
    for src, dst in ((spec.stdout_fd, 1), (spec.stderr_fd, 2)):
        if src is not None:
            os.dup2(src, dst)
            os.close(src)
    if spec.stdout_fd is not None or spec.stderr_fd is not None:
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115


def drop_privileges(user: str | None, group: str | None) -> None:
    """Become ``user`` (and ``group``, default the user's group). Raises BootError."""
    if user is None and group is None:
        return
    try:
        pw = pwd.getpwnam(user) if user is not None and not user.isdigit() else None
        uid = pw.pw_uid if pw else (int(user) if user is not None else os.getuid())
        if group is not None:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        else:
            gid = pw.pw_gid if pw else os.getgid()
    except KeyError as exc:
        raise BootError(f"unknown user or group {exc.args[0]!r}") from None
    try:
        if os.getuid() == 0 and pw is not None:
            os.initgroups(pw.pw_name, gid)
        elif os.getuid() == 0:
            os.setgroups([])
        if gid != os.getgid():
            os.setgid(gid)
        if uid != os.getuid():
            os.setuid(uid)
    except OSError as exc:
        raise BootError(f"cannot switch to user {user!r} group {group!r}: {exc}") from None


def prepare_environment(config: PoolConfig) -> None:
    if config.clear_env:
        keep = {k: os.environ[k] for k in ("PYTHONPATH",) if k in os.environ}
        os.environ.clear()
        os.environ.update(keep)
    os.environ.update(config.env)
    if config.chdir:
        try:
            os.chdir(config.chdir)
        except OSError as exc:
            # Who failed is half the reason: a directory root can enter and
            # the pool's user cannot is the usual case.
            raise BootError(
                f"chdir: {config.chdir!r}: {exc.strerror} (as user {_user_name()})"
            ) from None


def _user_name() -> str:
    """This process's user, by name if it has one (for messages)."""
    uid = os.geteuid()
    try:
        return repr(pwd.getpwuid(uid).pw_name)
    except KeyError:
        return f"uid {uid}"


def import_worker_code(kinds: Sequence[str]) -> None:
    """Import in the master what workers will run, before any fork.

    A worker that has dropped privileges may not be able to read the Python
    installation any more (a pyenv under /root, say); what is imported before
    the fork it simply has. It also keeps the import out of every worker.
    """
    for kind in set(kinds):
        driver_factory(kind)


def driver_factory(kind: str) -> DriverFactory:
    """The worker class for ``kind``, its module imported here, where it is chosen.

    Start-up cost: the trio and asyncio drivers take some 0.1 s to import
    (their event loops), which a sync pool never pays, and each process loads
    only the driver it runs.
    """
    if kind == "asyncio":
        from fcgi.asyncio_worker import AsyncioWorker  # start-up cost (see above)

        return AsyncioWorker
    if kind == "trio":
        from fcgi.trio_worker import TrioWorker  # start-up cost (see above)

        return TrioWorker
    from fcgi.sync_worker import SyncWorker  # start-up cost (see above)

    return SyncWorker


def load_pool_app(spec: str) -> Any:
    """Import the app named ``spec`` (``MODULE:APP``); AppLoadError if it cannot be."""
    try:
        return load_app(spec)
    except AppImportError as exc:
        raise AppLoadError(str(exc)) from None


def _serve(spec: WorkerSpec) -> int:
    config = spec.config
    # Until now the child showed the master's title; "idle" comes with ready().
    set_title(worker_starting_title(config.name))
    _reset_signals()
    for fd in spec.close_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    _redirect_output(spec)
    random.seed()
    access_log = None
    if config.access_log:
        try:
            access_log = AccessLog(config.access_log, config.access_format)
        except OSError as exc:
            raise BootError(f"access_log {config.access_log!r}: {exc.strerror}") from None
    hooks = ScoreboardHooks(
        config, spec.board, spec.index, spec.generation, spec.listeners, access_log
    )
    driver: Driver | None = None
    options: ServerOptions | None = None

    def graceful(signum: int, frame: FrameType | None) -> None:
        if forkguard.parent_gone():
            _orphaned(hooks, spec.handoff)  # the death signal, not a stop asked by the master
        else:
            hooks.request_stop()
        if signum == signal.SIGQUIT and options is not None:
            options.handoff_on_stop = False
        if driver is not None:
            driver.stop()

    def reopen(signum: int, frame: FrameType | None) -> None:
        if access_log is not None:
            with contextlib.suppress(OSError):
                access_log.reopen()
        # The error log's files too: the handlers came from the master by
        # fork, and write into the rotated file until reopened here.
        reopen_log_files()
        stacks.reopen_fallback()

    def slowlog(signum: int, frame: FrameType | None) -> None:
        hooks.dump_stack(frame)

    signal.signal(signal.SIGTERM, graceful)
    signal.signal(signal.SIGQUIT, graceful)
    signal.signal(signal.SIGUSR1, reopen)
    signal.signal(signal.SIGUSR2, slowlog)
    if config.request_terminate_timeout > 0:
        # The stack of a request stuck in C, where SIGUSR2's Python handler
        # cannot run: the master sends FALLBACK_SIGNAL if SIGUSR2 got no answer.
        slowlog_path = config.slowlog if config.slowlog not in (None, "-") else None
        try:
            stacks.arm_fallback(slowlog_path)
        except OSError as exc:
            raise BootError(f"slowlog {slowlog_path!r}: {exc.strerror}") from None
    # Handlers in place: what arrived since the fork is delivered now, and
    # the app (and what it starts) runs with no signal held.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, MASTER_SIGNALS)

    # Built before clear_env trims the environment: FCGI_WEB_SERVER_ADDRS is
    # a setting of the server, not part of the app's environment.
    options = config.server_options()
    options.protocols = spec.protocols
    options.handoff = spec.handoff
    drop_privileges(config.user, config.group)
    # After the privilege drop: changing credentials clears the death signal.
    _follow_master(spec.master_pid, hooks, spec.handoff)
    prepare_environment(config)
    app = spec.app if spec.app is not None else load_pool_app(config.app)
    try:
        options.interface = resolve_interface(app, config.interface)
        kind = choose_worker(config.worker, options.interface)
    except ConfigError as exc:
        raise AppLoadError(str(exc)) from None
    driver = driver_factory(kind)(spec.listeners, app, options, hooks)
    if hooks.stop_requested:
        return EXIT_OK

    def ready() -> None:
        # Called by the driver once it can serve: after an ASGI app's lifespan
        # startup, so a worker whose app refuses to start (exit 3) is never
        # counted as started, and the master never says "ready" for a pool
        # in which no worker can run.
        # Everything alive now (the app, its modules, what its startup made,
        # the worker) lives as long as the process: frozen, full collections
        # no longer walk it, and pages shared with the master are not dirtied
        # by the collector's bookkeeping. No gc.collect() first: it would
        # delay the worker's first request.
        gc.freeze()
        hooks.ready()

    try:
        driver.serve_forever(ready)
    finally:
        hooks.publish()
    if hooks.stop_reason and not hooks.signalled:
        log.info("[pool %s] child %d exiting: %s", config.name, os.getpid(), hooks.stop_reason)
    return EXIT_OK
