"""The command-line flags of every setting, and ``fcgi check-config``.

Every setting of :data:`fcgi.settings.SETTINGS` is a flag of the same name
(``max_children`` -> ``--max-children``, ``listen`` -> ``--listen``, also
``--bind``/``-b``); ``--workers N`` is a static pool of N; ``--config FILE``
reads a TOML file whose single pool the flags then override.

A flag given on the command line always wins over the file, even when its
value equals the default: the flags record what was typed (and under which
name, for messages) instead of filling in defaults, so "given" and "equal to
the default" are never confused.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from fcgi.errors import ConfigError
from fcgi.exit_codes import EXIT_OK, EXIT_USAGE
from fcgi.pool import preflight
from fcgi.pool.config import (
    ConfigErrors,
    MasterConfig,
    PoolConfig,
    apply_values,
    format_toml,
    load_config,
    read_config,
    validate_master,
)
from fcgi.settings import GLOBAL_KEYS, POOL_KEYS, SETTINGS, Setting, parse_value, show_default

#: More choices than this are listed in the help text, not in the usage line.
_LONG_CHOICES = 6

#: The namespace attribute holding what was given: name -> (value, flag used).
GIVEN = "given_settings"


class _Given(argparse.Action):
    """Record a setting's value and the flag it was given with; fill in no default."""

    def __init__(self, option_strings: Sequence[str], dest: str, setting: Setting, **kw: Any):
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, **kw)
        self.setting = setting

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        given: dict[str, tuple[object, str]] | None = getattr(namespace, GIVEN, None)
        if given is None:
            given = {}
            setattr(namespace, GIVEN, given)
        flag = option_string or self.setting.flag
        value: object = values
        if self.setting.kind == "bool":
            value = not flag.startswith("--no-")
        elif self.setting.kind in ("list", "table"):
            previous = given.get(self.setting.name)
            value = [*previous[0], values] if previous else [values]  # type: ignore[misc]
        given[self.setting.name] = (value, flag)


def _help(setting: Setting) -> str:
    text = f"{setting.help} (default: {show_default(setting)})"
    return text.replace("%", "%%")  # argparse formats help with %


