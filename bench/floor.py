"""What any CPython WSGI responder spends on a request, at the least, next to a C one.

    python -m bench.floor                  # ~10 s
    python -m bench.floor --results bench/out/results.json

Issue 12 asks for a worker's CPU per kept hello request within 1.5x of the C
responder's (``bench/c/responder.c``, which runs no app). This measures, in
one process and without any I/O, the part of a request that a responder
written in Python cannot leave out, each piece at the fastest this project
has it:

* **decode**: the request's PARAMS block (the one nginx sends for the bench's
  hello route through ``include fastcgi_params``) into a dict of ``str``, by
  the C function the compiled build uses (``fcgi._speedups.decode_params``);
* **environ**: that dict copied and given PEP 3333's ``wsgi.*`` keys;
* **app**: ``bench.app.app`` called with it, ``start_response`` encoding its
  head (``fcgi._speedups.encode_head``, C again).

Sockets, records, the scoreboard and everything else a real worker does come
on top. With ``--results`` (a ``results.json`` of ``python -m bench``), the
sum is set against the C responder's measured CPU per kept hello request:
the lowest ratio a CPython responder could reach on that machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.app import app
from fcgi import records

#: What nginx 1.22's stock ``fastcgi_params`` and a ``wrk`` GET of ``/hello``
#: put in PARAMS (values as bench's nginx has them; ports vary per run).
PARAMS = {
    "QUERY_STRING": "",
    "REQUEST_METHOD": "GET",
    "CONTENT_TYPE": "",
    "CONTENT_LENGTH": "",
    "SCRIPT_NAME": "/hello",
    "REQUEST_URI": "/hello",
    "DOCUMENT_URI": "/hello",
    "DOCUMENT_ROOT": "/tmp/fcgib-run/nginx/html",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "REQUEST_SCHEME": "http",
    "GATEWAY_INTERFACE": "CGI/1.1",
    "SERVER_SOFTWARE": "nginx/1.22.1",
    "REMOTE_ADDR": "127.0.0.1",
    "REMOTE_PORT": "45678",
    "SERVER_ADDR": "127.0.0.1",
    "SERVER_PORT": "39999",
    "SERVER_NAME": "",
    "REDIRECT_STATUS": "200",
    "PATH_INFO": "/hello",
    "HTTP_HOST": "127.0.0.1:39999",
}

#: PEP 3333's own keys, as any server adds them (values do not matter here).
WSGI_KEYS: dict[str, Any] = {
    "wsgi.version": (1, 0),
    "wsgi.url_scheme": "http",
    "wsgi.input": None,
    "wsgi.errors": None,
    "wsgi.multithread": False,
    "wsgi.multiprocess": True,
    "wsgi.run_once": False,
}


def pieces() -> dict[str, Callable[[], object]]:
    """Each measured step, and the three together, as functions of no argument."""
    try:
        from fcgi import _speedups
    except ImportError:  # no compiler at install: there is no C floor to show
        raise SystemExit("fcgi._speedups is not built: the floor is measured with it") from None
    decode, encode_head = _speedups.decode_params, _speedups.encode_head
    block = records.encode_pairs({k.encode(): v.encode() for k, v in PARAMS.items()})
    decoded = decode(block)
    if decoded != PARAMS or decoded is None:
        raise SystemExit("fcgi._speedups.decode_params disagrees with the block it was given")
    params: dict[str, str] = decoded

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: object = None
    ) -> None:
        encode_head(status, headers)

    def environ() -> dict[str, Any]:
        env: dict[str, Any] = dict(params)
        env.update(WSGI_KEYS)
        return env

    ready = environ()

    def whole() -> object:
        env: dict[str, Any] = dict(decode(block) or ())
        env.update(WSGI_KEYS)
        return app(env, start_response)

    return {
        "decode": lambda: decode(block),
        "environ": environ,
        "app": lambda: app(ready, start_response),
        "all three": whole,
    }


def c_cpu_us(results: Path) -> float | None:
    """The C responder's backend CPU per kept hello request, in µs (median of the rounds)."""
    data = json.loads(results.read_text())
    rounds = data.get("runs", {}).get("hello", {}).get("C responder (raw protocol) + keepalive", [])
    cpu = sorted(float(r["cpu_per_1k"]) for r in rounds if r.get("cpu_per_1k"))
    if not cpu:
        return None
    middle = len(cpu) // 2
    median = cpu[middle] if len(cpu) % 2 else (cpu[middle - 1] + cpu[middle]) / 2
    return 1000.0 * median


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--number", type=int, default=200_000, help="calls per timing")
    parser.add_argument("--results", type=Path, help="a results.json to compare with")
    args = parser.parse_args(argv)
    costs: dict[str, float] = {}
    for name, fn in pieces().items():
        # The best of five: the least the machine's other work added.
        best = min(timeit.repeat(fn, number=args.number, repeat=5))
        costs[name] = best / args.number * 1e6
        print(f"{name:>10}: {costs[name]:.2f} µs per request")
    if args.results is not None:
        c = c_cpu_us(args.results)
        if c is None:
            print(f"no kept hello row of the C responder in {args.results}", file=sys.stderr)
            return 1
        floor = (c + costs["all three"]) / c
        print(
            f"C responder, kept hello: {c:.2f} µs of CPU per request; with the three steps "
            f"above added, {floor:.2f}x it (issue 12 asks for at most 1.5x)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
