"""``python -m fcgi.pool [MODULE:APP] --bind ADDR [pool flags]``: run a master directly.

The ``fcgi serve`` command is the public way in; this entry point runs the
same master with the same flags and is what the pool's tests start.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fcgi.errors import ConfigError
from fcgi.pool.arguments import add_pool_arguments, check_config_command, config_from_args
from fcgi.pool.master import run_master


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fcgi.pool")
    parser.add_argument("app", nargs="?", metavar="MODULE:APP")
    parser.add_argument("--bind", "-b", action="append", metavar="ADDR")
    parser.add_argument("--chdir", metavar="DIR")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--check-config", metavar="FILE")
    add_pool_arguments(parser)
    args = parser.parse_args(argv)
    if args.check_config:
        return check_config_command(args.check_config)
    try:
        config = config_from_args(args)
        return run_master(config)
    except ConfigError as exc:
        print(f"fcgi: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
