"""The master's error log, from the global settings (see :mod:`fcgi.logsetup`).

The pool's own entry to :func:`fcgi.logsetup.configure_logging`, which the
single process shares without importing the pool: ``error_log`` (a file,
``-`` for stderr, or ``syslog``), ``log_level``, ``log_config``,
``syslog_facility`` and ``syslog_ident``. Workers inherit the handlers by fork
and reopen the files on SIGUSR1 as the master does; their stdout and stderr
reach the same place through :mod:`fcgi.pool.worker_output`.
"""

from __future__ import annotations

from fcgi.logsetup import LEVELS, LOG_FORMAT, configure_logging, reopen_log_files
from fcgi.pool.config import MasterConfig

__all__ = ["LEVELS", "LOG_FORMAT", "reopen_log_files", "setup_logging"]


def setup_logging(config: MasterConfig) -> None:
    """Configure the master's logging; ConfigError (exit 2, before "ready") if it cannot work."""
    configure_logging(
        error_log=config.error_log,
        log_level=config.log_level,
        log_config=config.log_config,
        syslog_facility=config.syslog_facility,
        syslog_ident=config.syslog_ident,
    )
