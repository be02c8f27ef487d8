"""The pool's command-line flags, and ``fcgi check-config``.

Every pool setting is also a ``--kebab-case`` flag (``--max-children 10``,
``--pm dynamic``); ``--workers N`` is a static pool of N; ``--config FILE``
reads a TOML file whose pools the flags then override (only a single-pool
file can be overridden). Flags the host parser already has (the ``fcgi serve``
command's ``--bind``, ``--backlog``, ``--chdir``...) are not added twice: they
are read under their own names (see :data:`HOST_ARGUMENTS`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from fcgi.errors import ConfigError
from fcgi.pool.config import (
    GLOBAL_KEYS,
    POOL_KEYS,
    MasterConfig,
    PoolConfig,
    apply_settings,
    effective_settings,
    load_config,
    validate_master,
)

#: ``fcgi serve`` flags (defined by the host parser) -> pool/master setting.
HOST_ARGUMENTS = {
    "app": "app",
    "bind": "listen",
    "backlog": "listen_backlog",
    "socket_mode": "listen_mode",
    "allowed_clients": "listen_allowed_clients",
    "chdir": "chdir",
    "read_timeout": "read_timeout",
    "log_level": "log_level",
    "script_name": "script_name",
    "max_params": "max_params",
    "max_params_bytes": "max_params_bytes",
    "worker": "worker",
    "interface": "interface",
    "threads": "threads",
    "max_conns": "max_conns",
    "max_reqs": "max_reqs",
    "max_body_size": "max_body_size",
    "request_header_timeout": "request_header_timeout",
    "send_timeout": "send_timeout",
}

_HELP = {
    "pm": "process manager: static, dynamic or ondemand",
    "max_children": "most workers at once",
    "start_servers": "workers at start (dynamic)",
    "min_spare_servers": "fewest idle workers (dynamic)",
    "max_spare_servers": "most idle workers (dynamic)",
    "max_spawn_rate": "most workers forked per heartbeat (dynamic)",
    "process_idle_timeout": "seconds before an idle worker exits (ondemand)",
    "max_requests": "requests before a worker is replaced (0: never)",
    "max_requests_jitter": "random extra requests per worker, spreads restarts",
    "max_memory": "RSS above which a worker is replaced after its request (e.g. 512M)",
    "request_terminate_timeout": "seconds after which a request's worker is killed",
    "request_slowlog_timeout": "seconds after which a request's stack goes to the slowlog",
    "slowlog": "file for slow request stacks ('-': the error log)",
    "status_path": "path answered with the status page, e.g. /status",
    "ping_path": "path answered with ping_response, e.g. /ping",
    "ping_response": "body of the ping answer (default: pong)",
    "status_listen": "extra socket answered by the master with the status page",
    "status_full_query": "show query strings in the status page's ?full list",
    "listen": "address to listen on (repeatable)",
    "user": "user the workers run as",
    "group": "group the workers run as",
    "env": "NAME=VALUE passed to workers (repeatable)",
    "access_log": "access log file ('-': stderr)",
    "access_format": "access log line format (PHP-FPM's access.format)",
    "error_log": "master log file (default: stderr)",
    "pid_file": "write the master pid here",
    "process_control_timeout": "seconds workers get to finish on stop/reload",
    "emergency_restart_threshold": "worker crashes within the interval that restart all",
    "emergency_restart_interval": "seconds, see emergency-restart-threshold",
}

_FLAG_DESTS: list[str] = []


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_pool_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config``, ``--workers`` and every pool/global setting as a flag."""
    existing = set(parser._option_string_actions)  # argparse keeps no public view
    group = parser.add_argument_group("process manager")
    if "--config" not in existing:
        group.add_argument("--config", metavar="FILE", help="TOML file with [pool.NAME] tables")
    if "--workers" not in existing:
        group.add_argument(
            "--workers", "-w", type=int, metavar="N", help="shorthand for a static pool of N"
        )
    pool_fields = {f.name: f for f in dataclasses.fields(PoolConfig)}
    for name in sorted((POOL_KEYS | GLOBAL_KEYS) - {"app"}):
        flag = _flag(name)
        if flag in existing or (name in HOST_ARGUMENTS.values() and name != "listen"):
            continue
        if name == "listen" and "--bind" in existing:
            continue
        kind = str(pool_fields[name].type) if name in pool_fields else ""
        kwargs: dict[str, Any] = {"dest": f"pool_{name}", "default": None}
        if kind.startswith("bool"):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif name in ("listen", "env"):
            kwargs["action"] = "append"
            kwargs["metavar"] = "VALUE"
        else:
            kwargs["metavar"] = "VALUE"
        group.add_argument(flag, help=_HELP.get(name, name.replace("_", " ")), **kwargs)
        _FLAG_DESTS.append(name)


