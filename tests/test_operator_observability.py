"""Issue #11: the access log speaks PHP-FPM's access.format, and OpenMetrics scrapes stay stable.

Access log: the unit modifiers of ``%d`` and ``%M``, a strftime format for
``%t`` / ``%T`` and a param by name for ``%e`` print what PHP-FPM prints; the
default format ends with the duration; a format the log cannot honour (an
unknown letter or modifier, ``%{}o``) stops a pool before it says "ready", even
an ondemand pool that has no worker yet.

OpenMetrics: parsed by ``prometheus_client``'s own parser (so ``# TYPE``,
``# UNIT`` and ``# HELP`` are what a Prometheus server reads), per-worker
series keep the same labels whatever the workers are doing, durations are in
seconds with a ``_seconds`` name, and limits that do nothing in the pool's
mode are not published.

Every test drives a real master (``python -m fcgi serve``) over its unix
socket, as a web server or a scraper would.
"""

from __future__ import annotations

import os
import pwd
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from test_pool_support import ROOT, PoolMaster, wait_for

from fcgi.client import FastCGIClient, build_params

#: Seconds the slow request of the access-log tests sleeps: long enough that
#: the milli/micro figures cannot be mistaken for seconds (0.35 s is 350 ms).
SLEEP = 0.35

#: The workers' user: whoever runs the tests (root must name one).
USER = pwd.getpwuid(os.getuid()).pw_name


def read_log(path: Path, marker: str) -> str:
    """The one log line holding ``marker``, once written (a worker writes after replying).

    Other lines are the status pages that ``wait_ready`` asked for.
    """

    def lines() -> list[str] | None:
        if not path.exists():
            return None
        found = [line for line in path.read_text().splitlines() if marker in line]
        return found or None

    (line,) = wait_for(lines, what=f"the {marker} line in {path}")
    return str(line)


