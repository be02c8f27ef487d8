"""Every setting of fcgi, declared once: the table everything else is derived from.

One :class:`Setting` per knob says its name, kind, default, check, help, where
it applies and what PHP-FPM or gunicorn call it. From :data:`SETTINGS` come:

* the defaults of :class:`fcgi.pool.config.PoolConfig`, ``MasterConfig`` and
  :class:`fcgi.options.ServerOptions` (each field's default is read here);
* the TOML reader (which keys exist, in which table, and how a value is read);
* the ``fcgi serve`` flags (``listen`` -> ``--listen``, with ``--help``
  showing each default and choice);
* the keyword arguments of :func:`fcgi.serve` (a test holds its signature to
  this table: mypy needs them written out);
* the README's settings reference (:func:`markdown`; regenerate it with
  ``python -m fcgi.settings --update-readme README.md``, a test fails while
  the README and this table disagree).

Values are read the way PHP-FPM and systemd write them, in the file as on
the command line: sizes ``512M``, ``1.5G`` or bytes; durations ``30``, ``30s``,
``1m30s``, ``2h``, ``500ms``. This module knows nothing of pools or sockets:
it only declares and converts, so everything else may import it.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from fcgi.errors import ConfigError
from fcgi.sockets import FASTCGI, parse_bind

Kind = Literal["int", "seconds", "size", "bool", "str", "choice", "list", "table", "mode"]
Scope = Literal["global", "pool"]


@dataclass(frozen=True, slots=True)
class Setting:
    """One knob: everything the reader, the flags, the docs and the checks need."""

    name: str
    kind: Kind
    #: The built-in value; None means unset (the setting is off or derived).
    default: Any
    #: One line for ``--help`` and the README.
    help: str
    #: "global": the master's ``[global]`` table; "pool": a ``[pool.NAME]`` table.
    scope: Scope
    #: True if the setting only means something with several processes (or is
    #: implemented only by the master so far): giving it starts a master.
    master: bool = False
    #: The values a "choice" accepts.
    choices: tuple[str, ...] = ()
    #: A rule from :data:`CHECKS` the value must pass (None: any value of its kind).
    check: str | None = None
    #: The PHP-FPM directive, and the gunicorn setting, this one corresponds to.
    php: str = ""
    gunicorn: str = ""
    #: Other flags for it (kept from earlier releases, or shorter).
    aliases: tuple[str, ...] = ()
    #: For "list": a string holds several comma-separated items.
    commas: bool = False
    #: Pool settings that only act under some values of other settings: the
    #: setting given while none holds is an error ("does nothing"). Any one
    #: ``(setting, values)`` pair holding is enough.
    only_when: tuple[tuple[str, tuple[str, ...]], ...] = ()
    #: How the README and ``--help`` show an unset default (None: "unset").
    unset_means: str = ""
    #: The metavar of the flag.
    metavar: str = ""

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def flags(self) -> tuple[str, ...]:
        return (self.flag, *self.aliases)


#: Checks by name: each returns None if the value passes, else why not.
CHECKS: dict[str, Callable[[Any], str | None]] = {
    "positive": lambda v: None if v > 0 else f"must be positive, got {_show(v)}",
    "not negative": lambda v: None if v >= 0 else f"must not be negative, got {_show(v)}",
    "at least 1": lambda v: None if v >= 1 else f"must be at least 1, got {_show(v)}",
    "url path": lambda v: None if v.startswith("/") else f"must start with '/', got {v!r}",
    "mount point": lambda v: (
        None if v == "" or v.startswith("/") else f"must be empty or start with '/', got {v!r}"
    ),
    "mode": lambda v: None if 0 <= v <= 0o7777 else f"must be a file mode, got {v:o}",
    "backlog": lambda v: (
        None if 0 <= v <= _C_INT_MAX else f"must lie between 0 and {_C_INT_MAX}, got {_show(v)}"
    ),
    "workers": lambda v: (
        None
        if 1 <= v <= MAX_WORKERS
        else f"must lie between 1 and {MAX_WORKERS}, got {_show(v)}"
    ),
    "bind specs": lambda v: "; ".join(filter(None, map(_bind_problem, v))) or None,
    "fastcgi address": lambda v: _bind_problem(v, fastcgi_only=True),
}
#: listen(2) takes a C int (the kernel then caps it at net.core.somaxconn).
_C_INT_MAX = 2**31 - 1
#: Most workers one pool may have: its scoreboard is allocated for twice as
#: many slots up front, and a typo of a few zeros must be refused before the
#: master asks for gigabytes, not with an allocation failure.
MAX_WORKERS = 10_000

_TRIO = (("worker", ("trio",)),)
_CONCURRENT = (("worker", ("trio", "asyncio")), ("interface", ("asgi",)))
_DYNAMIC = (("pm", ("dynamic",)),)
_ONDEMAND = (("pm", ("ondemand",)),)
_SYSLOG = (("error_log", ("syslog",)),)

#: PHP-FPM's syslog.facility values.
SYSLOG_FACILITIES = (
    "auth", "authpriv", "cron", "daemon", "ftp", "kern", "lpr", "mail", "news", "syslog",
    "user", "uucp", *(f"local{i}" for i in range(8)),
)  # fmt: skip

#: Kept apart so the access log module and the table agree on one string:
#: PHP-FPM's default access.format plus the duration in milliseconds, the
#: figure an operator reads the access log for first.
DEFAULT_ACCESS_FORMAT = '%R - %u %t "%m %r" %s %{milli}d'


def _pool(name: str, kind: Kind, default: Any, help: str, **kw: Any) -> Setting:
    return Setting(name, kind, default, help, "pool", **kw)


def _global(name: str, kind: Kind, default: Any, help: str, **kw: Any) -> Setting:
    return Setting(name, kind, default, help, "global", master=kw.pop("master", True), **kw)


_TABLE: tuple[Setting, ...] = (
    # -- global (the master) ------------------------------------------------------------
    _global("error_log", "str", None, "master log: a file, '-' for stderr, or 'syslog'",
            php="error_log", gunicorn="errorlog", unset_means="stderr", metavar="FILE",
            master=False),
    _global("log_level", "choice", "info", "least severe level logged",
            choices=("debug", "info", "notice", "warning", "error", "critical"),
            php="log_level", gunicorn="loglevel", master=False),
    _global("log_config", "str", None,
            "logging.config.dictConfig file (JSON or TOML) replacing the built-in setup",
            gunicorn="logconfig_dict", metavar="FILE", master=False),
    _global("syslog_facility", "choice", "daemon", "syslog facility (error_log = syslog)",
            choices=SYSLOG_FACILITIES, php="syslog.facility", gunicorn="syslog_facility",
            only_when=_SYSLOG, master=False),
    _global("syslog_ident", "str", "fcgi", "syslog program name (error_log = syslog)",
            php="syslog.ident", gunicorn="syslog_prefix", only_when=_SYSLOG, metavar="NAME",
            master=False),
    _global("pid_file", "str", None, "write the master's pid to this file",
            php="pid", gunicorn="pidfile", metavar="FILE"),
    _global("process_control_timeout", "seconds", 30.0,
            "time workers get to finish their requests on a graceful stop or reload",
            check="not negative", php="process_control_timeout", gunicorn="graceful_timeout"),
    _global("emergency_restart_threshold", "int", 0,
            "workers killed by SIGSEGV or SIGBUS within emergency_restart_interval that "
            "reload the pools (0: off)",
            check="not negative", php="emergency_restart_threshold"),
    _global("emergency_restart_interval", "seconds", 60.0,
            "the window emergency_restart_threshold counts in",
            check="not negative", php="emergency_restart_interval"),
    _global("systemd_interval", "seconds", 10.0,
            "time between STATUS= updates to systemd (0: only on changes)",
            check="not negative", php="systemd_interval"),
    # -- pool: what runs and where it listens --------------------------------------------
    _pool("app", "str", "", "the app: MODULE, MODULE:APP or MODULE:factory()",
          gunicorn="wsgi_app", unset_means="the MODULE:APP argument", metavar="MODULE:APP"),
    _pool("listen", "list", (), "address to listen on (repeatable): unix:/path, HOST:PORT, "
          "[V6]:PORT, PORT or fd://N for FastCGI; prefixed uwsgi: or scgi: "
          "(uwsgi:unix:/run/app.sock) for those protocols", check="bind specs", php="listen",
          gunicorn="bind", aliases=("--bind", "-b"),
          unset_means="the socket on fd 0 (single process)", metavar="ADDR"),
    _pool("listen_backlog", "int", 511, "listen queue length", check="backlog",
          php="listen.backlog", gunicorn="backlog", aliases=("--backlog",)),
    _pool("listen_owner", "str", None, "owner of unix sockets", master=True,
          php="listen.owner", unset_means="the master's user", metavar="USER"),
    _pool("listen_group", "str", None, "group of unix sockets", master=True,
          php="listen.group", unset_means="the master's group", metavar="GROUP"),
    _pool("listen_mode", "mode", 0o660, "file mode of unix sockets", check="mode",
          php="listen.mode", aliases=("--socket-mode",)),
    _pool("listen_allowed_clients", "list", (),
          "TCP peers allowed to connect, comma-separated addresses or networks",
          php="listen.allowed_clients", aliases=("--allowed-clients",), commas=True,
          unset_means="any", metavar="ADDRS"),
    _pool("worker", "choice", "sync",
          "sync: one request at a time per process (WSGI); asyncio: many at once, ASGI "
          "apps only, on uvloop if installed (ASGI apps get it); trio: many at once",
          choices=("sync", "trio", "asyncio"), gunicorn="worker_class"),
    _pool("interface", "choice", "auto", "the app's interface (auto: detect)",
          choices=("auto", "wsgi", "asgi")),
    _pool("chdir", "str", None, "directory to change to before importing the app",
          php="chdir", gunicorn="chdir", metavar="DIR"),
    # -- pool: process manager ------------------------------------------------------------
    _pool("pm", "choice", "dynamic", "how the number of workers is managed",
          choices=("static", "dynamic", "ondemand"), master=True, php="pm"),
    _pool("max_children", "int", 5, "most workers at once", check="workers", master=True,
          php="pm.max_children", gunicorn="workers"),
    _pool("start_servers", "int", None, "workers started with the pool (pm = dynamic)",
          check="at least 1", master=True, php="pm.start_servers", only_when=_DYNAMIC,
          unset_means="min_spare_servers + (max_spare_servers - min_spare_servers) / 2"),
    _pool("min_spare_servers", "int", 1, "fewest idle workers (pm = dynamic)",
          check="at least 1", master=True, php="pm.min_spare_servers", only_when=_DYNAMIC),
    _pool("max_spare_servers", "int", 3,
          "most idle workers (pm = dynamic); lowered to max_children if unset",
          check="at least 1", master=True, php="pm.max_spare_servers", only_when=_DYNAMIC),
    _pool("max_spawn_rate", "int", 32, "most workers forked per second (pm = dynamic)",
          check="at least 1", master=True, php="pm.max_spawn_rate", only_when=_DYNAMIC),
    _pool("process_idle_timeout", "seconds", 10.0,
          "idle time after which a worker exits (pm = ondemand)", check="positive",
          master=True, php="pm.process_idle_timeout", only_when=_ONDEMAND),
    _pool("max_requests", "int", 0, "requests after which a worker is replaced (0: never)",
          check="not negative", master=True, php="pm.max_requests", gunicorn="max_requests"),
    _pool("max_requests_jitter", "int", 0, "random extra requests per worker, spreads restarts",
          check="not negative", master=True, gunicorn="max_requests_jitter"),
    _pool("max_memory", "size", 0,
          "RSS above which a worker is replaced after its request (0: no limit)",
          check="not negative", master=True),
    _pool("request_terminate_timeout", "seconds", 0.0,
          "time after which a request's worker is killed (0: never)", check="not negative",
          master=True, php="request_terminate_timeout", gunicorn="timeout"),
    _pool("request_slowlog_timeout", "seconds", 0.0,
          "time after which a request's stack goes to the slowlog (0: never)",
          check="not negative", php="request_slowlog_timeout"),
    _pool("slowlog", "str", None, "file for slow requests' stacks ('-': the error log)",
          php="slowlog", unset_means="'-' when request_slowlog_timeout is set",
          metavar="FILE"),
    _pool("user", "str", None, "user the workers run as", master=True, php="user",
          gunicorn="user", unset_means="the master's user (refused for root)", metavar="USER"),
    _pool("group", "str", None, "group the workers run as", master=True, php="group",
          gunicorn="group", unset_means="the user's group", metavar="GROUP"),
    _pool("clear_env", "bool", False, "start workers with an empty environment (plus env)",
          master=True, php="clear_env"),
    _pool("env", "table", {}, "NAME=VALUE set in the workers' environment (repeatable)",
          master=True, php="env[NAME]", gunicorn="raw_env", metavar="NAME=VALUE"),
    _pool("catch_workers_output", "bool", False,
          "send the workers' stdout and stderr to the error log", master=True,
          php="catch_workers_output", gunicorn="capture_output"),
    _pool("preload_app", "bool", False, "import the app once in the master, before forking",
          master=True, gunicorn="preload_app"),
    # -- pool: logs and status ------------------------------------------------------------
    # Served by the single process too (its scoreboard of one); status_listen
    # is a socket of the master's own.
    _pool("access_log", "str", None, "access log file ('-': stderr)",
          php="access.log", gunicorn="accesslog", unset_means="no access log", metavar="FILE"),
    _pool("access_format", "str", DEFAULT_ACCESS_FORMAT, "access log line format",
          php="access.format", gunicorn="access_log_format", metavar="FORMAT"),
    _pool("status_path", "str", None, "path answered with the status page, e.g. /status",
          check="url path", php="pm.status_path", metavar="PATH"),
    _pool("ping_path", "str", None, "path answered with ping_response, e.g. /ping",
          check="url path", php="ping.path", metavar="PATH"),
    _pool("ping_response", "str", "pong", "body of the ping answer",
          php="ping.response", metavar="TEXT"),
    _pool("status_listen", "str", None, "extra address answered by the master with the status "
          "page (over FastCGI)", check="fastcgi address", master=True, php="pm.status_listen",
          metavar="ADDR"),
    _pool("status_full_query", "bool", False,
          "show query strings in the status page's ?full list"),
    # -- pool: each worker's limits (ServerOptions) ---------------------------------------
    _pool("read_timeout", "seconds", 30.0,
          "time a connection may stay silent before it is closed", check="positive",
          gunicorn="keepalive"),
    _pool("request_header_timeout", "seconds", 5.0,
          "time a new connection has to send its whole request head", check="positive"),
    _pool("send_timeout", "seconds", 60.0,
          "total time one response may wait for the web server to read it", check="positive"),
    _pool("script_name", "str", None, "mount point of the app (SCRIPT_NAME)",
          check="mount point", unset_means="derived from the web server's params",
          metavar="PATH"),
    _pool("max_params", "int", 1000,
          "most request variables per request (FastCGI params, uwsgi vars, SCGI headers)",
          check="at least 1", gunicorn="limit_request_fields"),
    _pool("max_params_bytes", "size", 256 * 1024,
          "largest request head (FastCGI PARAMS stream, uwsgi vars block, SCGI header block)",
          check="at least 1"),
    _pool("max_body_size", "size", 512 * 1024 * 1024,
          "largest request body; larger ones get 413 (0: no limit)", check="not negative"),
    _pool("threads", "int", 10, "trio worker: threads running WSGI requests at once",
          check="at least 1", gunicorn="threads", only_when=_TRIO),
    _pool("max_conns", "int", 256, "trio and asyncio workers: most connections at once",
          check="at least 1", gunicorn="worker_connections", only_when=_CONCURRENT),
    _pool("max_reqs", "int", 256, "trio and asyncio workers: most requests in progress at once",
          check="at least 1", only_when=_CONCURRENT),
)  # fmt: skip

#: Every setting by name, in the table's order.
SETTINGS: dict[str, Setting] = {s.name: s for s in _TABLE}
GLOBAL_KEYS = frozenset(s.name for s in _TABLE if s.scope == "global")
POOL_KEYS = frozenset(s.name for s in _TABLE if s.scope == "pool")


def default(name: str) -> Any:
    """The built-in value of a setting (a fresh copy for a table)."""
    value = SETTINGS[name].default
    return dict(value) if isinstance(value, dict) else value


# -- reading values ----------------------------------------------------------------------

_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_SIZE = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)
_SECONDS = {
    "ms": 0.001, "msec": 0.001, "": 1.0, "s": 1.0, "sec": 1.0, "second": 1.0,
    "seconds": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
}  # fmt: skip
_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-z]*)", re.IGNORECASE)
_MODE = re.compile(r"0?o?([0-7]{3,4})")
_TRUE = ("yes", "true", "on", "1")
_FALSE = ("no", "false", "off", "0")


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_size(value: object) -> int:
    """``1048576``, ``"512M"``, ``"1.5G"``, ``"64k"`` -> bytes (K, M, G, T are powers of 1024)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        m = _SIZE.fullmatch(value.strip())
        if m:
            return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    raise ValueError(f"expected a size such as 512M, 1.5G or 1048576, got {value!r}")


