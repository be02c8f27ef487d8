"""The process manager: a PHP-FPM-style master keeping pools of worker processes.

Integration points (everything else in this package is internal):

* :class:`PoolConfig` / :class:`MasterConfig` and :func:`load_config` (TOML).
* :func:`add_pool_arguments` / :func:`config_from_args`: the command-line flags.
* :func:`run_master`: run a configuration until stopped; returns the exit code.
* :func:`check_config_command`: ``fcgi check-config FILE``.

Modules: ``config`` (settings and validation), ``arguments`` (flags),
``master`` (the loop and signals), ``running_pool`` (one pool's children),
``scaling`` (static/dynamic arithmetic), ``scoreboard`` (shared memory),
``worker_process`` (life after fork), ``worker_hooks`` (the scoreboard side of a
worker), ``status`` / ``status_server`` (status and ping pages), ``reload``
(a graceful reload's steps, pure), ``reexec`` (a master replacing itself),
``worker_output`` (catch_workers_output), ``access_log``, ``logs``. Listening
sockets live in :mod:`fcgi.listeners`, the kernel's queue figures in
:mod:`fcgi.listen_queue` (the drivers read them too), systemd's sd_notify and
LISTEN_FDS in :mod:`fcgi.systemd`.
"""

from __future__ import annotations

from fcgi.pool.arguments import add_pool_arguments, check_config_command, config_from_args
from fcgi.pool.config import MasterConfig, PoolConfig, load_config
from fcgi.pool.master import run_master

__all__ = [
    "MasterConfig",
    "PoolConfig",
    "add_pool_arguments",
    "check_config_command",
    "config_from_args",
    "load_config",
    "run_master",
]
