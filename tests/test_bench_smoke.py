"""Smoke test of the benchmark harness's pieces (bench/): no timing assertions at all.

Compiles the C responder and fcgiload, serves the bench routes from the C responder, and
checks that fcgiload's responses all validate (zero errors) in both connection modes.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import fcgiclient
from bench.backends import SPECS, make_backend
from bench.deps import compile_c
from bench.harness import parse_wrk
from bench.nginx import Front, render


@pytest.fixture(scope="module")
def programs() -> dict[str, Path]:
    return compile_c(names=["responder", "fcgiload"])


@pytest.fixture()
def c_responder(programs: dict[str, Path], tmp_path: Path) -> Iterator[str]:
    sock = str(tmp_path / "c.sock")
    be = make_backend(SPECS["c"], sock, 2, tmp_path / "c.log")
    be.start()
    try:
        yield sock
    finally:
        be.stop()
    assert not Path(sock).exists()


def fcgiload(programs: dict[str, Path], sock: str, *args: str) -> dict[str, float]:
    out = subprocess.run(
        [str(programs["fcgiload"]), "-s", sock, "-c", "4", "-d", "0.5", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout)
    return result


def test_responder_answers_every_route(c_responder: str) -> None:
    assert fcgiclient.request(c_responder, "/hello").body == b"Hello, world!"
    assert fcgiclient.request(c_responder, "/64k").body == b"x" * 65536
    resp = fcgiclient.request(c_responder, "/post", "POST", b"a" * 16384)
    assert (resp.status, resp.body) == (200, b"16384")
    resp = fcgiclient.request(c_responder, "/upload", "POST", b"u" * 1048576)
    assert resp.body == b"1048576"
    assert fcgiclient.request(c_responder, "/hello", nheaders=40).body == b"Hello, world!"
    assert fcgiclient.request(c_responder, "/nope").status == 404


@pytest.mark.parametrize("keep", [False, True])
def test_fcgiload_validates_with_zero_errors(
    programs: dict[str, Path], c_responder: str, keep: bool
) -> None:
    res = fcgiload(programs, c_responder, *(["-k"] if keep else []), "-E", "Hello, world!")
    assert res["requests"] > 0
    assert res["errors"] == 0 and res["bad"] == 0


def test_fcgiload_validates_bodies(programs: dict[str, Path], c_responder: str) -> None:
    res = fcgiload(programs, c_responder, "-p", "/post", "-b", "100000", "-E", "100000")
    assert res["requests"] > 0 and res["errors"] == 0
    res = fcgiload(programs, c_responder, "-p", "/64k", "-l", "65536", "-H", "40")
    assert res["requests"] > 0 and res["errors"] == 0


def test_fcgiload_counts_wrong_answers(programs: dict[str, Path], c_responder: str) -> None:
    res = fcgiload(programs, c_responder, "-E", "Goodbye")
    assert res["requests"] == 0
    assert res["bad"] > 0 and res["errors"] == res["bad"]


def test_stopped_backend_leaves_no_process(programs: dict[str, Path], tmp_path: Path) -> None:
    be = make_backend(SPECS["c"], str(tmp_path / "s.sock"), 2, tmp_path / "s.log")
    be.start()
    pids = be.tree()
    assert len(pids) == 3
    be.stop()
    time.sleep(0.1)
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().split(")")[-1].split()[0] == "Z"


def test_parse_wrk_and_nginx_config(tmp_path: Path) -> None:
    sample = (
        "  Latency Distribution\n     50%  520.00us\n     75%  1.00ms\n     99%    1.23ms\n"
        "  52000 requests in 2.00s, 7.5MB read\n  Non-2xx or 3xx responses: 3\n"
        "Requests/sec:  26000.00\n"
    )
    res = parse_wrk(sample)
    assert res["rps"] == 26000.0 and res["requests"] == 52000 and res["errors"] == 3
    assert res["p50_us"] == 520.0 and res["p99_us"] == 1230.0
    conf = render(tmp_path, [Front("a", 8001, "/x.sock", False), Front("b", 8002, "/x.sock", True)])
    assert "worker_processes 1;" in conf and "access_log off;" in conf
    assert "keepalive 16;" in conf and "fastcgi_keep_conn on;" in conf
