"""The start-up checks tell a configuration mistake (2) from an app that does not import (3).

The app is imported in a throw-away child set up as a worker: the pool's
user, its ``chdir``, its environment. A ``chdir`` that user cannot enter
stops that child before the import is even tried; it is a mistake in the
configuration, not in the app, and the exit status says so (see the exit
table in fcgi/exit_codes.py). Driven as an operator meets it:
``fcgi check-config`` and ``fcgi serve --config`` in a subprocess.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_operator_preflight import fcgi


def pool_file(tmp_path: Path, app: str, user: str, chdir: str | Path) -> Path:
    config = tmp_path / "pool.toml"
    config.write_text(
        f"""
[pool.www]
app = "{app}"
listen = "unix:{tmp_path}/www.sock"
pm = "ondemand"
user = "{user}"
chdir = "{chdir}"
"""
    )
    return config


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("fcgi: error:")]


@pytest.mark.parametrize("user", ["nobody", "www-data"])
def test_a_chdir_the_pool_user_cannot_enter_is_a_configuration_mistake(
    tmp_path: Path, user: str
) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)  # root's, and root's alone
    os.chmod(private, 0o700)
    config = pool_file(tmp_path, "fcgi.demo:app", user, private)
    for command in (["check-config", str(config)], ["serve", "--config", str(config)]):
        proc = fcgi(*command)
        assert proc.returncode == 2, proc
        lines = error_lines(proc.stderr)
        assert len(lines) == 1, proc.stderr
        (line,) = lines
        assert "[pool.www] chdir:" in line and str(private) in line, line
        assert "Permission denied" in line and repr(user) in line, line
        assert " app:" not in line
        assert "ready" not in proc.stderr
        assert not (tmp_path / "www.sock").exists()


@pytest.mark.parametrize("user", ["nobody", "root"])
def test_an_app_that_does_not_import_is_still_the_apps_problem(tmp_path: Path, user: str) -> None:
    config = pool_file(tmp_path, "nosuchmodule:app", user, "/")
    for command in (["check-config", str(config)], ["serve", "--config", str(config)]):
        proc = fcgi(*command)
        assert proc.returncode == 3, proc
        (line,) = error_lines(proc.stderr)
        assert "[pool.www] app:" in line and "no module named 'nosuchmodule'" in line, line
        assert not (tmp_path / "www.sock").exists()


def test_an_app_whose_import_exits_is_the_apps_problem(tmp_path: Path) -> None:
    (tmp_path / "exitapp.py").write_text("raise SystemExit(5)\n")
    config = pool_file(tmp_path, "exitapp:app", "root", tmp_path)
    proc = fcgi("check-config", str(config))
    assert proc.returncode == 3, proc
    (line,) = error_lines(proc.stderr)
    assert "[pool.www] app: importing 'exitapp:app' raised SystemExit: 5" in line, line