def _given(args: argparse.Namespace) -> dict[str, object]:
    """Settings given on the command line (host flags only when not at their default)."""
    out: dict[str, object] = {}
    for name, value in vars(args).items():
        if name.startswith("pool_") and value is not None:
            key = name[5:]
            if key == "env":
                env: dict[str, str] = {}
                for item in value:
                    k, eq, v = item.partition("=")
                    if not eq or not k:
                        raise ConfigError(f"--env {item!r}: expected NAME=VALUE")
                    env[k] = v
                value = env
            out[key] = value
    defaults = PoolConfig()
    for host_name, key in HOST_ARGUMENTS.items():
        value = getattr(args, host_name, None)
        if value is None or value == [] or value == "":
            continue
        if key == "log_level":
            if value != "info":
                out[key] = value
            continue
        if key in ("listen", "app"):
            out[key] = value
            continue
        if hasattr(defaults, key) and getattr(defaults, key) == value:
            continue
        out[key] = value
    return out


def config_from_args(args: argparse.Namespace) -> MasterConfig:
    """The MasterConfig the command line asks for (file, then flags on top), validated."""
    given = _given(args)
    workers = getattr(args, "workers", None)
    if workers is not None:
        if workers < 1:
            raise ConfigError(f"--workers: must be at least 1, got {workers}")
        given["pm"] = "static"
        given["max_children"] = workers
    path = getattr(args, "config", None)
    if path:
        config = load_config(path, validate=False)
        pool_settings = {k: v for k, v in given.items() if k in POOL_KEYS}
        if pool_settings:
            if len(config.pools) != 1:
                raise ConfigError(
                    f"{path}: defines {len(config.pools)} pools; command-line pool settings "
                    "can only override a single-pool file"
                )
            apply_settings(config.pools[0], pool_settings, "command line")
    else:
        config = MasterConfig(pools=[PoolConfig()])
        apply_settings(
            config.pools[0], {k: v for k, v in given.items() if k in POOL_KEYS}, "command line"
        )
    apply_settings(config, {k: v for k, v in given.items() if k in GLOBAL_KEYS}, "command line")
    validate_master(config)
    return config


def _toml_value(value: Any) -> str:
    if value is None:
        return '""  # unset'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(str(value))


def format_effective(config: MasterConfig) -> str:
    settings = effective_settings(config)
    lines = ["[global]"]
    pools = settings.pop("pool")
    for key, value in settings.items():
        lines.append(f"{key} = {_toml_value(value)}")
    for name, values in pools.items():
        lines.append("")
        lines.append(f"[pool.{name}]")
        for key, value in values.items():
            if key == "listen_mode":
                lines.append(f'{key} = "{value:04o}"')
            else:
                lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def check_config_command(path: str) -> int:
    """``fcgi check-config FILE``: validate, print the effective settings; 0 if valid."""
    from fcgi.pool import preflight

    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"fcgi: error: {exc}", file=sys.stderr)
        return 2
    # What `fcgi serve --config FILE` would meet before "ready" (users, chdir,
    # files, the app's import): valid here means it starts there.
    found = preflight.problems(config)
    for problem in found:
        print(f"fcgi: error: {problem.message}", file=sys.stderr)
    if found:
        return preflight.exit_code(found)
    sys.stdout.write(format_effective(config))
    print(f"# {path}: configuration is valid", file=sys.stderr)
    return 0
