"""Where fcgi's log goes: stderr, a file, syslog, or a ``logging.config`` file of the operator's.

One function, :func:`configure_logging`, for every mode: the pool's master
(through :func:`fcgi.pool.logs.setup_logging`) and the single process (the
``fcgi`` command) call it with the same settings, so ``error_log``,
``log_level``, ``log_config``, ``syslog_facility`` and ``syslog_ident`` mean
the same thing in both. It imports nothing of the pool.

* ``error_log`` unset or ``-``: stderr. A handler the caller installed
  before (an embedding program's) is kept instead.
* ``error_log`` a path: appended to; :func:`reopen_log_files` (SIGUSR1)
  closes and reopens it, so logrotate can move it away first.
* ``error_log = "syslog"``: datagrams to ``/dev/log`` with PHP-FPM's
  ``syslog.facility`` and ``syslog.ident``, tagged ``IDENT[PID]:`` as
  syslog(3) tags them. The environment variable ``FCGI_SYSLOG_ADDRESS``
  names another unix socket: it is there for the tests, which cannot own
  ``/dev/log``.
* ``log_config``: a ``logging.config.dictConfig`` document (``.json`` or
  ``.toml``) that replaces all of the above; combined with ``error_log`` it is
  a configuration error (one of them would do nothing).

Every handler formats through :class:`fcgi.escape.EscapingFormatter`, those of
a ``log_config`` file included (their own formatter is wrapped): a request URI
or an app's exception message cannot add a line of its own to the log.

A fork inherits these handlers, so a pool's workers write their own records
straight to the same place, formatted and escaped once. For the same reason
the stderr handler writes to a duplicate of descriptor 2 taken now: when a
worker's descriptor 2 becomes the pipe of ``catch_workers_output`` (whose lines
the master logs as "child N said into stderr"), the worker's records still go
to the real stderr instead of being wrapped and escaped a second time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.config
import logging.handlers
import os
import socket
import sys
import tomllib
from typing import Any

from fcgi.errors import ConfigError
from fcgi.escape import EscapingFormatter, escape

LOG_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"
#: syslog stamps the time itself; the tag is syslog(3)'s ``IDENT[PID]:``.
SYSLOG_FORMAT = "{ident}[%(process)d]: [%(levelname)s] %(name)s: %(message)s"
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "notice": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
SyslogHandler = logging.handlers.SysLogHandler
#: PHP-FPM's syslog.facility names, as syslog(3) numbers them.
FACILITIES = {
    "auth": SyslogHandler.LOG_AUTH,
    "authpriv": SyslogHandler.LOG_AUTHPRIV,
    "cron": SyslogHandler.LOG_CRON,
    "daemon": SyslogHandler.LOG_DAEMON,
    "ftp": SyslogHandler.LOG_FTP,
    "kern": SyslogHandler.LOG_KERN,
    "lpr": SyslogHandler.LOG_LPR,
    "mail": SyslogHandler.LOG_MAIL,
    "news": SyslogHandler.LOG_NEWS,
    "syslog": SyslogHandler.LOG_SYSLOG,
    "user": SyslogHandler.LOG_USER,
    "uucp": SyslogHandler.LOG_UUCP,
    **{f"local{i}": SyslogHandler.LOG_LOCAL0 + i for i in range(8)},
}
#: The local syslog socket (syslog(3)'s _PATH_LOG).
SYSLOG_ADDRESS = "/dev/log"
#: Overrides SYSLOG_ADDRESS; for tests, which cannot bind /dev/log.
SYSLOG_ADDRESS_ENV = "FCGI_SYSLOG_ADDRESS"

#: Handlers that write a file by name, reopened by reopen_log_files().
_file_handlers: list[logging.FileHandler] = []


def configure_logging(
    *,
    error_log: str | None = None,
    log_level: str = "info",
    log_config: str | None = None,
    syslog_facility: str = "daemon",
    syslog_ident: str = "fcgi",
) -> None:
    """Set up the root logger; raises ConfigError for a destination that cannot work.

    Called once, before the server says it is ready (a bad ``log_config`` or
    an unreachable syslog stops the start with exit status 2).
    """
    root = logging.getLogger()
    root.setLevel(LEVELS.get(log_level, logging.INFO))
    if log_config:
        if error_log and error_log != "-":
            raise ConfigError(
                f"error_log {error_log!r} and log_config {log_config!r}: set one "
                "(log_config's handlers replace error_log)"
            )
        _apply_log_config(log_config)
        return
    if error_log == "syslog":
        handler: logging.Handler = _syslog_handler(syslog_facility, syslog_ident)
    elif error_log and error_log != "-":
        try:
            file_handler = logging.FileHandler(error_log, delay=False)
        except OSError as exc:
            raise ConfigError(f"error_log {error_log!r}: {exc.strerror}") from None
        file_handler.setFormatter(EscapingFormatter(LOG_FORMAT))
        _file_handlers.append(file_handler)
        handler = file_handler
    elif root.handlers:
        return  # the caller's own handlers
    else:
        handler = logging.StreamHandler(_own_stderr())
        handler.setFormatter(EscapingFormatter(LOG_FORMAT))
    root.addHandler(handler)


def _own_stderr() -> Any:
    """A stream on a duplicate of descriptor 2 (see the module's docstring); stderr if none."""
    try:
        fd = os.dup(2)
    except OSError:
        return sys.stderr
    return open(fd, "w", buffering=1, errors="backslashreplace")


def _syslog_handler(facility: str, ident: str) -> logging.Handler:
    code = FACILITIES.get(facility.lower())
    if code is None:
        raise ConfigError(
            f"syslog_facility: expected one of {', '.join(FACILITIES)}, got {facility!r}"
        )
    address = os.environ.get(SYSLOG_ADDRESS_ENV) or SYSLOG_ADDRESS
    # SysLogHandler, like openlog(3), starts without a syslog daemon and drops
    # every record until one appears. A server that logs nowhere from its
    # first line is a setup mistake to report before "ready", not after.
    problem = _unreachable(address)
    if problem:
        raise ConfigError(
            f"error_log = syslog: cannot reach the syslog socket {address}: {problem} "
            "(is a syslog daemon running?)"
        )
    handler = SyslogHandler(address=address, facility=code)
    # The ident goes into a %-format: a % of its own must stay a character.
    tag = SYSLOG_FORMAT.format(ident=_escape_ident(ident).replace("%", "%%"))
    handler.setFormatter(EscapingFormatter(tag))
    return handler


def _unreachable(address: str) -> str | None:
    """Why nothing listens on the unix socket ``address`` (datagram or stream), or None."""
    error = ""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_UNIX, kind) as probe:
            try:
                probe.connect(address)
            except OSError as exc:
                error = error or (exc.strerror or str(exc))
                continue
            return None
    return error


