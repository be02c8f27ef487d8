"""Pool and master settings: the TOML file, validation, and the effective values.

Knob names are PHP-FPM's ``pm.*`` / pool directives without their prefix, so a
``www.conf`` translates line by line::

    [global]
    log_level = "info"
    process_control_timeout = 30

    [pool.www]
    app = "myapp:app"
    listen = "unix:/run/myapp.sock"
    pm = "dynamic"
    max_children = 10

Top-level pool keys (outside any table) are defaults for every pool. Every
mistake raises :class:`~fcgi.errors.ConfigError` naming the key and the file,
before anything forks.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fcgi.errors import ConfigError
from fcgi.options import ServerOptions
from fcgi.pool.access_log import compile_format

PM_MODES = ("static", "dynamic", "ondemand")
LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical")

#: PHP-FPM's default access.format plus the duration in milliseconds, the
#: figure an operator reads the access log for first.
DEFAULT_ACCESS_FORMAT = '%R - %u %t "%m %r" %s %{milli}d'


@dataclass(slots=True)
class PoolConfig:
    """One pool: an app, its listening sockets and how many processes serve it."""

    name: str = "www"
    #: ``module:app`` or ``module:factory()``.
    app: str = ""
    #: Bind specs (``unix:/path``, ``HOST:PORT``, ``[v6]:PORT``, ``fd://N``).
    listen: tuple[str, ...] = ()
    listen_backlog: int = 511
    listen_owner: str | None = None
    listen_group: str | None = None
    listen_mode: int = 0o660
    listen_allowed_clients: tuple[str, ...] = ()

    pm: str = "dynamic"
    max_children: int = 5
    #: None: (min_spare_servers + max_spare_servers) // 2, as PHP-FPM.
    start_servers: int | None = None
    min_spare_servers: int = 1
    max_spare_servers: int = 3
    max_spawn_rate: int = 32
    process_idle_timeout: float = 10.0

    max_requests: int = 0
    max_requests_jitter: int = 0
    #: Bytes of RSS; a worker ending a request above it is replaced (0: off).
    max_memory: int = 0
    request_terminate_timeout: float = 0.0
    request_slowlog_timeout: float = 0.0
    slowlog: str | None = None

    status_path: str | None = None
    ping_path: str | None = None
    ping_response: str = "pong"
    status_listen: str | None = None
    #: Show query strings in the status page's ?full list. Off by default:
    #: they carry other users' tokens and search terms.
    status_full_query: bool = False

    user: str | None = None
    group: str | None = None
    chdir: str | None = None
    clear_env: bool = False
    env: dict[str, str] = field(default_factory=dict)
    catch_workers_output: bool = False
    access_log: str | None = None
    access_format: str = DEFAULT_ACCESS_FORMAT
    preload_app: bool = False
    #: Seconds a connection may stay silent (ServerOptions.read_timeout).
    read_timeout: float = 30.0
    #: Mount point of the app (SCRIPT_NAME); None: derived from the params.
    script_name: str | None = None
    #: Most FastCGI params, and most PARAMS bytes, one request may send.
    max_params: int = 1000
    max_params_bytes: int = 256 * 1024
    #: Largest request body (bytes, or a size such as "512M"; 0: no limit).
    max_body_size: int = 512 * 1024 * 1024
    #: Seconds a new connection has to send its whole request head.
    request_header_timeout: float = 5.0
    #: Seconds one request may wait, in total, for the web server to read.
    send_timeout: float = 60.0
    #: "sync" (one request at a time per worker) or "trio" (concurrent, ASGI).
    worker: str = "sync"
    #: "auto" (detect), "wsgi" or "asgi".
    interface: str = "auto"
    #: Trio worker: WSGI threads, connections and requests in progress per worker.
    threads: int = 10
    max_conns: int = 256
    max_reqs: int = 256
    #: An app object handed over by ``fcgi.serve()``: used as if preloaded,
    #: and ``app`` is then only its name in logs. Not a configuration key.
    app_object: Any = None

    @property
    def effective_start_servers(self) -> int:
        if self.pm == "static":
            return self.max_children
        if self.pm == "ondemand":
            return 0
        if self.start_servers is not None:
            return self.start_servers
        return (self.min_spare_servers + self.max_spare_servers) // 2

    def server_options(self) -> ServerOptions:
        """The per-worker settings this pool maps onto, checked as fcgi.serve() checks them."""
        from fcgi.server import make_options

        options = make_options(
            read_timeout=self.read_timeout,
            script_name=self.script_name,
            max_params=self.max_params,
            max_params_bytes=self.max_params_bytes,
            allowed_clients=self.listen_allowed_clients,
            multiprocess=True,
            interface=self.interface,
            threads=self.threads,
            max_conns=self.max_conns,
            max_reqs=self.max_reqs,
            max_body_size=self.max_body_size,
            request_header_timeout=self.request_header_timeout,
            send_timeout=self.send_timeout,
        )
        options.multithread = self.worker == "trio"
        return options


@dataclass(slots=True)
class MasterConfig:
    """Everything one master runs: global settings and its pools."""

    pools: list[PoolConfig] = field(default_factory=list)
    error_log: str | None = None
    log_level: str = "info"
    pid_file: str | None = None
    #: Seconds workers get to finish in-flight requests on a graceful stop/reload.
    process_control_timeout: float = 30.0
    emergency_restart_threshold: int = 0
    emergency_restart_interval: float = 60.0
    #: Seconds between STATUS= updates to systemd (0: only at state changes).
    systemd_interval: float = 10.0
    #: The file the settings came from, for messages.
    source: str = "<command line>"


GLOBAL_KEYS = frozenset(
    {
        "error_log",
        "log_level",
        "pid_file",
        "process_control_timeout",
        "emergency_restart_threshold",
        "emergency_restart_interval",
        "systemd_interval",
    }
)
POOL_KEYS = frozenset(f.name for f in dataclasses.fields(PoolConfig)) - {"name", "app_object"}

_MEMORY = re.compile(r"^\s*(\d+)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_memory(value: object, key: str = "max_memory", source: str = "") -> int:
    """``1048576``, ``"512M"``, ``"1G"`` -> bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        m = _MEMORY.match(value)
        if m:
            return int(m.group(1)) * _UNITS[m.group(2).lower()]
    raise ConfigError(f"{_where(key, source)}: expected a size such as 512M, got {value!r}")


