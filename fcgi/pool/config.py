"""Pool and master settings: the TOML file, validation, and the effective values.

Which settings exist, their kinds and defaults come from the table in
:mod:`fcgi.settings`; this module holds them in :class:`PoolConfig` and
:class:`MasterConfig`, reads them from a TOML file, checks what no single
value can say (spares against ``max_children``, a setting that does nothing
in the chosen mode), and writes them back as TOML. Knob names are PHP-FPM's
``pm.*`` / pool directives without their prefix, so a ``www.conf``
translates line by line::

    [global]
    log_level = "info"
    process_control_timeout = "30s"

    [pool.www]
    app = "myapp:app"
    listen = "unix:/run/myapp.sock"
    pm = "dynamic"
    max_children = 10

Top-level pool keys (outside any table) are defaults for every pool. Every
mistake is collected, each named by where it came from (``FILE:LINE
[pool.www] max_children``, ``--max-children``, ``fcgi.serve(max_children=)``),
and reported together in one :class:`ConfigErrors` before anything forks.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fcgi.errors import ConfigError
from fcgi.escape import escape
from fcgi.options import ServerOptions, make_options
from fcgi.pool.access_log import compile_format
from fcgi.settings import (
    DEFAULT_ACCESS_FORMAT,
    GLOBAL_KEYS,
    POOL_KEYS,
    SETTINGS,
    ConfigErrors,
    check_value,
    default,
    parse_value,
    toml_value,
)
from fcgi.sockets import parse_allowed_clients, parse_bind

__all__ = [
    "DEFAULT_ACCESS_FORMAT",
    "GLOBAL_KEYS",
    "POOL_KEYS",
    "ConfigErrors",
    "MasterConfig",
    "PoolConfig",
    "format_toml",
    "load_config",
    "validate_master",
]

#: Where a value came from, by precedence: a later layer overrides an earlier
#: one, and a setting that does nothing in the chosen mode is an error only if
#: it was given in the same layer as the mode, or a later one (a file's spare
#: settings do not stop ``--workers 4`` from overriding its ``pm``).
SHARED, FILE, COMMAND = 0, 1, 2


@dataclass(slots=True)
class PoolConfig:
    """One pool: an app, its listening sockets and how many processes serve it.

    Field defaults are read from :data:`fcgi.settings.SETTINGS` (a test holds
    the fields and the table to each other).
    """

    name: str = "www"
    app: str = default("app")
    listen: tuple[str, ...] = default("listen")
    listen_backlog: int = default("listen_backlog")
    listen_owner: str | None = default("listen_owner")
    listen_group: str | None = default("listen_group")
    listen_mode: int = default("listen_mode")
    listen_allowed_clients: tuple[str, ...] = default("listen_allowed_clients")
    worker: str = default("worker")
    interface: str = default("interface")
    chdir: str | None = default("chdir")

    pm: str = default("pm")
    max_children: int = default("max_children")
    #: None: min_spare_servers + (max_spare_servers - min_spare_servers) // 2.
    start_servers: int | None = default("start_servers")
    min_spare_servers: int = default("min_spare_servers")
    max_spare_servers: int = default("max_spare_servers")
    max_spawn_rate: int = default("max_spawn_rate")
    process_idle_timeout: float = default("process_idle_timeout")
    max_requests: int = default("max_requests")
    max_requests_jitter: int = default("max_requests_jitter")
    max_memory: int = default("max_memory")
    request_terminate_timeout: float = default("request_terminate_timeout")
    request_slowlog_timeout: float = default("request_slowlog_timeout")
    slowlog: str | None = default("slowlog")
    user: str | None = default("user")
    group: str | None = default("group")
    clear_env: bool = default("clear_env")
    env: dict[str, str] = field(default_factory=lambda: default("env"))
    catch_workers_output: bool = default("catch_workers_output")
    preload_app: bool = default("preload_app")

    access_log: str | None = default("access_log")
    access_format: str = default("access_format")
    status_path: str | None = default("status_path")
    ping_path: str | None = default("ping_path")
    ping_response: str = default("ping_response")
    status_listen: str | None = default("status_listen")
    status_full_query: bool = default("status_full_query")

    read_timeout: float = default("read_timeout")
    request_header_timeout: float = default("request_header_timeout")
    send_timeout: float = default("send_timeout")
    script_name: str | None = default("script_name")
    max_params: int = default("max_params")
    max_params_bytes: int = default("max_params_bytes")
    max_body_size: int = default("max_body_size")
    threads: int = default("threads")
    max_conns: int = default("max_conns")
    max_reqs: int = default("max_reqs")

    #: An app object handed over by ``fcgi.serve()``: used as if preloaded,
    #: and ``app`` is then only its name in logs. Not a configuration key.
    app_object: Any = None
    #: Each setting given, with where it came from and its layer (not settings).
    origins: dict[str, str] = field(default_factory=dict, repr=False, compare=False)
    layers: dict[str, int] = field(default_factory=dict, repr=False, compare=False)
    #: Settings whose value could not be read: cross-checks skip them.
    invalid: set[str] = field(default_factory=set, repr=False, compare=False)

    @property
    def effective_start_servers(self) -> int:
        if self.pm == "static":
            return self.max_children
        if self.pm == "ondemand":
            return 0
        if self.start_servers is not None:
            return self.start_servers
        return (self.min_spare_servers + self.max_spare_servers) // 2

    def server_options(self, *, multiprocess: bool = True) -> ServerOptions:
        """The per-worker settings this pool maps onto."""
        return make_options(
            read_timeout=self.read_timeout,
            script_name=self.script_name,
            max_params=self.max_params,
            max_params_bytes=self.max_params_bytes,
            allowed_clients=self.listen_allowed_clients,
            multiprocess=multiprocess,
            interface=self.interface,
            threads=self.threads,
            max_conns=self.max_conns,
            max_reqs=self.max_reqs,
            max_body_size=self.max_body_size,
            request_header_timeout=self.request_header_timeout,
            send_timeout=self.send_timeout,
        )


@dataclass(slots=True)
class MasterConfig:
    """Everything one master runs: global settings and its pools."""

    pools: list[PoolConfig] = field(default_factory=list)
    error_log: str | None = default("error_log")
    log_level: str = default("log_level")
    log_config: str | None = default("log_config")
    syslog_facility: str = default("syslog_facility")
    syslog_ident: str = default("syslog_ident")
    pid_file: str | None = default("pid_file")
    process_control_timeout: float = default("process_control_timeout")
    emergency_restart_threshold: int = default("emergency_restart_threshold")
    emergency_restart_interval: float = default("emergency_restart_interval")
    systemd_interval: float = default("systemd_interval")
    #: The file the settings came from, "<command line>" or "fcgi.serve()".
    source: str = "<command line>"
    origins: dict[str, str] = field(default_factory=dict, repr=False, compare=False)
    layers: dict[str, int] = field(default_factory=dict, repr=False, compare=False)
    invalid: set[str] = field(default_factory=set, repr=False, compare=False)


Target = PoolConfig | MasterConfig


def apply_values(
    target: Target,
    values: Mapping[str, tuple[object, str]],
    problems: list[str],
    layer: int = COMMAND,
) -> None:
    """Read each ``name: (raw value, origin)`` onto ``target``; a bad value is a problem.

    ``origin`` names where the value came from in messages (``--max-children``,
    ``FILE:3 [pool.www] max_children``).
    """
    for key, (raw, origin) in values.items():
        setting = SETTINGS[key]
        try:
            value = None if raw is None and setting.default is None else parse_value(setting, raw)
        except ValueError as exc:
            problems.append(f"{origin}: {exc}")
            target.invalid.add(key)
            continue
        target.invalid.discard(key)
        setattr(target, key, value)
        target.origins[key] = origin
        target.layers[key] = layer


def _suggest(key: str, names: Iterable[str]) -> str:
    """`` (did you mean max_children?)`` for a near miss, else nothing."""
    close = difflib.get_close_matches(key, sorted(names), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


# -- reading the file --------------------------------------------------------------------

#: What a pool name may be made of: it goes into log lines, the status page,
#: process titles and file names, so nothing that needs quoting or escaping.
_POOL_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_HEADER = re.compile(r"\s*\[\s*([^\[\]]+?)\s*\](?:\s*#.*)?\s*$")


def _table_lines(text: str) -> dict[tuple[tuple[str, ...], str], int]:
    """(table, key) -> line number of its first assignment, found by scanning the text.

    Good enough for messages: simple ``key = value`` lines under ``[table]``
    headers; anything fancier (dotted keys, inline tables) gets no line.
    """
    found: dict[tuple[tuple[str, ...], str], int] = {}
    table: tuple[str, ...] = ()
    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER.match(line)
        if header:
            table = tuple(part.strip().strip("\"'") for part in header.group(1).split("."))
            continue
        m = re.match(r"\s*([\"']?)([A-Za-z0-9_-]+)\1\s*=", line)
        if m:
            found.setdefault((table, m.group(2)), number)
    return found


class _Reader:
    """One file's settings, each named by file, line, table and key."""

    def __init__(self, path: str, text: str, problems: list[str]) -> None:
        self.path = path
        self.lines = _table_lines(text)
        self.problems = problems

    def where(self, table: tuple[str, ...], key: str) -> str:
        line = self.lines.get((table, key))
        place = f"{self.path}:{line}" if line else self.path
        label = "[" + ".".join(table) + "] " if table else ""
        return f"{place} {label}{key}"

    def unknown(self, table: tuple[str, ...], key: str, allowed: frozenset[str]) -> None:
        if key in POOL_KEYS:
            hint = " (a pool setting: put it in [pool.NAME] or at the top level)"
        elif key in GLOBAL_KEYS:
            hint = " (a [global] setting, not a pool's)"
        else:
            hint = _suggest(key, allowed)
        self.problems.append(f"{self.where(table, key)}: unknown setting{hint}")

    def values(
        self, table: tuple[str, ...], data: Mapping[str, Any], allowed: frozenset[str]
    ) -> dict[str, tuple[object, str]]:
        out: dict[str, tuple[object, str]] = {}
        for key, value in data.items():
            if key in allowed:
                out[key] = (value, self.where(table, key))
            else:
                self.unknown(table, key, allowed)
        return out


