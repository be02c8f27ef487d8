"""``python -m conformance --server 'CMD {sock}'``: run the suite against any FastCGI server."""

from __future__ import annotations

import argparse
import sys

from conformance.cases import Result
from conformance.runner import ServerStartError, run_suite, select, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conformance", description=__doc__)
    parser.add_argument("--server", required=True, help="command with {sock} or {addr}")
    parser.add_argument("--name", default=None, help="label for the server in the output")
    parser.add_argument("-k", dest="pattern", default=None, help="only cases matching this")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per wait")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    args = parser.parse_args(argv)

    cases = select(args.pattern)
    if args.list:
        for c in cases:
            print(f"{c.name:32} {c.doc}")
        return 0
    if "{sock}" not in args.server and "{addr}" not in args.server:
        parser.error("--server needs a {sock} or {addr} placeholder")
    if not cases:
        print(f"no case matches {args.pattern!r}", file=sys.stderr)
        return 2
    width = max(len(c.name) for c in cases)
    print(f"server: {args.name or args.server}")
    print(f"{'case':{width}}  result  detail")

    def show(r: Result) -> None:
        print(f"{r.name:{width}}  {'PASS' if r.passed else 'FAIL':6}  {r.detail}", flush=True)

    try:
        results = run_suite(args.server, cases, args.timeout, show)
    except ServerStartError as exc:
        print(f"could not start server: {exc}", file=sys.stderr)
        print(f"0 passed, {len(cases)} failed")
        return 1
    print(summary(results))
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