def parse_seconds(value: object) -> float:
    """``30``, ``"30s"``, ``"1m30s"``, ``"2h"``, ``"500ms"`` -> seconds, as systemd reads them."""
    if _number(value):
        return float(value)  # type: ignore[arg-type]
    if isinstance(value, str) and value.strip():
        text, pos, total = value.strip(), 0, 0.0
        while pos < len(text):
            m = _DURATION_PART.match(text, pos)
            unit = m.group(2).lower() if m else None
            # A bare number only on its own: "1m30" is a typo, not 90 seconds.
            if m is None or unit not in _SECONDS or (unit == "" and (pos or m.end() < len(text))):
                break
            total += float(m.group(1)) * _SECONDS[unit]
            pos = m.end()
        else:
            return total
    raise ValueError(f"expected a duration such as 30, 30s, 1m30s, 2h or 500ms, got {value!r}")


def parse_value(setting: Setting, value: object) -> Any:
    """Convert a value from TOML, a flag or a keyword to the setting's type.

    Raises ValueError with the reason; range checks (:func:`check_value`)
    come after, so one message says one thing.
    """
    kind = setting.kind
    if kind == "size":
        return parse_size(value)
    if kind == "seconds":
        return parse_seconds(value)
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
            return int(value)
        raise ValueError(f"expected an integer, got {value!r}")
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
        raise ValueError(f"expected true or false, got {value!r}")
    if kind == "mode":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            m = _MODE.fullmatch(value.strip())
            if m:
                return int(m.group(1), 8)
        raise ValueError(f'expected an octal file mode such as "0660", got {value!r}')
    if kind == "choice":
        if isinstance(value, str):
            return value.lower()
        raise ValueError(f"expected one of {', '.join(setting.choices)}, got {value!r}")
    if kind == "str":
        if isinstance(value, str):
            if value == "" and setting.default is None and setting.check != "mount point":
                raise ValueError("must not be empty (leave it out to keep it unset)")
            return value
        raise ValueError(f"expected a string, got {value!r}")
    if kind == "list":
        items = [value] if isinstance(value, str) else value
        if isinstance(items, list | tuple) and all(isinstance(v, str) for v in items):
            if setting.commas:
                items = [part.strip() for item in items for part in item.split(",")]
            return tuple(item for item in items if item)
        raise ValueError(f"expected a string or a list of strings, got {value!r}")
    if kind == "table":
        return _parse_table(value)
    raise AssertionError(kind)  # pragma: no cover