def config_from_mapping(
    data: Mapping[str, Any], source: str, problems: list[str], text: str = ""
) -> MasterConfig:
    """A MasterConfig from parsed TOML; problems are appended, cross-checks not made."""
    reader = _Reader(source, text, problems)
    config = MasterConfig(source=source)
    shared: dict[str, tuple[object, str]] = {}
    for key, value in data.items():
        if key == "global":
            if isinstance(value, dict):
                apply_values(config, reader.values(("global",), value, GLOBAL_KEYS), problems, FILE)
            else:
                problems.append(f"{source}: [global] must be a table")
        elif key == "pool":
            continue
        elif key in GLOBAL_KEYS:
            apply_values(config, {key: (value, reader.where((), key))}, problems, FILE)
        elif key in POOL_KEYS:
            shared[key] = (value, reader.where((), key))
        else:
            reader.unknown((), key, POOL_KEYS | GLOBAL_KEYS | {"global", "pool"})
    pools = data.get("pool", {})
    if not isinstance(pools, dict):
        problems.append(f"{source}: pool must be a set of [pool.NAME] tables")
        pools = {}
    for name, table in pools.items():
        if not _POOL_NAME.fullmatch(name):
            # Shown escaped: the name goes into every line about the pool,
            # and a line break in it would start a line of its own.
            problems.append(
                f"{source}: [pool.{escape(name)}]: a pool name is letters, digits, "
                "'-', '_' and '.'"
            )
            continue
        if not isinstance(table, dict):
            problems.append(f"{source}: pool.{name} must be a table")
            continue
        pool = PoolConfig(name=name)
        apply_values(pool, shared, problems, SHARED)
        apply_values(pool, reader.values(("pool", name), table, POOL_KEYS), problems, FILE)
        config.pools.append(pool)
    if not pools and shared:
        pool = PoolConfig()
        apply_values(pool, shared, problems, FILE)
        config.pools.append(pool)
    if shared and pools:
        # A top-level key with a bad value is reported once, not once per pool.
        problems[:] = list(dict.fromkeys(problems))
    return config


