"""Nothing fails after "ready": a pool's mistakes stop its start, not its first request.

Driven as an operator meets them: ``fcgi serve`` and ``fcgi check-config`` in
a subprocess, with an ondemand pool (whose first worker would otherwise start
only with the first request).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from rawfcgi import ROOT


def fcgi(
    *args: str, cwd: Path | str = ROOT, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fcgi", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=dict(os.environ, PYTHONPATH=ROOT),
        timeout=timeout,
    )


@pytest.mark.parametrize(
    ("app", "user", "message", "code"),
    [
        ("fcgi.demo:app", "nosuchuser", "user: no user named 'nosuchuser'", 2),
        ("nosuchmodule:app", "root", "no module named 'nosuchmodule'", 3),
        ("fcgi.demo:nothing", "root", "has no attribute 'nothing'", 3),
    ],
)
def test_an_ondemand_pool_with_a_mistake_never_says_ready(
    tmp_path: Path, app: str, user: str, message: str, code: int
) -> None:
    sock = tmp_path / "app.sock"
    pid_file = tmp_path / "master.pid"
    proc = fcgi(
        "serve",
        app,
        "--bind",
        f"unix:{sock}",
        "--pm",
        "ondemand",
        "--user",
        user,
        "--pid-file",
        str(pid_file),
    )
    assert proc.returncode == code, proc
    assert message in proc.stderr
    assert "ready" not in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not sock.exists() and not pid_file.exists()  # nothing left behind


def test_check_config_reports_every_problem_that_serve_would_meet(tmp_path: Path) -> None:
    config = tmp_path / "pools.toml"
    config.write_text(
        f"""
[pool.a]
app = "fcgi.demo:app"
listen = "unix:{tmp_path}/a.sock"
pm = "ondemand"
user = "nosuchuser"
chdir = "{tmp_path}/missing-dir"

[pool.b]
app = "nosuchmodule:app"
listen = "unix:{tmp_path}/no-such-dir/b.sock"
pm = "ondemand"
user = "root"
access_log = "{tmp_path}/no-such-dir/access.log"

[pool.c]
app = "nosuchmodule:app"
listen = "unix:{tmp_path}/c.sock"
pm = "ondemand"
user = "root"
"""
    )
    proc = fcgi("check-config", str(config))
    assert proc.returncode == 3, proc  # an app that does not import is among them
    lines = [line for line in proc.stderr.splitlines() if line.startswith("fcgi: error:")]
    assert any("[pool.a] user: no user named 'nosuchuser'" in line for line in lines), lines
    assert any("[pool.a] chdir:" in line for line in lines), lines
    assert any("[pool.b] listen:" in line and "does not exist" in line for line in lines), lines
    assert any("[pool.b] access_log:" in line for line in lines), lines
    assert any("[pool.c] app:" in line and "nosuchmodule" in line for line in lines), lines
    assert proc.stdout == ""  # no "valid" settings printed
    # serve --config refuses the same file, the same way, before binding anything.
    served = fcgi("serve", "--config", str(config))
    assert served.returncode == 3, served
    assert not (tmp_path / "c.sock").exists()


def test_check_config_accepts_a_pool_that_starts(tmp_path: Path) -> None:
    config = tmp_path / "pool.toml"
    config.write_text(
        f"""
[pool.www]
app = "fcgi.demo:app"
listen = "unix:{tmp_path}/www.sock"
pm = "ondemand"
user = "root"
access_log = "{tmp_path}/access.log"
"""
    )
    proc = fcgi("check-config", str(config))
    assert proc.returncode == 0, proc
    assert "configuration is valid" in proc.stderr
    assert not (tmp_path / "access.log").exists()  # the check writes nothing
