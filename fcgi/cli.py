"""The ``fcgi`` command: ``serve`` an app, send a test ``request``, ``check-config``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from fcgi import __version__
from fcgi.app_loader import AppImportError, load_app
from fcgi.errors import ConfigError, FastCGIError

#: Exit status for a usage or configuration mistake (argparse's own).
EXIT_USAGE = 2
#: Exit status when the app cannot be imported, from a single process as from
#: a pool (fcgi.pool.worker_process.EXIT_BOOT_ERROR).
EXIT_APP_IMPORT = 3

LOG_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"


def _octal(text: str) -> int:
    try:
        return int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal file mode") from None


def _size(text: str) -> int:
    from fcgi.pool.config import parse_memory

    try:
        return parse_memory(text, "--max-body-size")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fcgi", description="FastCGI server and process manager for Python web apps."
    )
    parser.add_argument("--version", action="version", version=f"fcgi {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser("serve", help="serve a WSGI app over FastCGI")
    serve.add_argument(
        "app", nargs="?", metavar="MODULE:APP", help="module:app or module:factory()"
    )
    serve.add_argument(
        "--bind",
        "-b",
        action="append",
        metavar="ADDR",
        help="unix:/path, HOST:PORT, [V6]:PORT or fd://N (repeatable); "
        "default: the socket on fd 0 if a web server passed one, else run once as CGI",
    )
    serve.add_argument("--chdir", metavar="DIR", help="change to DIR before importing the app")
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error", "critical"],
        help="default: info",
    )
    serve.add_argument(
        "--script-name",
        metavar="PATH",
        help="mount point of the app (SCRIPT_NAME); default: derived from the web server params",
    )
    serve.add_argument(
        "--read-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="close a connection silent for this long (default: 30)",
    )
    serve.add_argument(
        "--socket-mode",
        type=_octal,
        default=0o660,
        metavar="MODE",
        help="file mode of unix sockets (default: 0660)",
    )
    serve.add_argument("--backlog", type=int, default=511, help="listen backlog (default: 511)")
    serve.add_argument(
        "--max-params",
        type=int,
        default=1000,
        metavar="N",
        help="most FastCGI params per request (default: 1000)",
    )
    serve.add_argument(
        "--max-params-bytes",
        type=int,
        default=256 * 1024,
        metavar="BYTES",
        help="largest PARAMS stream per request (default: 262144)",
    )
    serve.add_argument(
        "--allowed-clients",
        default="",
        metavar="ADDRS",
        help="comma-separated TCP peers allowed to connect (default: any)",
    )

    serve.add_argument(
        "--worker",
        choices=["sync", "trio"],
        default="sync",
        help="sync: one request at a time (default); trio: many connections and "
        "requests at once (ASGI apps always get it)",
    )
    serve.add_argument(
        "--interface",
        choices=["auto", "wsgi", "asgi"],
        default="auto",
        help="the app's interface (default: detect)",
    )
    serve.add_argument(
        "--threads",
        type=int,
        default=10,
        metavar="N",
        help="trio worker: threads running WSGI requests at once (default: 10)",
    )
    serve.add_argument(
        "--max-conns",
        type=int,
        default=256,
        metavar="N",
        help="trio worker: most connections at once (default: 256)",
    )
    serve.add_argument(
        "--max-reqs",
        type=int,
        default=256,
        metavar="N",
        help="trio worker: most requests in progress at once (default: 256)",
    )

    serve.add_argument(
        "--max-body-size",
        type=_size,
        default=512 * 1024 * 1024,
        metavar="SIZE",
        help="largest request body, e.g. 512M; larger ones get 413 (0: no limit; default: 512M)",
    )
    serve.add_argument(
        "--request-header-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="time a connection has to send its whole request head (default: 5)",
    )
    serve.add_argument(
        "--send-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="total time one response may wait for the web server to read it (default: 60)",
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
    return 2


def _wants_pool(args: argparse.Namespace) -> bool:
    """Any process-manager flag (or a config file) means: run the master."""
    if args.workers is not None or args.config:
        return True
    return any(value is not None for name, value in vars(args).items() if name.startswith("pool_"))


def _serve(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if _wants_pool(args):
        return _serve_pool(args)
    from fcgi.escape import escaping_handler

    # Escaping: a request URI cannot forge a line of the log (fcgi.escape).
    handler = escaping_handler(logging.StreamHandler(sys.stderr), LOG_FORMAT)
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler])
    if not args.app:
        parser.error("serve needs an app: fcgi serve MODULE:APP")
    from fcgi.pool.reexec import block_signals, unblock_signals
    from fcgi.server import serve

    # Until the server has its handlers, a signal waits instead of killing a
    # process that is still importing the app (run_single lets them through).
    block_signals()
    try:
        if args.chdir:
            os.chdir(args.chdir)
        app = load_app(args.app)
        serve(
            app,
            args.bind,
            socket_mode=args.socket_mode,
            backlog=args.backlog,
            read_timeout=args.read_timeout,
            script_name=args.script_name,
            max_params=args.max_params,
            max_params_bytes=args.max_params_bytes,
            allowed_clients=args.allowed_clients,
            worker=args.worker,
            interface=args.interface,
            threads=args.threads,
            max_conns=args.max_conns,
            max_reqs=args.max_reqs,
            max_body_size=args.max_body_size,
            request_header_timeout=args.request_header_timeout,
            send_timeout=args.send_timeout,
            app_spec=args.app,
        )
    except AppImportError as exc:
        print(f"fcgi: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if exc.usage else EXIT_APP_IMPORT
    except (ConfigError, OSError) as exc:
        print(f"fcgi: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except FastCGIError as exc:  # the app failed to start (ASGI lifespan startup)
        print(f"fcgi: error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 0
    finally:
        unblock_signals()
    return 0


def _serve_pool(args: argparse.Namespace) -> int:
    from fcgi.pool.arguments import config_from_args
    from fcgi.pool.master import run_master
    from fcgi.pool.preflight import StartupError

    try:
        return run_master(config_from_args(args))
    except StartupError as exc:
        for problem in exc.problems:
            print(f"fcgi: error: {problem.message}", file=sys.stderr)
        return exc.exit_code
    except ConfigError as exc:
        print(f"fcgi: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
