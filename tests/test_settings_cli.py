"""Settings as an operator meets them: flags, files, errors, --print-config (#11).

Every test runs the real ``fcgi`` command in a subprocess. ``--print-config``
shows what a command line and a file add up to without starting anything;
the tests that must prove a process runs (or does not become a master) start
one and talk to it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from rawfcgi import ROOT, get_params, roundtrip, wait_connectable


def fcgi(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fcgi", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT),
        timeout=timeout,
    )


def effective(*args: str) -> dict[str, object]:
    """``fcgi serve ARGS --print-config``, parsed: the pool's settings and [global]'s."""
    proc = fcgi("serve", *args, "--print-config")
    assert proc.returncode == 0, proc.stderr
    data = tomllib.loads(proc.stdout)
    (pool,) = data["pool"].values()
    return {**data["global"], **pool}


def errors(proc: subprocess.CompletedProcess[str]) -> list[str]:
    assert proc.returncode == 2, proc
    assert "Traceback" not in proc.stderr
    return [line for line in proc.stderr.splitlines() if line.startswith("fcgi: error: ")]


POOL = ("fcgi.demo:app", "--listen", "unix:/tmp/fcgi-settings-test.sock", "--user", "root")


def test_a_flag_overrides_the_file_even_when_it_equals_the_default(tmp_path: Path) -> None:
    path = tmp_path / "fcgi.toml"
    path.write_text(
        '[global]\nlog_level = "debug"\n'
        '[pool.www]\napp = "fcgi.demo:app"\nlisten = "unix:/tmp/x.sock"\nuser = "root"\n'
        'read_timeout = 60\nlisten_backlog = 100\nworker = "trio"\n'
    )
    got = effective("--config", str(path), "--read-timeout", "30", "--backlog", "511")
    assert got["read_timeout"] == 30 and got["listen_backlog"] == 511
    assert got["worker"] == "trio"  # what no flag touched stays as the file says
    got = effective("--config", str(path), "--worker", "sync", "--log-level", "info")
    assert got["worker"] == "sync" and got["log_level"] == "info"


def test_listen_and_listen_mode_are_flags_and_bind_stays_an_alias() -> None:
    got = effective(
        "fcgi.demo:app", "--listen", "unix:/tmp/a.sock", "-b", "127.0.0.1:9000",
        "--listen-mode", "0600", "--socket-mode", "0640", "--workers", "2", "--user", "root",
    )  # fmt: skip
    assert got["listen"] == ["unix:/tmp/a.sock", "127.0.0.1:9000"]
    assert got["listen_mode"] == "0640"  # the last one given wins, whatever its name
    assert (got["pm"], got["max_children"]) == ("static", 2)


def test_sizes_durations_and_notice_read_the_same_from_flags_and_file(tmp_path: Path) -> None:
    flags = effective(
        *POOL, "--max-memory", "1.5G", "--request-terminate-timeout", "1m30s",
        "--process-control-timeout", "2h", "--send-timeout", "500ms", "--log-level", "notice",
        "--max-body-size", "1048576",
    )  # fmt: skip
    path = tmp_path / "fcgi.toml"
    path.write_text(
        '[global]\nprocess_control_timeout = "2h"\nlog_level = "notice"\n'
        '[pool.www]\napp = "fcgi.demo:app"\nlisten = "unix:/tmp/fcgi-settings-test.sock"\n'
        'user = "root"\nmax_memory = "1.5G"\nrequest_terminate_timeout = "1m30s"\n'
        'send_timeout = "500ms"\nmax_body_size = 1048576\n'
    )
    from_file = effective("--config", str(path))
    assert flags == from_file
    assert flags["max_memory"] == "1536M" and flags["request_terminate_timeout"] == 90
    assert flags["process_control_timeout"] == 7200 and flags["send_timeout"] == 0.5
    assert flags["log_level"] == "notice" and flags["max_body_size"] == "1M"


def test_every_mistake_on_the_command_line_is_reported_at_once_by_its_flag() -> None:
    proc = fcgi(
        "serve", *POOL, "--max-children", "many", "--max-memory", "lots",
        "--request-terminate-timeout", "1m30", "--pm", "sometimes", "--status-path", "status",
    )  # fmt: skip
    lines = errors(proc)
    for expected in (
        "fcgi: error: --max-children: expected an integer, got 'many'",
        "fcgi: error: --max-memory: expected a size",
        "fcgi: error: --request-terminate-timeout: expected a duration",
        "fcgi: error: --pm: expected one of static, dynamic, ondemand, got 'sometimes'",
        "fcgi: error: --status-path: must start with '/'",
    ):
        assert any(line.startswith(expected) for line in lines), (expected, lines)
    assert len(lines) == 5, lines


def test_every_mistake_in_a_file_is_reported_at_once_by_file_line_and_table(
    tmp_path: Path,
) -> None:
    path = tmp_path / "fcgi.toml"
    path.write_text(
        "[global]\n"  # 1
        'log_levle = "debug"\n'  # 2
        "\n"  # 3
        "[pool.www]\n"  # 4
        'app = "fcgi.demo:app"\n'  # 5
        'listen = "unix:/tmp/x.sock"\n'  # 6
        'user = "root"\n'  # 7
        "max_chidren = 3\n"  # 8
        'max_memory = "lots"\n'  # 9
        "read_timeout = -1\n"  # 10
    )
    for command in (("check-config", str(path)), ("serve", "--config", str(path))):
        lines = errors(fcgi(*command))
        assert f"fcgi: error: {path}:2 [global] log_levle: unknown setting " in lines[0] + " "
        assert any(
            f"{path}:8 [pool.www] max_chidren: unknown setting (did you mean max_children?)" in line
            for line in lines
        ), lines
        assert any(f"{path}:9 [pool.www] max_memory: expected a size" in x for x in lines)
        assert any(f"{path}:10 [pool.www] read_timeout: must be positive" in x for x in lines)
        assert "did you mean log_level?" in lines[0]
        assert len(lines) == 4, lines


def test_max_children_alone_derives_the_spares_as_php_fpm_does() -> None:
    got = effective(*POOL, "--pm", "dynamic", "--max-children", "2")
    assert (got["min_spare_servers"], got["max_spare_servers"], got["start_servers"]) == (1, 2, 1)
    got = effective(*POOL, "--max-children", "20", "--min-spare-servers", "5")
    assert (got["min_spare_servers"], got["max_spare_servers"], got["start_servers"]) == (5, 5, 5)
    # Only what the user wrote can contradict itself.
    lines = errors(fcgi("serve", *POOL, "--max-children", "2", "--max-spare-servers", "3"))
    assert lines == ["fcgi: error: --max-spare-servers: (3) must not exceed max_children (2)"], (
        lines
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--threads", "4"],
            "--threads: does nothing with --worker sync (only with --worker trio)",
        ),
        (["--max-reqs", "4"], "--max-reqs: does nothing with --worker sync"),
        (["--workers", "2", "--min-spare-servers", "2"], "--min-spare-servers: does nothing with"),
        (["--pm", "ondemand", "--start-servers", "2"], "--start-servers: does nothing with --pm"),
        (["--process-idle-timeout", "5s"], "--process-idle-timeout: does nothing with --pm"),
        (["--syslog-ident", "shop"], "--syslog-ident: does nothing with error_log unset"),
    ],
)
def test_a_setting_that_does_nothing_in_the_chosen_mode_is_refused(
    args: list[str], message: str
) -> None:
    lines = errors(fcgi("serve", *POOL, *args))
    assert any(message in line for line in lines), lines


def test_a_files_mode_settings_give_way_to_a_mode_chosen_on_the_command_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "fcgi.toml"
    path.write_text(
        '[pool.www]\napp = "fcgi.demo:app"\nlisten = "unix:/tmp/x.sock"\nuser = "root"\n'
        'pm = "dynamic"\nmax_children = 8\nmin_spare_servers = 2\nmax_spare_servers = 4\n'
    )
    got = effective("--config", str(path), "--workers", "3")
    assert (got["pm"], got["max_children"]) == ("static", 3)
    lines = errors(fcgi("serve", "--config", str(path), "--workers", "3", "--pm", "dynamic"))
    assert any("--pm: contradicts --workers 3" in line for line in lines), lines


def test_print_config_is_read_back_unchanged_by_serve_and_check_config(tmp_path: Path) -> None:
    first = fcgi(
        "serve", *POOL, "--pm", "dynamic", "--max-children", "4", "--env", "A=1",
        "--env", "B=two words", "--allowed-clients", "127.0.0.1,10.0.0.0/8",
        "--access-log", str(tmp_path / "access.log"), "--status-path", "/status",
        "--request-slowlog-timeout", "2.5", "--max-memory", "300M", "--print-config",
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert '""' not in first.stdout  # unset values are comments, never empty strings
    path = tmp_path / "printed.toml"
    path.write_text(first.stdout)
    again = fcgi("serve", "--config", str(path), "--print-config")
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout
    checked = fcgi("check-config", str(path))
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout == first.stdout
    # check-config's own output is a file check-config accepts, giving the same output.
    path.write_text(checked.stdout)
    assert fcgi("check-config", str(path)).stdout == checked.stdout


def test_check_config_output_of_a_two_pool_file_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "pools.toml"
    path.write_text(
        'log_level = "debug"\nprocess_control_timeout = "10s"\n'
        '[pool.www]\napp = "fcgi.demo:app"\nlisten = "unix:/tmp/www.sock"\nuser = "root"\n'
        "max_children = 10\nmin_spare_servers = 2\nmax_spare_servers = 4\n"
        '[pool.api]\napp = "fcgi.demo:app"\nlisten = ["127.0.0.1:9001", "unix:/tmp/api.sock"]\n'
        'pm = "static"\nmax_children = 3\nuser = "root"\nenv = { DJANGO = "prod" }\n'
        'worker = "trio"\nthreads = 4\n'
    )
    first = fcgi("check-config", str(path))
    assert first.returncode == 0, first.stderr
    printed = tmp_path / "printed.toml"
    printed.write_text(first.stdout)
    second = fcgi("check-config", str(printed))
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout
    assert "# syslog_facility" in first.stdout and "# user (unset)" not in first.stdout


def test_single_process_settings_do_not_start_a_master(tmp_path: Path) -> None:
    """Sizes, durations and notice on a single process: it serves, as root, without --user."""
    sock = tmp_path / "single.sock"
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fcgi", "serve", "fcgi.demo:app", "--listen", f"unix:{sock}",
             "--max-body-size", "1.5M", "--read-timeout", "1m", "--log-level", "notice",
             "--listen-mode", "0600"],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=ROOT),
        )  # fmt: skip
    try:
        wait_connectable(f"unix:{sock}", proc, str(log_path))
        assert oct(os.stat(sock).st_mode & 0o777) == "0o600"
        assert roundtrip(f"unix:{sock}", get_params("/")).status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert "master" not in log_path.read_text()


@pytest.mark.skipif(os.geteuid() != 0, reason="the proof is a master's refusal to run as root")
def test_a_setting_that_needs_several_processes_starts_a_master() -> None:
    # As root without --user a master refuses to start: proof that one was asked for.
    args = ("fcgi.demo:app", "--listen", "unix:/tmp/x.sock", "--max-requests", "5")
    lines = errors(fcgi("serve", *args))
    assert any("--user: the master runs as root" in line for line in lines), lines


def test_a_mistyped_flag_gets_a_did_you_mean() -> None:
    """argparse alone says "unrecognized arguments"; the operator wants the right name."""
    proc = fcgi("serve", "fcgi.demo:app", "--bind", "unix:/nonexistent/x.sock",
                "--max-chidren", "3", "--request-terminate-timout=3")  # fmt: skip
    (line,) = errors(proc)
    assert "--max-chidren: did you mean --max-children?" in line
    assert "--request-terminate-timout: did you mean --request-terminate-timeout?" in line


def write_pool(tmp_path: Path, extra: str, name: str = "www") -> Path:
    path = tmp_path / "pool.toml"
    path.write_text(
        f'[pool.{name}]\napp = "fcgi.demo:app"\nuser = "root"\n'
        f'listen = ["unix:{tmp_path}/p.sock"]\n{extra}\n'
    )
    return path


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        # A typo of a few zeros: refused, not a scoreboard of a trillion slots.
        ("max_children = 1000000000000", "max_children: must lie between 1 and 10000"),
        # listen() takes a C int: refused, not an OverflowError at bind time.
        ("listen_backlog = 99999999999999999999", "listen_backlog: must lie between 0 and"),
        # Parsed here, not first in each worker (which crashed at start).
        ('listen_allowed_clients = ["999.1.1.1"]', "listen_allowed_clients: allowed client"),
        ('listen_allowed_clients = "10.0.0.0/33"', "listen_allowed_clients: allowed client"),
    ],
)
def test_values_that_would_fail_at_start_fail_in_check_config(
    tmp_path: Path, extra: str, named: str
) -> None:
    """Found by a hostile review: each passed check-config, then crashed the start."""
    path = write_pool(tmp_path, extra)
    for proc in (fcgi("check-config", str(path)), fcgi("serve", "--config", str(path))):
        (line,) = errors(proc)
        assert named in line, line
    assert not (tmp_path / "p.sock").exists()


def test_a_line_break_in_a_pool_name_cannot_forge_an_error_line(tmp_path: Path) -> None:
    path = write_pool(tmp_path, "", name='"a b\\nc"')
    proc = fcgi("check-config", str(path))
    lines = errors(proc)
    assert "[pool.a b\\x0Ac]: a pool name is letters, digits" in lines[0], lines
    # Every line of stderr is one of ours: none starts with the name's "c]".
    assert len(lines) == len(proc.stderr.strip().splitlines()), proc.stderr
