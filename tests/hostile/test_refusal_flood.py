"""A peer that sends thousands of refused requests on one connection cannot fill the log.

Each refusal (an unknown role here; an extra id or OVERLOADED elsewhere) is
answered as the spec says, but only the first few of one connection are
warnings: the rest are debug lines (fcgi.driver.log_refusal). Found by a
hostile review: one connection wrote 1,488 warnings in 0.06 s.
"""

from __future__ import annotations

import pytest
from rawfcgi import RecordReader, connect, get_params, roundtrip, running_server

from fcgi import records as r
from fcgi.driver import REFUSALS_WARNED

REFUSED = 200
UNKNOWN_ROLE = 9

#: (worker, app, its flags, a path the app answers with 200)
WORKERS = [
    ("sync", "fcgi.demo:app", [], "/"),
    ("trio", "fcgi.demo:app", ["--worker", "trio"], "/"),
    ("asyncio", "bench.asgi_app:app", ["--worker", "asyncio"], "/hello"),
]


@pytest.mark.parametrize(("worker", "app", "args", "path"), WORKERS, ids=[w[0] for w in WORKERS])
def test_a_flood_of_refused_requests_writes_a_few_warnings(
    worker: str, app: str, args: list[str], path: str
) -> None:
    with running_server(app, *args) as server:
        flood = b"".join(
            r.encode_begin_request(rid, UNKNOWN_ROLE, True) for rid in range(1, REFUSED + 1)
        )
        with connect(server.address) as sock:
            sock.sendall(flood)
            reader = RecordReader(sock)
            ends = 0
            while ends < REFUSED:
                record = reader.record()
                assert record is not None, server.log()
                ends += record[0] == r.RecordType.END_REQUEST
        # Every refusal was answered, the server still serves...
        assert roundtrip(server.address, get_params(path)).status == 200
        log = server.log()
        warned = [line for line in log.splitlines() if "refused request id" in line]
        # ...and the log holds a few lines, the last saying what happens next.
        assert len(warned) == REFUSALS_WARNED, log
        assert "further refusals on this connection are logged as debug" in warned[-1]