def _parse_table(value: object) -> dict[str, str]:
    """A TOML table, or ``NAME=VALUE`` strings (from repeated flags)."""
    if isinstance(value, Mapping):
        if all(isinstance(v, str) or _number(v) for v in value.values()):
            return {str(k): str(v) for k, v in value.items()}
    elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        out: dict[str, str] = {}
        for item in value:
            name, eq, text = item.partition("=")
            if not eq or not name:
                raise ValueError(f"expected NAME=VALUE, got {item!r}")
            out[name] = text
        return out
    raise ValueError(f'expected a table of NAME = "value", got {value!r}')


def check_value(setting: Setting, value: Any) -> str | None:
    """Why a converted value is not acceptable (None: it is)."""
    if value is None:
        return None
    if setting.choices and value not in setting.choices:
        return f"expected one of {', '.join(setting.choices)}, got {value!r}"
    if setting.check is not None:
        return CHECKS[setting.check](value)
    return None


class ConfigErrors(ConfigError):
    """Every problem found, one line each (``str()`` joins them with newlines)."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def resolve(values: Mapping[str, object], origin: Callable[[str], str]) -> dict[str, Any]:
    """Each setting read and checked (None: its default); raise every problem at once.

    ``origin(name)`` says how messages name a setting (``fcgi.serve(threads=)``).
    """
    out: dict[str, Any] = {}
    problems = []
    for name, raw in values.items():
        setting = SETTINGS[name]
        if raw is None:
            out[name] = default(name)
            continue
        try:
            value = parse_value(setting, raw)
        except ValueError as exc:
            problems.append(f"{origin(name)}: {exc}")
            continue
        why = check_value(setting, value)
        if why:
            problems.append(f"{origin(name)}: {why}")
        out[name] = value
    if problems:
        raise ConfigErrors(problems)
    return out


# -- showing values ----------------------------------------------------------------------


def _bind_problem(spec: str, fastcgi_only: bool = False) -> str | None:
    """Why ``spec`` is no bind spec (an unknown protocol prefix, a bad port...), if it is not.

    Checked with the rest of the configuration, so ``fcgi check-config``
    refuses it, not the start. ``fastcgi_only``: the master answers that
    address itself, over FastCGI (status_listen).
    """
    try:
        protocol = parse_bind(spec).protocol
    except ConfigError as exc:
        return str(exc)
    if fastcgi_only and protocol != FASTCGI:
        return f"the master answers it over FastCGI only, got {spec!r}"
    return None


def _show(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def format_size(value: int) -> str:
    """Bytes as the largest exact unit (``536870912`` -> ``512M``)."""
    for unit, factor in sorted(_UNITS.items(), key=lambda item: -item[1]):
        if factor > 1 and value and value % factor == 0:
            return f"{value // factor}{unit.upper()}"
    return str(value)


def show_default(setting: Setting) -> str:
    """The default as an operator writes it (``512M``, ``0660``, ``30s``)."""
    value = setting.default
    if value is None or value in ("", (), {}):
        return setting.unset_means or "unset"
    if setting.kind == "size":
        return format_size(value)
    if setting.kind == "mode":
        return f"{value:04o}"
    if setting.kind == "seconds":
        return f"{_show(value)}s"
    if setting.kind == "bool":
        return "true" if value else "false"
    return str(value)


def toml_value(setting: Setting, value: Any) -> str:
    """A value as a TOML literal that reads back to the same value."""
    if setting.kind == "size":
        text = format_size(value)
        return str(value) if text == str(value) else f'"{text}"'
    if setting.kind == "mode":
        return f'"{value:04o}"'
    if setting.kind == "seconds":
        return _show(value) if math.isfinite(value) else f'"{value}"'
    return _literal(value)


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{_key(k)} = {_literal(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    raise TypeError(f"no TOML literal for {value!r}")  # pragma: no cover


def _string(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's, except \\/ which JSON never writes)."""
    return json.dumps(text)


