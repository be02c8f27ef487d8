"""The ``fcgi`` command: ``serve`` an app, send a test ``request``, ``check-config``."""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from fcgi import __version__
from fcgi.app_loader import AppImportError, load_app
from fcgi.errors import ConfigError, FastCGIError
from fcgi.exit_codes import EXIT_APP_IMPORT, EXIT_OK, EXIT_USAGE

if TYPE_CHECKING:
    from fcgi.pool.config import MasterConfig

__all__ = ["EXIT_APP_IMPORT", "EXIT_USAGE", "build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """argparse, with a "did you mean" for a mistyped flag (``--max-chidren``).

    An unknown flag is reported by the top parser, which does not know the
    subcommands' flags: the suggestions come from every parser of the command.
    """

    def error(self, message: str) -> NoReturn:
        prefix = "unrecognized arguments: "
        if message.startswith(prefix):
            known = sorted(_option_strings(self))
            hints = []
            for word in message[len(prefix) :].split():
                if word.startswith("--"):
                    close = difflib.get_close_matches(word.split("=", 1)[0], known, n=1)
                    if close:
                        hints.append(f"{word.split('=', 1)[0]}: did you mean {close[0]}?")
            if hints:
                message += " (" + "; ".join(hints) + ")"
        super().error(message)


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every ``--flag`` of ``parser`` and of its subcommands."""
    found = {s for s in parser._option_string_actions if s.startswith("--")}
    for action in parser._actions:  # argparse has no public view of these
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _option_strings(sub)
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fcgi", description="FastCGI server and process manager for Python web apps."
    )
    parser.add_argument("--version", action="version", version=f"fcgi {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser("serve", help="serve a WSGI or ASGI app over FastCGI")
    serve.add_argument(
        "app", nargs="?", metavar="MODULE:APP", help="module:app or module:factory()"
    )

    from fcgi.pool.arguments import add_pool_arguments

    add_pool_arguments(serve)

    check = commands.add_parser(
        "check-config", help="validate a TOML configuration file and print the effective settings"
    )
    check.add_argument("file", metavar="FILE")

    request = commands.add_parser(
        "request", help="send one request to a FastCGI server and print the response"
    )
    from fcgi.client import add_request_arguments

    add_request_arguments(request)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "request":
        from fcgi.client import request_command

        return request_command(args)
    if args.command == "serve":
        return _serve(parser, args)
    if args.command == "check-config":
        from fcgi.pool.arguments import check_config_command

        return check_config_command(args.file)
    parser.error(f"unknown command {args.command}")
    return EXIT_USAGE


def _wants_pool(args: argparse.Namespace) -> bool:
    """Run a master? Only for a file, ``--workers`` or a setting that needs several
    processes (the ``master`` column of the settings table); anything else is
    served by this one process."""
    from fcgi.pool.arguments import wants_master

    return wants_master(args)


def _serve(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from fcgi.pool.arguments import config_from_args, given_settings, print_errors
    from fcgi.pool.config import POOL_KEYS, format_toml

    master = _wants_pool(args)
    try:
        config = config_from_args(args, single=not master)
    except ConfigError as exc:
        print_errors(exc)
        return EXIT_USAGE
    if args.print_config:
        sys.stdout.write(format_toml(config))
        return EXIT_OK
    if master:
        return _serve_pool(config)
    from fcgi.pool.logs import setup_logging

    try:
        # The same destinations as a pool's master: stderr, a file, syslog or
        # a dictConfig file, every line escaped (fcgi.escape).
        setup_logging(config)
    except ConfigError as exc:
        print_errors(exc)
        return EXIT_USAGE
    if not args.app:
        parser.error("serve needs an app: fcgi serve MODULE:APP")
    (pool,) = config.pools
    # What was given, checked above; chdir happens here, before the import.
    skip = {"app", "chdir", "listen"}
    settings = {k: getattr(pool, k) for k in given_settings(args) if k in POOL_KEYS - skip}
    from fcgi.pool.reexec import block_signals, unblock_signals
    from fcgi.server import serve

    # Until the server has its handlers, a signal waits instead of killing a
    # process that is still importing the app (run_single lets them through).
    block_signals()
    try:
        if pool.chdir:
            os.chdir(pool.chdir)
        app = load_app(args.app)
        serve(app, list(pool.listen) or None, app_spec=args.app, **settings)
    except AppImportError as exc:
        print(f"fcgi: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if exc.usage else EXIT_APP_IMPORT
    except ConfigError as exc:
        print_errors(exc)
        return EXIT_USAGE
    except OSError as exc:
        print(f"fcgi: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except FastCGIError as exc:  # the app failed to start (ASGI lifespan startup)
        print(f"fcgi: error: {exc}", file=sys.stderr)
        return EXIT_APP_IMPORT
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        unblock_signals()
    return EXIT_OK


def _serve_pool(config: MasterConfig) -> int:
    from fcgi.pool.arguments import print_errors
    from fcgi.pool.master import run_master
    from fcgi.pool.preflight import StartupError

    try:
        return run_master(config)
    except StartupError as exc:
        for problem in exc.problems:
            print(f"fcgi: error: {problem.message}", file=sys.stderr)
        return exc.exit_code
    except ConfigError as exc:
        print_errors(exc)
        return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
