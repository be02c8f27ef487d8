"""What a pool needs before its master says "ready", checked before anything binds or forks.

Most mistakes in a pool's settings only show when a worker starts: the user
it should run as does not exist, its ``chdir`` is missing, the app does not
import, a log file cannot be written. With ``pm = "ondemand"`` the first
worker starts on the first request, so without these checks a typo passes
``fcgi check-config``, the master logs "ready", and the outage begins with
the first visitor. :func:`problems` runs every check and reports every
failure (one line each), so ``fcgi check-config`` and the master's start-up
refuse the same files for the same reasons.

The app is imported in a throw-away forked child set up as a worker is (the
pool's user and group, ``chdir``, ``env``, ``clear_env``), so the master
itself stays clean unless ``preload_app`` asks for the app in it.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import select
import signal
import time
from dataclasses import dataclass

from fcgi.app_loader import AppImportError, load_app
from fcgi.errors import ConfigError
from fcgi.exit_codes import EXIT_APP_IMPORT, EXIT_USAGE
from fcgi.logsetup import read_log_config
from fcgi.pool.config import MasterConfig, PoolConfig
from fcgi.pool.worker_process import BootError, drop_privileges, prepare_environment
from fcgi.sockets import parse_bind

#: Seconds the app gets to import in the throw-away child.
IMPORT_TIMEOUT = 120.0
#: Most bytes of an import error the child reports (one line is the aim).
_MAX_MESSAGE = 4096


class StartupError(ConfigError):
    """The configuration cannot start: every reason, one line each, and the exit status."""

    def __init__(self, found: list[Problem]) -> None:
        super().__init__("\n".join(p.message for p in found))
        self.problems = found
        self.exit_code = exit_code(found)


def check(config: MasterConfig) -> None:
    """Raise :class:`StartupError` unless ``config`` can start (see :func:`problems`)."""
    found = problems(config)
    if found:
        raise StartupError(found)


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason the configuration cannot start; ``app`` if it is the app's import."""

    message: str
    app: bool = False


def problems(config: MasterConfig, *, import_apps: bool = True) -> list[Problem]:
    """Every reason ``config`` would fail once running, in pool order (empty: none)."""
    found: list[Problem] = []
    for path, key in ((config.error_log, "error_log"), (config.pid_file, "pid_file")):
        # "-" is stderr and error_log = "syslog" the syslog socket: no file.
        if path and path != "-" and not (key == "error_log" and path == "syslog"):
            found += _writable(path, f"{config.source}: {key}")
    if config.log_config:
        try:
            read_log_config(config.log_config)
        except ConfigError as exc:
            found.append(Problem(f"{config.source}: {exc}"))
    for pool in config.pools:
        found += _pool_problems(config.source, pool, import_apps)
    return found


def exit_code(found: list[Problem]) -> int:
    """The exit table's status: 3 if an app is what cannot start, else 2 (configuration)."""
    return EXIT_APP_IMPORT if any(p.app for p in found) else EXIT_USAGE


def _pool_problems(source: str, pool: PoolConfig, import_apps: bool) -> list[Problem]:
    where = f"{source}: [pool.{pool.name}]"
    found: list[Problem] = []
    _identity(pool, where, found)
    if pool.chdir and not os.path.isdir(pool.chdir):
        found.append(Problem(f"{where} chdir: {pool.chdir!r} is not a directory"))
    for spec in pool.listen:
        try:
            address = parse_bind(spec)
        except ConfigError:
            continue  # the configuration's own check said why
        if address.kind == "unix" and not address.path.startswith("@"):
            directory = os.path.dirname(os.path.abspath(address.path))
            if not os.path.isdir(directory):
                found.append(
                    Problem(f"{where} listen: {spec!r}: directory {directory!r} does not exist")
                )
    for key in ("access_log", "slowlog"):
        path = getattr(pool, key)
        if path and path != "-":
            found += _writable(path, f"{where} {key}")
    # Imported only when the rest is sound (as a user that does not exist,
    # say, the import could not even be tried).
    wanted = import_apps and pool.app_object is None and not pool.preload_app and pool.app
    if wanted and not found:
        problem = _import_problem(pool, where)
        if problem is not None:
            found.append(problem)
    return found