def _key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else _string(name)


# -- the README reference ------------------------------------------------------------------

BEGIN = "<!-- settings:begin -->"
END = "<!-- settings:end -->"


#: How the README names each kind.
_KIND_NAMES = {
    "int": "integer", "seconds": "duration", "size": "size", "bool": "boolean",
    "str": "string", "choice": "choice", "list": "list", "table": "table", "mode": "octal mode",
}  # fmt: skip


def markdown() -> str:
    """The README's settings reference: one row per setting, in the table's order."""
    lines = [
        "Every key is also a flag of the same name (`listen_mode` is `--listen-mode`); "
        "a flag given on the command line overrides the file. Sizes read as `512M`, "
        "`1.5G` or bytes; durations as `30`, `30s`, `1m30s`, `2h` or `500ms`. "
        'Scope "pool, master" means the setting needs several processes: giving it '
        "starts a master.",
        "",
        "| Key | Flags | Kind | Default | Scope | PHP-FPM / gunicorn | Meaning |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in _TABLE:
        flags = ", ".join(f"`{f}`" for f in s.flags) if s.name != "app" else "`MODULE:APP`"
        if s.kind == "bool":
            flags += f", `--no-{s.flag[2:]}`"
        kind = _KIND_NAMES[s.kind] if not s.choices else " \\| ".join(s.choices)
        scope = ("[global]" if s.scope == "global" else "pool") + (", master" if s.master else "")
        names = " / ".join(f"`{n}`" if n else "-" for n in (s.php, s.gunicorn))
        default_text = show_default(s).replace("|", "\\|")
        if s.default not in (None, "", (), {}):
            default_text = f"`{default_text}`"
        meaning = s.help.replace("|", "\\|")
        lines.append(
            f"| `{s.name}` | {flags} | {kind} | {default_text} | {scope} | {names} | {meaning} |"
        )
    return "\n".join(lines) + "\n"


def update_readme(text: str) -> str:
    """``text`` with the block between :data:`BEGIN` and :data:`END` regenerated."""
    head, begin, rest = text.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"no {BEGIN} ... {END} block")
    return f"{head}{BEGIN}\n{markdown()}{END}{tail}"


def _main(argv: list[str]) -> int:
    """``python -m fcgi.settings --markdown`` | ``--update-readme README.md``."""
    if argv == ["--markdown"]:
        sys.stdout.write(markdown())
        return 0
    if len(argv) == 2 and argv[0] == "--update-readme":
        with open(argv[1], encoding="utf-8") as f:
            text = f.read()
        new = update_readme(text)
        if new != text:
            with open(argv[1], "w", encoding="utf-8") as f:
                f.write(new)
        return 0
    print("usage: python -m fcgi.settings --markdown | --update-readme README.md", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
