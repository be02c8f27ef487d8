"""The ``fcgi`` command: ``serve`` an app, send a test ``request``, ``check-config``.

The top of the import stack: argparse, what each command prints and its exit
status live here; the work is done by :mod:`fcgi.server` (one process),
:mod:`fcgi.pool` (a master and its workers) and :mod:`fcgi.client` (``fcgi
request``, a blocking client on the sans-IO :mod:`fcgi.client_connection`;
:mod:`fcgi.one_request_client` for a ``uwsgi:`` or ``scgi:`` address).
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import sys
from collections.abc import Sequence
from typing import BinaryIO, NoReturn

from fcgi import __version__
from fcgi.app_loader import AppImportError, load_app
from fcgi.asgi import LifespanFailure
from fcgi.client import (
    DEFAULT_TIMEOUT,
    FastCGIClient,
    Response,
    UsageError,
    build_params,
    parse_address,
)
from fcgi.errors import ConfigError, FastCGIError
from fcgi.exit_codes import EXIT_APP_IMPORT, EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from fcgi.one_request_client import OneRequestClient
from fcgi.pool.arguments import (
    add_pool_arguments,
    check_config_command,
    config_from_args,
    given_settings,
    print_errors,
    wants_master,
)
from fcgi.pool.config import POOL_KEYS, MasterConfig, format_toml
from fcgi.pool.logs import setup_logging
from fcgi.pool.master import run_master
from fcgi.pool.preflight import StartupError
from fcgi.pool.reexec import block_signals, unblock_signals
from fcgi.records import Role
from fcgi.sockets import FASTCGI, split_protocol

__all__ = [
    "EXIT_APP_IMPORT",
    "EXIT_HTTP_ERROR",
    "EXIT_USAGE",
    "add_request_arguments",
    "build_parser",
    "main",
    "request_command",
]

#: Exit code of ``fcgi request --fail`` for a 4xx or 5xx answer: curl's for
#: ``--fail`` (CURLE_HTTP_RETURNED_ERROR), so scripts written for curl read it.
EXIT_HTTP_ERROR = 22


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

    add_pool_arguments(serve)

    check = commands.add_parser(
        "check-config", help="validate a TOML configuration file and print the effective settings"
    )
    check.add_argument("file", metavar="FILE")

    request = commands.add_parser(
        "request",
        help="send one request to a FastCGI (or uwsgi, SCGI) server and print the response",
    )
    add_request_arguments(request)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "request":
        return request_command(args)
    if args.command == "serve":
        return _serve(parser, args)
    if args.command == "check-config":
        return check_config_command(args.file)
    parser.error(f"unknown command {args.command}")
    return EXIT_USAGE


def _wants_pool(args: argparse.Namespace) -> bool:
    """Run a master? Only for a file, ``--workers`` or a setting that needs several
    processes (the ``master`` column of the settings table); anything else is
    served by this one process."""
    return wants_master(args)


def _serve(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
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
    # Start-up cost: the server loads the drivers and the adapters, which
    # ``fcgi request`` and ``check-config`` never use.
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
    except LifespanFailure:
        # The app's startup failed: the worker logged why, once, in the log's
        # own form (a traceback's lines marked as such); not printed again.
        return EXIT_APP_IMPORT
    except FastCGIError as exc:
        print(f"fcgi: error: {exc}", file=sys.stderr)
        return EXIT_APP_IMPORT
    except KeyboardInterrupt:
        # SIGINT, the stop at once: the request in progress, if any, was cut short.
        logging.getLogger("fcgi.serve").info("stopped (SIGINT: stop at once)")
        return EXIT_OK
    finally:
        unblock_signals()
    return EXIT_OK


def _serve_pool(config: MasterConfig) -> int:
    try:
        return run_master(config)
    except StartupError as exc:
        for problem in exc.problems:
            print(f"fcgi: error: {problem.message}", file=sys.stderr)
        return exc.exit_code
    except ConfigError as exc:
        print_errors(exc)
        return EXIT_USAGE


# -- ``fcgi request`` ------------------------------------------------------------------------


def add_request_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``fcgi request ADDR [PATH?QUERY]``."""
    parser.add_argument(
        "address",
        metavar="ADDR",
        help="backend address: unix:/path, /abs/path, HOST:PORT, [IPv6]:PORT, "
        "or PORT for 127.0.0.1:PORT (as fcgi serve --bind); prefixed with uwsgi: or "
        "scgi: to speak that protocol instead of FastCGI",
    )
    parser.add_argument(
        "target",
        metavar="PATH?QUERY",
        nargs="?",
        default="/",
        help="request path and query string (default /); a full http:// URL also works",
    )
    parser.add_argument(
        "-X",
        "--request",
        dest="method",
        metavar="METHOD",
        help="request method (default GET, or POST with -d)",
    )
    # Each use of these adds one more (action="append"), in the order given.
    repeatable: list[tuple[tuple[str, ...], str, list[str] | None, str, str]] = [
        (
            ("-H", "--header"),
            "headers",
            [],
            "'NAME: VALUE'",
            "add a request header, sent as HTTP_NAME (repeatable)",
        ),
        (
            ("-d", "--data"),
            "data",
            None,
            "DATA|@FILE",
            "request body; @FILE reads a file, @- standard input (repeats are joined with &)",
        ),
        (
            ("--param",),
            "params",
            [],
            "NAME=VALUE",
            "set a raw FastCGI param, overriding the defaults (repeatable)",
        ),
    ]
    for flags, dest, default, metavar, text in repeatable:
        parser.add_argument(
            *flags, dest=dest, action="append", default=default, metavar=metavar, help=text
        )
    parser.add_argument(
        "-i",
        "--include",
        action="store_true",
        help="print the status line and response headers before the body",
    )
    parser.add_argument(
        "-f",
        "--fail",
        action="store_true",
        help=f"like curl --fail: on a 4xx or 5xx answer print no body, only the status "
        f"line on stderr, and exit {EXIT_HTTP_ERROR} (for health checks)",
    )
    parser.add_argument(
        "--role",
        choices=("responder", "authorizer", "filter"),
        default="responder",
        help="FastCGI role of the request (default responder; uwsgi and SCGI have only that)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"give up after this long without progress (default {DEFAULT_TIMEOUT:g})",
    )