def add_pool_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config``, ``--workers``, ``--print-config`` and every setting as a flag.

    Flags the parser already has are left to it (a caller's own ``--bind``
    is then read as ``listen`` by :func:`given_settings`).
    """
    existing = set(parser._option_string_actions)  # argparse keeps no public view
    general = parser.add_argument_group("configuration")
    if "--config" not in existing:
        general.add_argument("--config", metavar="FILE", help="TOML file with [pool.NAME] tables")
    if "--workers" not in existing:
        general.add_argument(
            "--workers",
            "-w",
            type=int,
            metavar="N",
            help="a static pool of N workers (--pm static --max-children N)",
        )
    if "--print-config" not in existing:
        general.add_argument(
            "--print-config",
            action="store_true",
            help="print the effective configuration as TOML (for --config) and exit",
        )
    groups = {
        ("pool", False): parser.add_argument_group("settings (single process and pool)"),
        ("pool", True): parser.add_argument_group("process manager (these start a master)"),
        ("global", False): parser.add_argument_group("logging"),
        ("global", True): parser.add_argument_group("master (these start a master)"),
    }
    for setting in SETTINGS.values():
        if setting.name == "app":
            continue  # the MODULE:APP argument
        strings = [flag for flag in setting.flags if flag not in existing]
        if setting.flag not in strings:
            continue
        kwargs: dict[str, Any] = {"setting": setting, "help": _help(setting)}
        if setting.kind == "bool":
            strings.append("--no-" + setting.flag[2:])
            kwargs["nargs"] = 0
        elif len(setting.choices) > _LONG_CHOICES:
            kwargs["metavar"] = setting.name.rsplit("_", 1)[-1].upper()
            kwargs["help"] = _help(setting).replace(
                " (default:", f" (one of {', '.join(setting.choices)}; default:"
            )
        elif setting.choices:
            kwargs["metavar"] = "{" + ",".join(setting.choices) + "}"
        else:
            kwargs["metavar"] = setting.metavar or _metavar(setting)
        group = groups[(setting.scope, setting.master)]
        group.add_argument(*strings, action=_Given, dest=f"setting_{setting.name}", **kwargs)


def _metavar(setting: Setting) -> str:
    return {"seconds": "DURATION", "size": "SIZE", "mode": "MODE", "int": "N"}.get(
        setting.kind, "VALUE"
    )


def given_settings(args: argparse.Namespace) -> dict[str, tuple[object, str]]:
    """The settings given on the command line: name -> (value, the flag used)."""
    given = dict(getattr(args, GIVEN, None) or {})
    app = getattr(args, "app", None)
    if app:
        given["app"] = (app, "MODULE:APP")
    bind = getattr(args, "bind", None)  # a host parser's own --bind
    if bind:
        earlier = given.get("listen", ([], ""))[0]
        given["listen"] = ([*bind, *earlier], "--bind")
    return given


def wants_master(args: argparse.Namespace) -> bool:
    """A file, ``--workers`` or any setting that needs several processes: run a master."""
    if getattr(args, "workers", None) is not None or getattr(args, "config", None):
        return True
    return any(SETTINGS[name].master for name in given_settings(args))


def config_from_args(args: argparse.Namespace, *, single: bool = False) -> MasterConfig:
    """The MasterConfig the command line asks for (file, then flags on top), validated.

    ``single``: the single-process server's settings (no app, address or user
    required). Every problem is raised together, as :class:`ConfigErrors`.
    """
    problems: list[str] = []
    given = given_settings(args)
    workers = getattr(args, "workers", None)
    if workers is not None:
        # A bad N is reported by max_children's own check, named --workers.
        for key, value in (("pm", "static"), ("max_children", workers)):
            if key in given and parse_or_none(key, given[key][0]) != value:
                problems.append(
                    f"{given[key][1]}: contradicts --workers {workers} "
                    f"(a static pool of {workers}): give one or the other"
                )
            given[key] = (value, "--workers")
    path = getattr(args, "config", None)
    config = read_config(path, problems) if path else MasterConfig(pools=[PoolConfig()])
    pool_given = {k: v for k, v in given.items() if k in POOL_KEYS}
    if pool_given and len(config.pools) != 1:
        problems.append(
            f"{path}: defines {len(config.pools)} pools; command-line pool settings "
            "can only override a single-pool file"
        )
    elif pool_given:
        apply_values(config.pools[0], pool_given, problems)
    apply_values(config, {k: v for k, v in given.items() if k in GLOBAL_KEYS}, problems)
    validate_master(config, problems, single=single)
    if problems:
        raise ConfigErrors(problems)
    return config


def parse_or_none(key: str, raw: object) -> object:
    """A value as the setting reads it, or None if it does not read."""
    try:
        return parse_value(SETTINGS[key], raw)
    except ValueError:
        return None


def print_errors(exc: ConfigError) -> None:
    """One ``fcgi: error:`` line per problem."""
    for line in str(exc).splitlines() or ["invalid configuration"]:
        print(f"fcgi: error: {line}", file=sys.stderr)


def check_config_command(path: str) -> int:
    """``fcgi check-config FILE``: validate, print the effective settings; 0 if valid."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        print_errors(exc)
        return EXIT_USAGE
    # What `fcgi serve --config FILE` would meet before "ready" (users, chdir,
    # files, the app's import): valid here means it starts there.
    found = preflight.problems(config)
    for problem in found:
        print(f"fcgi: error: {problem.message}", file=sys.stderr)
    if found:
        return preflight.exit_code(found)
    sys.stdout.write(format_toml(config))
    print(f"# {path}: configuration is valid", file=sys.stderr)
    return EXIT_OK