def _identity(pool: PoolConfig, where: str, found: list[Problem]) -> None:
    """The user and group the pool's workers will run as exist."""
    if pool.user is not None and not pool.user.isdigit():
        try:
            pwd.getpwnam(pool.user)
        except KeyError:
            found.append(Problem(f"{where} user: no user named {pool.user!r}"))
    if pool.group is not None and not pool.group.isdigit():
        try:
            grp.getgrnam(pool.group)
        except KeyError:
            found.append(Problem(f"{where} group: no group named {pool.group!r}"))


def _writable(path: str, what: str) -> list[Problem]:
    """A log or pid file can be opened for appending (created if missing, then left)."""
    existed = os.path.exists(path)
    try:
        with open(path, "a"):
            pass
    except OSError as exc:
        return [Problem(f"{what}: cannot write {path!r}: {exc.strerror}")]
    if not existed:
        # Made only to prove it can be: the server makes it again when it starts.
        with contextlib.suppress(OSError):
            os.unlink(path)
    return []


def _import_problem(pool: PoolConfig, where: str) -> Problem | None:
    """Import the pool's app in a throw-away child, set up as a worker is; what failed, if any.

    A forked child, not a new interpreter: a worker gets its interpreter by
    fork too, and after dropping privileges it may not be able to read the
    installation (a pyenv under /root), so only a fork tries what a worker
    will do. The master itself never imports the app here.

    The child says which step failed (see :data:`_SETUP`, :data:`_APP`): only
    the app's own import is the exit table's 3. Becoming the worker (the
    user, the group, a ``chdir`` that user cannot enter, the environment) is
    a mistake in the configuration: 2.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - measured through the parent
        os.close(read_end)
        os._exit(_child(pool, write_end))
    os.close(write_end)
    chunks: list[bytes] = []
    deadline = time.monotonic() + IMPORT_TIMEOUT
    poller = select.poll()
    poller.register(read_end, select.POLLIN)
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                stuck = b"".join(chunks)[:1] == _APP
                what = f"{pool.app!r} did not import" if stuck else "the worker's set-up hung"
                return _problem(where, stuck, f"{what} within {IMPORT_TIMEOUT:g}s")
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
    _, status = os.waitpid(pid, 0)
    return _read_report(pool, where, b"".join(chunks), status)


#: What the child writes first when becoming the pool's worker (user, group,
#: ``chdir``, environment) failed, before the message: configuration, 2.
_SETUP = b"S"
#: What the child writes once that set-up is done, just before the app's
#: import begins; then, if the import fails, the kind (this byte, or
#: :data:`_SETUP` for a malformed spec) and the message. Written before the
#: import so that an import which ends the process is still known as the app's.
_APP = b"A"


def _child(pool: PoolConfig, write_end: int) -> int:
    """In the throw-away child: set up as a worker, import, report; the exit status."""
    stage = _SETUP
    message = ""
    try:
        drop_privileges(pool.user, pool.group)
        prepare_environment(pool)
        stage = _APP
        _write(write_end, _APP)
        load_app(pool.app)
    except AppImportError as exc:
        # A malformed spec is a configuration mistake, as from the command line.
        stage = _SETUP if exc.usage else _APP
        message = str(exc)
    except BootError as exc:
        message = str(exc)
    except BaseException as exc:  # whatever the app's import (or the set-up) raised
        what = f"importing {pool.app!r}" if stage == _APP else "setting up the worker"
        message = f"{what} raised {type(exc).__name__}: {exc}"
    if message:
        _write(write_end, stage + message.encode("utf-8", "replace")[:_MAX_MESSAGE])
    return 0


def _write(fd: int, data: bytes) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, data)


def _read_report(pool: PoolConfig, where: str, report: bytes, status: int) -> Problem | None:
    """The problem the child reported (see :data:`_SETUP`, :data:`_APP`), if any."""
    importing = report[:1] == _APP
    if importing:
        report = report[1:]
    if report:
        app = report[:1] == _APP
        return _problem(where, app, report[1:].decode("utf-8", "replace"))
    if status != 0:
        what = f"importing {pool.app!r}" if importing else "setting up the worker"
        return _problem(where, importing, f"{what} ended the process (wait status {status})")
    return None


def _problem(where: str, app: bool, message: str) -> Problem:
    """The line for the child's report: under ``app:`` only if the app is what failed."""
    if app:
        return Problem(f"{where} app: {message}", app=True)
    # The set-up's own messages name what failed ("chdir: '/srv': Permission
    # denied (as user 'nobody')", "unknown user or group 'x'").
    return Problem(f"{where} {message}")