def _escape_ident(ident: str) -> str:
    """The ident as a tag: syslog parsers end it at a blank, a colon or a bracket."""
    return "".join("_" if c in " :[]" else c for c in escape(ident)) or "fcgi"


# -- log_config ----------------------------------------------------------------


def read_log_config(path: str) -> dict[str, Any]:
    """The dictConfig document in ``path`` (.json or .toml); ConfigError if unusable.

    Checks what can be checked without applying it (``fcgi check-config``
    calls this): the file reads, parses, and is a table with ``version = 1``.
    """
    where = f"log_config {path!r}"
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in (".json", ".toml"):
        raise ConfigError(f"{where}: expected a .json or .toml file")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read: {exc.strerror}") from None
    try:
        data = json.loads(raw) if suffix == ".json" else tomllib.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, TOMLDecodeError
        raise ConfigError(f"{where}: not valid {suffix[1:].upper()}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table (a dictConfig dictionary)")
    if data.get("version") != 1:
        raise ConfigError(f"{where}: dictConfig needs version = 1")
    return data


def _apply_log_config(path: str) -> None:
    data = read_log_config(path)
    # fcgi's modules make their loggers at import, before this runs; dictConfig
    # would silence every one of them ("ready" included) unless told otherwise.
    data.setdefault("disable_existing_loggers", False)
    try:
        logging.config.dictConfig(data)
    except (ValueError, TypeError, AttributeError, ImportError) as exc:
        cause = exc.__cause__ or exc
        raise ConfigError(f"log_config {path!r}: {exc} ({cause})") from None
    for handler in _all_handlers():
        _wrap_formatter(handler)
        if isinstance(handler, logging.FileHandler):
            _file_handlers.append(handler)


def _all_handlers() -> list[logging.Handler]:
    loggers: list[Any] = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    seen: dict[int, logging.Handler] = {}
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):
            seen.setdefault(id(handler), handler)
    return list(seen.values())


class _Delegating(logging.Formatter):
    """Formats with another formatter: the operator's, from log_config."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return self.inner.format(record)


class _EscapingWrapper(EscapingFormatter, _Delegating):
    """EscapingFormatter's escaping around the operator's formatter (MRO: escape, then delegate)."""


def _wrap_formatter(handler: logging.Handler) -> None:
    current = handler.formatter
    if isinstance(current, EscapingFormatter):
        return
    handler.setFormatter(_EscapingWrapper(current or logging.Formatter()))


# -- SIGUSR1 ------------------------------------------------------------------


def reopen_log_files() -> None:
    """Close and reopen every log file by its name (after logrotate moved it)."""
    for handler in _file_handlers:
        handler.acquire()
        try:
            if handler.stream is not None:
                with contextlib.suppress(OSError):
                    handler.stream.close()
            # None until reopened: FileHandler.emit then tries to open it again.
            handler.stream = None
            handler.stream = handler._open()
        except OSError:
            pass  # the next record (or the next SIGUSR1) tries again
        finally:
            handler.release()