def _where(key: str, source: str) -> str:
    return f"{source}: {key}" if source else key


def _coerce(key: str, value: object, source: str) -> object:
    """Check a raw value against the field's type; return it converted."""
    kinds = _FIELD_KINDS[key]
    where = _where(key, source)
    if key in ("max_memory", "max_body_size"):
        return parse_memory(value, key, source)
    if key == "listen_mode":
        if isinstance(value, str) and re.fullmatch(r"0?o?[0-7]{3,4}", value):
            return int(value.replace("o", ""), 8)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0o7777:
            return value
        raise ConfigError(f'{where}: expected an octal mode such as "0660", got {value!r}')
    if kinds == "tuple":
        if isinstance(value, str):
            items = [v.strip() for v in value.split(",")] if key != "listen" else [value]
            return tuple(v for v in items if v)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"{where}: expected a string or a list of strings, got {value!r}")
    if kinds == "dict":
        if isinstance(value, dict) and all(
            isinstance(v, str | int | float) for v in value.values()
        ):
            return {str(k): str(v) for k, v in value.items()}
        raise ConfigError(f'{where}: expected a table of NAME = "value", got {value!r}')
    if kinds == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("yes", "no", "true", "false", "on", "off"):
            return value.lower() in ("yes", "true", "on")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if kinds == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if kinds == "float":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            return parse_duration(value, key, source)
        raise ConfigError(f"{where}: expected a number of seconds, got {value!r}")
    if kinds == "str":
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise AssertionError(kinds)  # pragma: no cover


