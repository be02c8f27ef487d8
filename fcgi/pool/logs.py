"""The master's error log: where it goes, its level, and reopening it on SIGUSR1.

``error_log`` unset: log to stderr (or keep whatever handler the caller, e.g.
the ``fcgi`` command, already installed). Set: append to that file; SIGUSR1
closes and reopens it, so logrotate can move it away first.

Both handlers format with :class:`fcgi.escape.EscapingFormatter`: a request
URI or an app's exception message cannot add a line of its own to the log.
A handler the caller installed keeps the caller's formatter (wrap it with
:func:`fcgi.escape.escaping_handler` to get the same protection).
"""

from __future__ import annotations

import logging
import sys

from fcgi.escape import EscapingFormatter
from fcgi.pool.config import MasterConfig

LOG_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "notice": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

_file_handlers: list[logging.FileHandler] = []


def setup_logging(config: MasterConfig) -> None:
    root = logging.getLogger()
    root.setLevel(LEVELS.get(config.log_level, logging.INFO))
    if config.error_log and config.error_log != "-":
        handler = logging.FileHandler(config.error_log, delay=False)
        handler.setFormatter(EscapingFormatter(LOG_FORMAT))
        root.addHandler(handler)
        _file_handlers.append(handler)
    elif not root.handlers:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(EscapingFormatter(LOG_FORMAT))
        root.addHandler(stream)


def reopen_log_files() -> None:
    for handler in _file_handlers:
        handler.acquire()
        try:
            if handler.stream is not None:
                handler.stream.close()
            handler.stream = handler._open()
        finally:
            handler.release()