def read_config(path: str, problems: list[str]) -> MasterConfig:
    """The file's settings; every problem with a value is appended to ``problems``."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    text = raw.decode("utf-8", "replace")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return config_from_mapping(data, path, problems, text)


def load_config(path: str, *, validate: bool = True) -> MasterConfig:
    """Read (and validate) a TOML configuration file; raise every problem at once."""
    problems: list[str] = []
    config = read_config(path, problems)
    if validate:
        validate_master(config, problems)
    if problems:
        raise ConfigErrors(problems)
    return config


# -- checks across settings --------------------------------------------------------------


def where(config: MasterConfig, target: Target, key: str) -> str:
    """How messages name ``key``: where it was given, else where it would be."""
    if key in target.origins:
        return target.origins[key]
    if config.source == "<command line>":
        return "MODULE:APP" if key == "app" else SETTINGS[key].flag
    if config.source == "fcgi.serve()":
        return "fcgi.serve(bind=)" if key == "listen" else f"fcgi.serve({key}=)"
    table = f"[pool.{target.name}]" if isinstance(target, PoolConfig) else "[global]"
    return f"{config.source} {table} {key}"


def _as_given(config: MasterConfig, key: str, value: object) -> str:
    """``--pm static`` on the command line, ``pm = "static"`` elsewhere."""
    if value is None:
        return f"{key} unset"
    if config.source == "<command line>":
        return f"{SETTINGS[key].flag} {value}"
    if config.source == "fcgi.serve()":
        return f"{key}={value!r}"
    return f"{key} = {toml_value(SETTINGS[key], value)}"


def _given(target: Target, key: str) -> bool:
    """Set by the user: given somewhere, or (built in Python) not the default."""
    return key in target.origins or getattr(target, key) != default(key)


def _table_checks(
    config: MasterConfig, target: Target, keys: frozenset[str], out: list[str]
) -> None:
    """Each value against its own rule, and each setting against its mode."""
    for setting in SETTINGS.values():
        key = setting.name
        if key not in keys or key in target.invalid:
            continue
        why = check_value(setting, getattr(target, key))
        if why:
            out.append(f"{where(config, target, key)}: {why}")
        if setting.only_when and _given(target, key):
            holds = [getattr(target, other) in values for other, values in setting.only_when]
            layer = target.layers.get(key, COMMAND)
            deciding = max(target.layers.get(other, -1) for other, _ in setting.only_when)
            if not any(holds) and layer >= FILE and layer >= deciding:
                wanted = " or ".join(
                    _as_given(config, other, "|".join(values))
                    for other, values in setting.only_when
                )
                now = ", ".join(
                    _as_given(config, other, getattr(target, other))
                    for other, _ in setting.only_when
                )
                out.append(
                    f"{where(config, target, key)}: does nothing with {now} (only with {wanted})"
                )


def _derive_spares(config: MasterConfig, pool: PoolConfig, out: list[str]) -> None:
    """pm = dynamic: fill the unset spare settings from the set ones, as PHP-FPM does.

    ``--max-children 2`` alone must not fail on a ``max_spare_servers``
    default of 3 the user never wrote: unset values give way to set ones, and
    only settings the user gave can contradict each other.
    """
    keys = ("max_children", "min_spare_servers", "max_spare_servers", "start_servers")
    if any(key in pool.invalid for key in keys):
        return
    most = pool.max_children
    min_given = _given(pool, "min_spare_servers")
    max_given = _given(pool, "max_spare_servers")
    if not max_given:
        floor = pool.min_spare_servers if min_given else 0
        pool.max_spare_servers = min(max(default("max_spare_servers"), floor), most)
    if not min_given:
        pool.min_spare_servers = min(default("min_spare_servers"), pool.max_spare_servers)

    def w(key: str) -> str:
        return where(config, pool, key)

    low, high = pool.min_spare_servers, pool.max_spare_servers
    if max_given and high > most:
        out.append(f"{w('max_spare_servers')}: ({high}) must not exceed max_children ({most})")
    elif low > high:
        if max_given:
            out.append(
                f"{w('max_spare_servers')}: ({high}) must not be below min_spare_servers ({low})"
            )
        else:
            out.append(f"{w('min_spare_servers')}: ({low}) must not exceed max_children ({most})")
    elif pool.start_servers is not None and not low <= pool.start_servers <= high:
        out.append(
            f"{w('start_servers')}: ({pool.start_servers}) must lie between "
            f"min_spare_servers ({low}) and max_spare_servers ({high})"
        )


def validate_pool(
    config: MasterConfig, pool: PoolConfig, out: list[str], *, single: bool = False
) -> None:
    """Cross-field checks (PHP-FPM's fpm_conf_process_all_pools, roughly).

    ``single``: the pool describes the single-process server, which needs no
    app name (it has the object), no address (fd 0 will do) and no user.
    """

    def w(key: str) -> str:
        return where(config, pool, key)

    _table_checks(config, pool, POOL_KEYS, out)
    if pool.app_object is None and not single:
        if not pool.app:
            out.append(f"{w('app')}: missing (expected MODULE or MODULE:APP)")
        elif pool.app.startswith(":") or pool.app.endswith(":"):
            out.append(
                f"{w('app')}: expected MODULE, MODULE:APP or MODULE:factory(), got {pool.app!r}"
            )
    elif pool.app_object is not None and not callable(pool.app_object):
        out.append(f"{w('app')}: {type(pool.app_object).__name__} object is not callable")
    if not pool.listen and not single and "listen" not in pool.invalid:
        out.append(f"{w('listen')}: missing (expected unix:/path or HOST:PORT)")
    if pool.pm == "dynamic" and not single:
        _derive_spares(config, pool, out)
    if "access_format" not in pool.invalid:
        try:
            # Here, not in the worker: an ondemand pool has no worker until traffic.
            compile_format(pool.access_format)
        except ConfigError as exc:
            out.append(f"{w('access_format')}: {exc}")
    if "listen_allowed_clients" not in pool.invalid:
        try:
            # Here, not first in each worker, which would crash at start.
            parse_allowed_clients(pool.listen_allowed_clients)
        except ConfigError as exc:
            out.append(f"{w('listen_allowed_clients')}: {exc}")
    if pool.request_slowlog_timeout and pool.slowlog is None:
        pool.slowlog = "-"  # stderr, i.e. the master's log
    if not single and pool.user is None and os.geteuid() == 0:
        out.append(
            f"{w('user')}: the master runs as root: name the user the workers run as "
            '(user = "www-data" in the file or --user www-data; user = "root" / '
            "--user root if you really mean it)"
        )


def validate_master(
    config: MasterConfig, problems: list[str] | None = None, *, single: bool = False
) -> None:
    """Every check; problems are appended to ``problems``, or raised together if None."""
    out: list[str] = [] if problems is None else problems
    source = config.source
    _table_checks(config, config, GLOBAL_KEYS, out)
    if not config.pools:
        out.append(f"{source}: no pool defined (add a [pool.NAME] table)")
    names = [p.name for p in config.pools]
    if len(set(names)) != len(names):
        out.append(f"{source}: pool names must be unique, got {names}")
    seen: dict[str, str] = {}
    for pool in config.pools:
        validate_pool(config, pool, out, single=single)
        for spec in pool.listen:
            # By address: "uwsgi:unix:/x" and "unix:/x" are one socket.
            address = _address(spec)
            if address in seen:
                out.append(
                    f"{where(config, pool, 'listen')}: {spec!r} is already used by "
                    f"pool {seen[address]!r}"
                )
            seen[address] = pool.name
    if problems is None and out:
        raise ConfigErrors(out)


def _address(spec: str) -> str:
    """Where ``spec`` listens, without its protocol (itself if it does not parse)."""
    try:
        return str(parse_bind(spec))
    except ConfigError:
        return spec  # the listen check words the problem


# -- writing it back ---------------------------------------------------------------------


def _lines(target: Target, keys: frozenset[str]) -> list[str]:
    lines = []
    for setting in SETTINGS.values():
        key = setting.name
        if key not in keys:
            continue
        value = getattr(target, key)
        if isinstance(target, PoolConfig) and key == "start_servers" and target.pm == "dynamic":
            value = target.effective_start_servers
        if value is None or (key == "app" and not value):
            lines.append(f"# {key} (unset)")
            continue
        line = f"{key} = {toml_value(setting, value)}"
        if setting.only_when and not any(
            getattr(target, other) in values for other, values in setting.only_when
        ):
            modes = " or ".join(f"{other} = {'|'.join(v)}" for other, v in setting.only_when)
            line = f"# {line}  (used only with {modes})"
        lines.append(line)
    return lines


def format_toml(config: MasterConfig) -> str:
    """The effective settings as TOML that reads back to the same settings.

    Unset values and settings the chosen mode does not use are comments, so
    feeding the output to ``fcgi serve --config`` or ``fcgi check-config``
    gives the same configuration, and the same output again.
    """
    out = ["[global]", *_lines(config, GLOBAL_KEYS)]
    for pool in config.pools:
        out += ["", f"[pool.{_pool_name(pool.name)}]", *_lines(pool, POOL_KEYS)]
    return "\n".join(out) + "\n"


def _pool_name(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else toml_value(SETTINGS["app"], name)