def _read_body(items: list[str] | None, stdin: BinaryIO) -> bytes | None:
    if not items:
        return None
    parts = []
    for item in items:
        if item == "@-":
            parts.append(stdin.read())
        elif item.startswith("@"):
            try:
                with open(item[1:], "rb") as f:
                    parts.append(f.read())
            except OSError as exc:
                raise UsageError(f"cannot read {item[1:]}: {exc.strerror or exc}") from None
        else:
            parts.append(os.fsencode(item))
    return b"&".join(parts)


def _write_response(
    response: Response, include: bool, out: BinaryIO, err: BinaryIO, failed: bool = False
) -> None:
    """Print ``response``; with ``failed`` (``--fail`` and a 4xx/5xx) only say so on ``err``.

    The backend's stderr and our own diagnosis are printed either way: they
    say why a health check failed.
    """
    if response.stderr:
        err.write(response.stderr)
        if not response.stderr.endswith(b"\n"):
            err.write(b"\n")
        err.flush()
    if response.error:
        err.write(f"fcgi request: {response.error}\n".encode())
        err.flush()
    if failed:
        line = f"HTTP/1.1 {response.status} {response.reason}".rstrip()
        err.write(f"fcgi request: the backend answered {line}\n".encode("utf-8", "replace"))
        err.flush()
        return
    if include:
        head = [f"HTTP/1.1 {response.status} {response.reason}".rstrip()]
        head += [f"{name}: {value}" for name, value in response.headers]
        out.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1", "replace"))
    out.write(response.body)
    out.flush()


def request_command(args: argparse.Namespace) -> int:
    """Run ``fcgi request``: 0 for a 1xx-4xx answer, 1 for a 5xx, 2 if there was none.

    With ``--fail``, 22 for any 4xx or 5xx (as ``curl --fail``): a health
    check that pings a path the backend does not serve then fails, instead of
    passing on the 404.
    """
    stdout = sys.stdout.buffer
    stderr = sys.stderr.buffer
    try:
        protocol, address = split_protocol(args.address)
        body = _read_body(args.data, sys.stdin.buffer)
        params = build_params(args.target, args.method, args.headers, body, args.params)
        if protocol == FASTCGI:
            client: FastCGIClient | OneRequestClient = FastCGIClient(address, timeout=args.timeout)
        elif args.role != "responder":
            raise UsageError(f"--role {args.role}: {protocol} requests have no roles")
        else:
            parse_address(address)  # a typo fails here, as FastCGIClient's does
            client = OneRequestClient(address, protocol, timeout=args.timeout)
    except (UsageError, ValueError, ConfigError) as exc:
        stderr.write(f"fcgi request: {exc}\n".encode())
        stderr.flush()
        return EXIT_USAGE
    role = {"responder": Role.RESPONDER, "authorizer": Role.AUTHORIZER, "filter": Role.FILTER}[
        args.role
    ]
    try:
        with client:
            if isinstance(client, FastCGIClient):
                response = client.request(params, body or b"", role=role)
            else:
                response = client.request(params, body or b"")
    except FastCGIError as exc:
        message = str(exc) if address in str(exc) else f"{address}: {exc}"
        stderr.write(f"fcgi request: {message}\n".encode())
        stderr.flush()
        return 2  # no answer at all (see the docstring); exit_codes.py has no name for it
    failed = args.fail and response.status >= 400
    try:
        _write_response(response, args.include, stdout, stderr, failed)
    except BrokenPipeError:
        # The reader went away (``| head``): not our error. Keep Python quiet at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    if failed:
        return EXIT_HTTP_ERROR
    return EXIT_FAILURE if response.status >= 500 else EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
