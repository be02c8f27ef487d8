"""The conformance suite as tests: every case must pass against ``fcgi serve``, and
the same suite run against flup must give a sensible verdict (flup has known bugs)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from conformance.cases import CASES  # noqa: E402
from conformance.runner import ServerProcess, run_one, run_suite, summary  # noqa: E402

FCGI = f"{sys.executable} -m fcgi serve conformance.app:app --bind unix:{{sock}}"
FLUP = f"{sys.executable} -m conformance.flup_server {{sock}}"

# Behaviour any usable FastCGI server has; if flup fails one, suspect the suite.
FLUP_MUST_PASS = [
    "responder_get",
    "stream_order",
    "big_response",
    "record_padding",
    "post_body",
    "byte_by_byte",
    "keep_conn_sequential",
    "keep_conn_off_closes",
    "interleaved_ids",
    "unknown_management_type",
    "unknown_role",
    "inactive_ids_ignored",
    "environ_root_mount",
    "environ_latin1",
    "error_before_start",
    "multiple_headers",
    "stderr_stream",
    "malformed_garbage",
    "malformed_truncated_header",
]
# flup 1.0.3 bugs the suite must catch: pairs straddling PARAMS records crash it,
# GET_VALUES answers nothing on Python 3, ABORT_REQUEST gets no END_REQUEST.
FLUP_MUST_FAIL = ["params_split_records", "get_values", "abort_waiting_for_stdin"]


@pytest.fixture(scope="module")
def fcgi_server() -> Iterator[ServerProcess]:
    with ServerProcess(FCGI) as server:
        yield server


@pytest.mark.parametrize("name", list(CASES))
def test_fcgi_conforms(fcgi_server: ServerProcess, name: str) -> None:
    result = run_one(fcgi_server, CASES[name], timeout=10.0)
    assert result.passed, f"{name}: {result.detail}\n--- server log ---\n{fcgi_server.log_tail()}"


def test_flup_gets_a_sensible_verdict() -> None:
    results = {r.name: r for r in run_suite(FLUP, timeout=10.0)}
    assert list(results) == list(CASES)
    wrongly_failed = {n: results[n].detail for n in FLUP_MUST_PASS if not results[n].passed}
    assert not wrongly_failed
    missed = [n for n in FLUP_MUST_FAIL if results[n].passed]
    assert not missed, f"suite no longer detects known flup bugs: {missed}"
    assert re.fullmatch(r"\d+ passed, \d+ failed", summary(results.values()))


def test_cli_table_and_exit_status() -> None:
    def run(pattern: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "conformance", "--server", FLUP, "--name", "flup"]
        return subprocess.run(
            [*cmd, "-k", pattern],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    ok = run("responder_get")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.splitlines()[-1] == "1 passed, 0 failed"
    assert re.search(r"^responder_get\s+PASS\s", ok.stdout, re.M)

    bad = run("get_values_subset")
    assert bad.returncode == 1
    assert bad.stdout.splitlines()[-1] == "0 passed, 1 failed"
