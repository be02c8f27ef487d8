"""The settings table is the one declaration: everything else agrees with it (#11).

The dataclasses, ``fcgi.serve()``'s keywords, ``make_options()``, the flags
and the README are written (or generated) from :data:`fcgi.settings.SETTINGS`;
these tests fail as soon as one of them drifts.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
from pathlib import Path

import pytest
from rawfcgi import ROOT

import fcgi
from fcgi import settings
from fcgi.cli import build_parser
from fcgi.errors import ConfigError
from fcgi.options import ServerOptions
from fcgi.pool.config import MasterConfig, PoolConfig, load_config
from fcgi.server import make_options
from fcgi.settings import SETTINGS, parse_seconds, parse_size

#: Fields of the dataclasses that are bookkeeping, not settings.
NOT_SETTINGS = {"name", "app_object", "origins", "layers", "invalid", "pools", "source"}

#: fcgi.serve()'s annotation for each kind (None: the table's default).
ANNOTATIONS = {
    "int": "int | None",
    "seconds": "float | str | None",
    "size": "int | str | None",
    "bool": "bool | None",
    "str": "str | None",
    "choice": "str | None",
    "mode": "int | str | None",
    "list": "str | Sequence[str] | None",
    "table": "Mapping[str, str] | None",
}


@pytest.mark.parametrize(("cls", "scope"), [(PoolConfig, "pool"), (MasterConfig, "global")])
def test_dataclass_fields_are_the_table_with_its_defaults(cls: type, scope: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in NOT_SETTINGS}
    declared = {s.name for s in SETTINGS.values() if s.scope == scope}
    assert set(fields) == declared
    instance = cls()
    for name in declared:
        assert getattr(instance, name) == SETTINGS[name].default, name


def test_server_options_defaults_are_the_table() -> None:
    options = ServerOptions()
    for name in ("read_timeout", "request_header_timeout", "send_timeout", "script_name"):
        assert getattr(options, name) == SETTINGS[name].default
    for name in ("interface", "threads", "max_conns", "max_reqs"):
        assert getattr(options, name) == SETTINGS[name].default
    assert options.allowed_clients == SETTINGS["listen_allowed_clients"].default
    for name in ("max_params", "max_params_bytes", "max_body_size"):
        assert getattr(options.limits, name) == SETTINGS[name].default
    made = make_options()
    assert (made.read_timeout, made.limits.max_body_size) == (30.0, 512 << 20)


def test_serve_takes_every_setting_as_a_typed_keyword_without_a_default_of_its_own() -> None:
    parameters = inspect.signature(fcgi.serve).parameters
    aliases = {"app", "bind", "workers", "app_spec", "socket_mode", "backlog", "allowed_clients"}
    assert set(parameters) - aliases == set(SETTINGS) - {"app"}
    for name, parameter in parameters.items():
        if name in SETTINGS and name != "app":
            assert parameter.kind is inspect.Parameter.KEYWORD_ONLY, name
            assert parameter.default is None, name  # the default lives in the table
            assert parameter.annotation == ANNOTATIONS[SETTINGS[name].kind], name
    for parameter in inspect.signature(make_options).parameters.values():
        if parameter.name not in ("multiprocess", "stderr_tracebacks"):
            assert parameter.default is None, parameter.name


def test_every_setting_is_a_flag_of_its_own_name_with_its_default_in_the_help() -> None:
    serve = next(
        action
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    ).choices["serve"]
    flags = serve._option_string_actions
    text = serve.format_help()
    for setting in SETTINGS.values():
        if setting.name == "app":
            continue
        assert setting.flag in flags, setting.name
        assert all(alias in flags for alias in setting.aliases), setting.name
        help_text = flags[setting.flag].help or ""
        assert f"default: {settings.show_default(setting)}".replace("%", "%%") in help_text
        for choice in setting.choices:
            assert choice in text, (setting.name, choice)
    for old in ("--bind", "-b", "--workers", "-w", "--socket-mode", "--backlog"):
        assert old in flags
    assert " VALUE" not in text  # every flag says what it takes


def test_readme_settings_reference_is_the_table() -> None:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    assert settings.update_readme(readme) == readme, (
        "README's settings reference is stale: python -m fcgi.settings --update-readme README.md"
    )
    for setting in SETTINGS.values():
        assert f"| `{setting.name}` |" in readme


@pytest.mark.parametrize(
    ("text", "size"),
    [("512M", 512 << 20), ("1.5G", 3 << 29), ("1048576", 1 << 20), (4096, 4096), ("64k", 65536),
     ("2GiB", 2 << 30), ("10MB", 10 << 20)],
)  # fmt: skip
def test_sizes_read_as_php_fpm_writes_them(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30", 30.0), ("30s", 30.0), ("1m30s", 90.0), ("2h", 7200.0), ("500ms", 0.5),
     (12, 12.0), (1.5, 1.5), ("1h 2m 3s", 3723.0), ("1.5s", 1.5), ("1d", 86400.0)],
)  # fmt: skip
def test_durations_read_as_systemd_writes_them(text: object, seconds: float) -> None:
    assert parse_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "1m30", "30 parsecs", "-5s", "s", True, None])
def test_a_duration_that_does_not_read_is_refused(text: object) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_seconds(text)


def test_logging_settings_are_master_attributes(tmp_path: Path) -> None:
    path = tmp_path / "log.toml"
    path.write_text(
        '[global]\nerror_log = "syslog"\nsyslog_facility = "local3"\nsyslog_ident = "shop"\n'
        f'log_config = "{tmp_path}/logging.json"\nlog_level = "notice"\n'
        '[pool.www]\napp = "fcgi.demo:app"\nlisten = "unix:/tmp/x.sock"\nuser = "root"\n'
    )
    config = load_config(str(path))
    assert (config.error_log, config.syslog_facility, config.syslog_ident) == (
        "syslog",
        "local3",
        "shop",
    )
    assert config.log_config == f"{tmp_path}/logging.json" and config.log_level == "notice"
    path.write_text(
        '[global]\nsyslog_facility = "local9"\nsyslog_ident = "shop"\n'
        '[pool.www]\napp = "fcgi.demo:app"\nlisten = "unix:/tmp/x.sock"\nuser = "root"\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    lines = str(info.value).splitlines()
    assert any(":2 [global] syslog_facility: expected one of auth," in line for line in lines)
    assert any(":3 [global] syslog_ident: does nothing" in line for line in lines), lines


def test_a_pool_built_in_python_gets_its_spares_derived() -> None:
    config = MasterConfig(
        pools=[PoolConfig(app="a:app", listen=("unix:/x",), user="root", max_children=2)]
    )
    from fcgi.pool.config import validate_master

    validate_master(config)
    (pool,) = config.pools
    assert (pool.min_spare_servers, pool.max_spare_servers, pool.effective_start_servers) == (
        1,
        2,
        1,
    )