def parse_duration(value: str, key: str = "", source: str = "") -> float:
    """``"30"``, ``"30s"``, ``"5m"``, ``"1h"`` -> seconds (PHP-FPM accepts these suffixes)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", value)
    if not m:
        raise ConfigError(f"{_where(key, source)}: expected seconds such as 30s, got {value!r}")
    factor = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    return float(m.group(1)) * factor


def _kind(annotation: str) -> str:
    a = annotation.replace(" ", "")
    for prefix, kind in (
        ("tuple", "tuple"),
        ("dict", "dict"),
        ("bool", "bool"),
        ("int", "int"),
        ("float", "float"),
        ("str", "str"),
    ):
        if a.startswith(prefix):
            return kind
    raise AssertionError(annotation)  # pragma: no cover


_FIELD_KINDS: dict[str, str] = {
    f.name: _kind(str(f.type)) for f in dataclasses.fields(PoolConfig) if f.name != "app_object"
} | {f.name: _kind(str(f.type)) for f in dataclasses.fields(MasterConfig) if f.name != "pools"}
_NULLABLE = frozenset(
    f.name
    for cls in (PoolConfig, MasterConfig)
    for f in dataclasses.fields(cls)
    if "None" in str(f.type)
)


def apply_settings(target: Any, settings: Mapping[str, object], source: str) -> None:
    """Set validated ``settings`` on a PoolConfig or MasterConfig."""
    for key, value in settings.items():
        if key not in _FIELD_KINDS:
            raise ConfigError(f"{source}: {key}: unknown setting")
        if value is None and key in _NULLABLE:
            setattr(target, key, None)
            continue
        setattr(target, key, _coerce(key, value, source))


def validate_pool(pool: PoolConfig, source: str) -> None:
    """Cross-field checks (PHP-FPM's fpm_conf_process_all_pools, roughly)."""

    def fail(key: str, why: str) -> ConfigError:
        return ConfigError(f"{source}: [pool.{pool.name}] {key}: {why}")

    if pool.app_object is None:
        if not pool.app:
            raise fail("app", "missing (expected MODULE or MODULE:APP)")
        if pool.app.startswith(":") or pool.app.endswith(":"):
            raise fail("app", f"expected MODULE, MODULE:APP or MODULE:factory(), got {pool.app!r}")
    elif not callable(pool.app_object):
        raise fail("app", f"{type(pool.app_object).__name__} object is not callable")
    if pool.worker not in ("sync", "trio"):
        raise fail("worker", f"expected sync or trio, got {pool.worker!r}")
    if pool.interface not in ("auto", "wsgi", "asgi"):
        raise fail("interface", f"expected auto, wsgi or asgi, got {pool.interface!r}")
    try:
        pool.server_options()
    except ConfigError as exc:
        raise ConfigError(f"{source}: [pool.{pool.name}] {exc}") from None
    if not pool.listen:
        raise fail("listen", "missing (expected unix:/path or HOST:PORT)")
    if pool.pm not in PM_MODES:
        raise fail("pm", f"expected one of {', '.join(PM_MODES)}, got {pool.pm!r}")
    if pool.max_children < 1:
        raise fail("max_children", f"must be at least 1, got {pool.max_children}")
    for key in (
        "listen_backlog",
        "max_requests",
        "max_requests_jitter",
        "min_spare_servers",
        "max_spare_servers",
    ):
        if getattr(pool, key) < 0:
            raise fail(key, f"must not be negative, got {getattr(pool, key)}")
    for key in (
        "process_idle_timeout",
        "request_terminate_timeout",
        "request_slowlog_timeout",
        "read_timeout",
    ):
        if getattr(pool, key) < 0:
            raise fail(key, f"must not be negative, got {getattr(pool, key)}")
    if pool.max_spawn_rate < 1:
        raise fail("max_spawn_rate", f"must be at least 1, got {pool.max_spawn_rate}")
    if pool.pm == "dynamic":
        if pool.min_spare_servers < 1:
            raise fail("min_spare_servers", "must be at least 1 with pm = dynamic")
        if pool.max_spare_servers < pool.min_spare_servers:
            raise fail(
                "max_spare_servers",
                f"({pool.max_spare_servers}) must not be below min_spare_servers "
                f"({pool.min_spare_servers})",
            )
        if pool.max_spare_servers > pool.max_children:
            raise fail(
                "max_spare_servers",
                f"({pool.max_spare_servers}) must not exceed max_children ({pool.max_children})",
            )
        start = pool.effective_start_servers
        if not pool.min_spare_servers <= start <= pool.max_spare_servers:
            raise fail(
                "start_servers",
                f"({start}) must lie between min_spare_servers ({pool.min_spare_servers}) "
                f"and max_spare_servers ({pool.max_spare_servers})",
            )
    if pool.pm == "ondemand" and pool.process_idle_timeout <= 0:
        raise fail("process_idle_timeout", "must be positive with pm = ondemand")
    for key in ("status_path", "ping_path"):
        value = getattr(pool, key)
        if value is not None and not value.startswith("/"):
            raise fail(key, f"must start with '/', got {value!r}")
    try:
        # Here, not in the worker: an ondemand pool has no worker until traffic.
        compile_format(pool.access_format)
    except ConfigError as exc:
        raise fail("access_format", str(exc)) from None
    if pool.request_slowlog_timeout and pool.slowlog is None:
        pool.slowlog = "-"  # stderr, i.e. the master's log
    if pool.user is None and os.geteuid() == 0:
        raise fail(
            "user",
            "the master runs as root: name the user the workers run as "
            '(user = "www-data" in the file or --user www-data; user = "root" / '
            "--user root if you really mean it)",
        )


def validate_master(config: MasterConfig) -> None:
    source = config.source
    if config.log_level not in LOG_LEVELS:
        raise ConfigError(
            f"{source}: log_level: expected one of {', '.join(LOG_LEVELS)}, "
            f"got {config.log_level!r}"
        )
    for key in ("process_control_timeout", "emergency_restart_interval", "systemd_interval"):
        if getattr(config, key) < 0:
            raise ConfigError(f"{source}: {key}: must not be negative")
    if config.emergency_restart_threshold < 0:
        raise ConfigError(f"{source}: emergency_restart_threshold: must not be negative")
    if not config.pools:
        raise ConfigError(f"{source}: no pool defined (add a [pool.NAME] table)")
    names = [p.name for p in config.pools]
    if len(set(names)) != len(names):
        raise ConfigError(f"{source}: pool names must be unique, got {names}")
    seen: dict[str, str] = {}
    for pool in config.pools:
        validate_pool(pool, source)
        for spec in pool.listen:
            if spec in seen:
                raise ConfigError(
                    f"{source}: [pool.{pool.name}] listen: {spec!r} is already used by "
                    f"pool {seen[spec]!r}"
                )
            seen[spec] = pool.name


def config_from_mapping(data: Mapping[str, Any], source: str) -> MasterConfig:
    """Build a MasterConfig from parsed TOML (no validation of cross-field rules)."""
    config = MasterConfig(source=source)
    defaults: dict[str, object] = {}
    for key, value in data.items():
        if key == "global":
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: [global] must be a table")
            for gkey in value:
                if gkey not in GLOBAL_KEYS:
                    raise ConfigError(f"{source}: [global] {gkey}: unknown setting")
            apply_settings(config, value, source)
        elif key == "pool":
            continue
        elif key in GLOBAL_KEYS:
            apply_settings(config, {key: value}, source)
        elif key in POOL_KEYS:
            defaults[key] = value
        else:
            raise ConfigError(f"{source}: {key}: unknown setting")
    pools = data.get("pool", {})
    if not isinstance(pools, dict):
        raise ConfigError(f"{source}: pool must be a set of [pool.NAME] tables")
    for name, table in pools.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: pool.{name} must be a table")
        pool = PoolConfig(name=name)
        for pkey in table:
            if pkey not in POOL_KEYS:
                raise ConfigError(f"{source}: [pool.{name}] {pkey}: unknown setting")
        try:
            apply_settings(pool, defaults, source)
            apply_settings(pool, table, f"{source}: [pool.{name}]")
        except ConfigError:
            raise
        config.pools.append(pool)
    if not pools and defaults:
        pool = PoolConfig()
        apply_settings(pool, defaults, source)
        config.pools.append(pool)
    return config


def load_config(path: str, *, validate: bool = True) -> MasterConfig:
    """Read and validate a TOML configuration file."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    config = config_from_mapping(data, path)
    if validate:
        validate_master(config)
    return config


def effective_settings(config: MasterConfig) -> dict[str, Any]:
    """Every setting with its effective value, for ``fcgi check-config``."""
    out: dict[str, Any] = {key: getattr(config, key) for key in sorted(GLOBAL_KEYS)}
    out["pool"] = {}
    for pool in config.pools:
        values = {f.name: getattr(pool, f.name) for f in dataclasses.fields(pool)}
        values.pop("name")
        values.pop("app_object")
        values["start_servers"] = pool.effective_start_servers
        out["pool"][pool.name] = values
    return out