@pytest.fixture
def logged_pool(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[PoolMaster]:
    """A static pool of 2 with an access log in the format the test names."""
    fmt: str | None = getattr(request, "param", None)
    args = ["--workers", "2", "--access-log", str(tmp_path / "access.log")]
    if fmt is not None:
        args += ["--access-format", fmt]
    with PoolMaster(tmp_path, args) as pool:
        pool.wait_ready(2)
        yield pool


# -- access log: modifiers -------------------------------------------------------------

MODIFIERS = "|".join(
    [
        "%r",
        "%{mili}d",
        "%{milli}d",
        "%{MILLISECONDS}d",
        "%{micro}d",
        "%{microseconds}d",
        "%{seconds}d",
        "%d",
        "%{bytes}M",
        "%M",
        "%{kilo}M",
        "%{kilobytes}M",
        "%{mega}M",
        "%{megabytes}M",
        "%{%Y-%m-%dT%H:%M:%S}t",
        "%{%s}T",
        "%{HTTP_X_TRACE}e",
        "%{HTTP_X_ABSENT}e",
        "%%",
    ]
)


@pytest.mark.parametrize("logged_pool", [MODIFIERS], indirect=True)
def test_access_log_modifiers_print_what_php_fpm_prints(
    logged_pool: PoolMaster, tmp_path: Path
) -> None:
    before = time.time()
    params = build_params(f"/sleep?{SLEEP}", headers=['X-Trace: abc "quoted"\tend'])
    with FastCGIClient(logged_pool.address, timeout=60) as client:
        assert client.request(params).status == 200
    after = time.time()
    line = read_log(tmp_path / "access.log", "/sleep|")
    fields = line.split("|")
    assert len(fields) == 19, line
    assert fields.pop(0) == "/sleep", line
    mili, milli, milli_upper, micro, micro_long, seconds, plain_d = fields[:7]
    bytes_, plain_m, kilo, kilo_long, mega, mega_long = fields[7:13]
    started, ended, trace, absent, percent = fields[13:]

    # Durations: one measurement in three units (3 decimals, 3 decimals, integer).
    assert re.fullmatch(r"\d+\.\d{3}", seconds) and plain_d == seconds, line
    assert SLEEP <= float(seconds) < 60, line
    for ms in (mili, milli, milli_upper):
        assert re.fullmatch(r"\d+\.\d{3}", ms), line
        assert abs(float(ms) - float(seconds) * 1000) <= 1, line
    for us in (micro, micro_long):
        assert re.fullmatch(r"\d+", us), line
        assert abs(int(us) / 1000 - float(milli)) <= 0.001 + 1e-9, line

    # Memory: bytes, then whole KiB and MiB rounded down, as PHP-FPM's integer division.
    assert re.fullmatch(r"\d+", bytes_) and plain_m == bytes_ and int(bytes_) > 1 << 20, line
    assert kilo == kilo_long == str(int(bytes_) // 1024), line
    assert mega == mega_long == str(int(bytes_) // (1 << 20)), line

    # %{FORMAT}t / %{FORMAT}T: strftime of the request's start and end.
    start = time.mktime(time.strptime(started, "%Y-%m-%dT%H:%M:%S"))
    assert int(before) - 1 <= start <= after + 1, line
    assert int(before) - 1 <= int(ended) <= after + 1, line
    assert int(ended) >= start, line

    # %{NAME}e: the param, escaped as every value is; "-" when absent.
    assert trace == "abc \\x22quoted\\x22\\x09end", line
    assert absent == "-" and percent == "%", line


def test_default_access_format_ends_with_the_duration_in_milliseconds(
    logged_pool: PoolMaster, tmp_path: Path
) -> None:
    assert logged_pool.request(f"/sleep?{SLEEP}").status == 200
    line = read_log(tmp_path / "access.log", "/sleep")
    m = re.fullmatch(r'\S+ - \S+ \S+ \S+ "GET /sleep" 200 (\d+\.\d{3})', line)
    assert m, line
    assert SLEEP * 1000 <= float(m.group(1)) < 60_000, line


# -- access log: formats it cannot honour --------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "why"),
    [
        ("%R %{hours}d", "unknown modifier 'hours'"),
        ("%R %{giga}M", "unknown modifier 'giga'"),
        ("%R %Z", "%Z: unknown format code"),
        ("%R %{}o", "name the header"),
        ("%R %{Content Type}o", "is not a header name"),
        ("%R %e", "name the param"),
        ("%R %{x}m", "takes no modifier"),
        ("%R %{user}C", "only the total CPU time"),
        ("%R %{%Y", "without its"),
        ("%R 100%", "lone '%'"),
    ],
)
def test_bad_access_format_stops_an_ondemand_pool_before_ready(
    tmp_path: Path, fmt: str, why: str
) -> None:
    """Ondemand has no worker until traffic: the format must be checked by the master."""
    command = [
        sys.executable,
        "-m",
        "fcgi",
        "serve",
        "tests.server_apps:app",
        "--bind",
        f"unix:{tmp_path / 'pool.sock'}",
        "--user",
        USER,
        "--pm",
        "ondemand",
        "--max-children",
        "2",
        "--access-log",
        str(tmp_path / "access.log"),
        "--access-format",
        fmt,
    ]
    proc = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"a pool with access format {fmt!r} kept running:\n{out}")
    assert proc.returncode != 0, out
    assert "ready" not in out.lower(), out
    assert repr(fmt) in out and why in out, out


def test_check_config_reports_a_bad_access_format(tmp_path: Path) -> None:
    config = tmp_path / "pool.toml"
    config.write_text(
        "[pool.www]\n"
        'app = "tests.server_apps:app"\n'
        f'listen = "unix:{tmp_path / "pool.sock"}"\n'
        f'user = "{USER}"\n'
        'access_format = "%R %{mili}d %{bogus}M"\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "fcgi", "check-config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0, done
    assert "access_format" in done.stderr and "%{bogus}M" in done.stderr, done.stderr


# -- OpenMetrics --------------------------------------------------------------------------


def scrape(address: str, query: str = "openmetrics&full") -> dict[str, Metric]:
    """The families of one scrape, by name, as prometheus_client reads them."""
    with FastCGIClient(address, timeout=30) as client:
        response = client.request(build_params(f"/status?{query}"))
    assert response.status == 200, response
    text = response.body.decode()
    return {f.name: f for f in text_string_to_metric_families(text)}  # type: ignore[no-untyped-call]


def worker_series(families: dict[str, Metric]) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    """The identity (name and labels) of every per-worker series."""
    found = set()
    for family in families.values():
        for sample in family.samples:
            if "pid" in sample.labels:
                found.add((sample.name, tuple(sorted(sample.labels.items()))))
    return found


def scrapes_quiet_busy_later(pool: PoolMaster) -> tuple[dict[str, Metric], ...]:
    """Three scrapes: workers idle, one held by a slow request, idle again after more requests."""
    pool.wait_ready(2)
    for _ in range(3):
        assert pool.request("/").status == 200
    quiet = scrape(pool.address)
    # A request holds one worker; the scrape is answered by the other one.
    slow = threading.Thread(target=pool.request, args=("/sleep?4",), daemon=True)
    slow.start()
    wait_for(
        lambda: pool.status()["active processes"] == 2,  # the slow one and this page
        what="the slow request running",
    )
    busy = scrape(pool.address)
    slow.join(60)
    for _ in range(3):
        assert pool.request("/").status == 200
    later = scrape(pool.address)
    return quiet, busy, later


def test_openmetrics_worker_series_keep_their_identity_across_requests(tmp_path: Path) -> None:
    with PoolMaster(tmp_path, ["--workers", "2"]) as pool:
        quiet, busy, later = scrapes_quiet_busy_later(pool)

    assert worker_series(quiet), quiet
    assert worker_series(quiet) == worker_series(busy) == worker_series(later)

    # The request counter has no state label; the state is a family of its own.
    requests = quiet["fcgi_process_requests"]
    assert requests.type == "counter"
    for sample in requests.samples:
        assert set(sample.labels) == {"pool", "pid"}, sample
    total = sum(s.value for s in later["fcgi_process_requests"].samples)
    assert total >= 7  # 3 + 3 requests and the slow one (and the status pages)
    state = busy["fcgi_process_state"]
    running = {
        s.labels["pid"]
        for s in state.samples
        if s.labels["fcgi_process_state"] == "Running" and s.value == 1
    }
    assert len(running) == 2, state


def test_openmetrics_durations_are_in_seconds_with_their_unit(tmp_path: Path) -> None:
    with PoolMaster(tmp_path, ["--workers", "2", "--request-slowlog-timeout", "2.5"]) as pool:
        quiet, busy, _ = scrapes_quiet_busy_later(pool)

    duration = busy["fcgi_process_request_duration_seconds"]
    assert duration.unit == "seconds", duration
    # The slow request has run for a moment (it was seen running), well under a minute.
    slowest = max(s.value for s in duration.samples)
    assert 0 < slowest < 60, duration
    slowlog = quiet["fcgi_config_request_slowlog_timeout_seconds"]
    assert [s.value for s in slowlog.samples] == [2.5], slowlog
    checked = []
    for name, family in quiet.items():
        words = name.split("_")
        if {"duration", "timeout", "time", "since"} & set(words):
            assert family.unit == "seconds" and words[-1] == "seconds", (name, family)
            checked.append(name)
        if "memory" in words:
            assert family.unit == "bytes" and words[-1] == "bytes", (name, family)
    assert len(checked) >= 4, checked  # pool and worker start times, uptime, durations


@pytest.mark.parametrize(
    ("args", "present", "absent"),
    [
        (
            ["--workers", "2"],
            {"max_children"},
            {"start_servers", "min_spare_servers", "max_spare_servers", "process_idle_timeout"},
        ),
        (
            ["--pm", "ondemand", "--max-children", "2", "--process-idle-timeout", "30"],
            {"max_children", "process_idle_timeout_seconds"},
            {"start_servers", "min_spare_servers", "max_spare_servers"},
        ),
        (
            [
                "--pm",
                "dynamic",
                "--max-children",
                "3",
                "--max-spare-servers",
                "2",
                "--request-terminate-timeout",
                "90",
            ],
            {
                "max_children",
                "start_servers",
                "min_spare_servers",
                "max_spare_servers",
                "request_terminate_timeout_seconds",
            },
            {"process_idle_timeout"},
        ),
    ],
    ids=["static", "ondemand", "dynamic"],
)
def test_openmetrics_publishes_only_the_limits_of_the_pools_mode(
    tmp_path: Path, args: list[str], present: set[str], absent: set[str]
) -> None:
    with PoolMaster(tmp_path, args) as pool:
        wait_for(lambda: pool.request("/ping").status == 200, what="the pool answering")
        families = scrape(pool.address, "openmetrics")
    limits = {name.removeprefix("fcgi_config_") for name in families if "config" in name}
    assert present <= limits, limits
    for name in absent:
        assert not any(limit.startswith(name) for limit in limits), limits
    if "request_terminate_timeout_seconds" in present:
        family = families["fcgi_config_request_terminate_timeout_seconds"]
        assert family.unit == "seconds"
        assert [s.value for s in family.samples] == [90]
