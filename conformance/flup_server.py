"""Serve :mod:`conformance.app` with flup 1.0.3, the Python baseline fcgi is compared to.

Usage: ``python -m conformance.flup_server ADDRESS [--fork]`` where ADDRESS is a unix
socket path or ``host:port``. All three roles are enabled so flup is judged on what it
does with them, not refused up front.
"""

from __future__ import annotations

import argparse
import os
import sys

from conformance.app import app
from conformance.client import parse_address


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conformance.flup_server")
    parser.add_argument("address", help="unix socket path or host:port")
    parser.add_argument("--fork", action="store_true", help="use fcgi_fork instead of fcgi_single")
    args = parser.parse_args(argv)

    from flup.server.fcgi_base import (  # type: ignore[import-untyped]
        FCGI_AUTHORIZER,
        FCGI_FILTER,
        FCGI_RESPONDER,
    )

    if args.fork:
        from flup.server.fcgi_fork import WSGIServer  # type: ignore[import-untyped]
    else:
        from flup.server.fcgi_single import WSGIServer  # type: ignore[import-untyped]

    address = parse_address(args.address)
    if isinstance(address, str) and os.path.exists(address):
        os.unlink(address)
    server = WSGIServer(
        app,
        bindAddress=address,
        roles=(FCGI_RESPONDER, FCGI_AUTHORIZER, FCGI_FILTER),
    )
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
