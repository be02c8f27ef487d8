"""The conformance suite as tests: every case must pass against every kind of ``fcgi
serve`` (single sync worker, single trio worker, the pool with sync and with trio
workers), and the same suite run against flup must give a sensible verdict (flup has
known bugs)."""

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
from conformance.servers import FCGI_SERVERS, FLUP  # noqa: E402

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


# Cases that must really run (not answer n/a) on servers that multiplex request ids.
MULTIPLEXING_KINDS = ["fcgi (trio)", "fcgi pool (trio)"]


def _kind_id(kind: str) -> str:
    """ "fcgi pool (trio)" -> "pool-trio", for test ids that ``-k`` can select."""
    return re.sub(r"[^a-z]+", "-", kind.removeprefix("fcgi")).strip("-")


@pytest.fixture(scope="module", params=list(FCGI_SERVERS), ids=_kind_id)
def fcgi_server(request: pytest.FixtureRequest) -> Iterator[tuple[str, ServerProcess]]:
    """(kind, server): one server per kind for the whole module; pytest orders the tests
    so each kind's server is started once and stopped before the next kind's."""
    kind: str = request.param
    with ServerProcess(FCGI_SERVERS[kind]) as server:
        yield kind, server


@pytest.mark.parametrize("name", list(CASES))
def test_fcgi_conforms(fcgi_server: tuple[str, ServerProcess], name: str) -> None:
    kind, server = fcgi_server
    result = run_one(server, CASES[name], timeout=10.0)
    assert result.passed, f"{kind} {name}: {result.detail}\n--- server log ---\n{server.log_tail()}"
    if kind in MULTIPLEXING_KINDS and name.startswith("interleaved_ids"):
        assert not result.detail.startswith("n/a"), f"{kind} does not multiplex: {result.detail}"
        assert "CANT_MPX_CONN" not in result.detail and "OVERLOADED" not in result.detail


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
