"""One trio worker process against one sync worker process.

    python -m bench.trio_vs_sync              # ~1.5 min; writes bench/TRIO.md
    python -m bench.trio_vs_sync --duration 2 --output /tmp/TRIO.md

Two workloads, each straight over FastCGI on a unix socket (no web server):

* **wait 50 ms**: the app sleeps 50 ms per request (a database or an upstream
  API), 50 requests in flight, one new connection per request (nginx's default).
  The sync worker serves one at a time; the trio worker serves them together,
  WSGI in its thread pool (``--threads``) or an ASGI app in trio itself.
* **hello world**: the app answers at once; this is the price of the trio
  worker's machinery per request (task, thread hop for WSGI, locks) next to the
  sync worker's plain loop. One kept connection (per-request cost only), and 8
  connections at once, one per request.

The load comes from ``bench/build/fcgiload`` (C, epoll) when it is built, else
from a small asyncio client in this file. Every server started here is stopped
(SIGTERM, then SIGKILL) before the script returns.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FCGILOAD = HERE / "build" / "fcgiload"
WAIT_SECONDS = 0.05

# -- the apps (served as bench.trio_vs_sync:wsgi_app / :asgi_app) ---------------------------


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    if environ.get("PATH_INFO", "").endswith("/wait"):
        time.sleep(WAIT_SECONDS)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"Hello, World!"]


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"].endswith("/wait"):
        import trio

        await trio.sleep(WAIT_SECONDS)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13")],
        }
    )
    await send({"type": "http.response.body", "body": b"Hello, World!"})


# -- servers ---------------------------------------------------------------------------------


@dataclass
class Server:
    label: str
    app: str
    args: tuple[str, ...]


SERVERS = {
    "sync": Server("sync worker (WSGI)", "wsgi_app", ("--worker", "sync")),
    "trio-wsgi": Server("trio worker, WSGI, 10 threads", "wsgi_app", ("--worker", "trio")),
    "trio-wsgi-64": Server(
        "trio worker, WSGI, 64 threads", "wsgi_app", ("--worker", "trio", "--threads", "64")
    ),
    "trio-asgi": Server("trio worker, ASGI", "asgi_app", ("--worker", "trio")),
}


@contextmanager
def running(server: Server, sock: str) -> Iterator[subprocess.Popen[bytes]]:
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fcgi",
                "serve",
                f"bench.trio_vs_sync:{server.app}",
                "--bind",
                f"unix:{sock}",
                "--log-level",
                "warning",
                *server.args,
            ],
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                probe = socket.socket(socket.AF_UNIX)
                try:
                    probe.connect(sock)
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        err.seek(0)
                        text = err.read().decode()
                        raise RuntimeError(f"{server.label} did not start:\n{text}") from None
                    time.sleep(0.05)
                finally:
                    probe.close()
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


# -- load ------------------------------------------------------------------------------------


@dataclass
class Result:
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float


def load_c(sock: str, path: str, conns: int, seconds: float, keep: bool) -> Result:
    cmd = [str(FCGILOAD), "-s", sock, "-c", str(conns), "-d", str(seconds), "-p", path]
    cmd += ["-E", "Hello, World!"]
    if keep:
        cmd.append("-k")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=seconds + 60)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return Result(
        int(data["requests"]),
        int(data["errors"]),
        float(data["rps"]),
        data["p50_us"] / 1000,
        data["p99_us"] / 1000,
    )


def _request_bytes(path: str, keep: bool) -> bytes:
    def record(rtype: int, content: bytes) -> bytes:
        pad = -len(content) & 7
        return struct.pack("!BBHHBx", 1, rtype, 1, len(content), pad) + content + bytes(pad)

    pairs = b""
    for name, value in (
        (b"REQUEST_METHOD", b"GET"),
        (b"SCRIPT_NAME", path.encode()),
        (b"REQUEST_URI", path.encode()),
        (b"QUERY_STRING", b""),
        (b"SERVER_NAME", b"bench"),
        (b"SERVER_PORT", b"80"),
        (b"SERVER_PROTOCOL", b"HTTP/1.1"),
    ):
        pairs += bytes((len(name), len(value))) + name + value
    begin = struct.pack("!HB5x", 1, 1 if keep else 0)
    return record(1, begin) + record(4, pairs) + record(4, b"") + record(5, b"")


async def _load_py(sock: str, path: str, conns: int, seconds: float, keep: bool) -> Result:
    request = _request_bytes(path, keep)
    latencies: list[float] = []
    errors = 0
    stop_at = time.monotonic() + seconds

    async def read_reply(reader: asyncio.StreamReader) -> bool:
        ok = False
        while True:
            head = await reader.readexactly(8)
            _, rtype, _, clen, plen = struct.unpack("!BBHHBx", head)
            content = await reader.readexactly(clen + plen)
            if rtype == 6 and b"Hello, World!" in content:
                ok = True
            if rtype == 3:
                return ok

    async def client() -> None:
        nonlocal errors
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while time.monotonic() < stop_at:
            start = time.perf_counter()
            try:
                if conn is None:
                    conn = await asyncio.open_unix_connection(sock)
                reader, writer = conn
                writer.write(request)
                ok = await read_reply(reader)
                if not keep:
                    writer.close()
                    conn = None
            except (OSError, asyncio.IncompleteReadError):
                errors += 1
                conn = None
                continue
            latencies.append(time.perf_counter() - start)
            if not ok:
                errors += 1
        if conn is not None:
            conn[1].close()

    began = time.monotonic()
    await asyncio.gather(*(client() for _ in range(conns)))
    elapsed = time.monotonic() - began
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)] if latencies else 0.0
    return Result(
        len(latencies),
        errors,
        len(latencies) / elapsed,
        (statistics.median(latencies) if latencies else 0.0) * 1000,
        p99 * 1000,
    )


def load(sock: str, path: str, conns: int, seconds: float, keep: bool) -> Result:
    if FCGILOAD.exists():
        return load_c(sock, path, conns, seconds, keep)
    return asyncio.run(_load_py(sock, path, conns, seconds, keep))


# -- the runs -----------------------------------------------------------------------------------


@dataclass
class Workload:
    title: str
    path: str
    conns: int
    keep: bool
    servers: tuple[str, ...]


WORKLOADS = [
    Workload(
        "wait 50 ms, 50 in flight, a connection per request",
        "/wait",
        50,
        False,
        ("sync", "trio-wsgi", "trio-wsgi-64", "trio-asgi"),
    ),
    Workload(
        "hello world, 1 kept connection (per-request cost)",
        "/hello",
        1,
        True,
        ("sync", "trio-wsgi", "trio-asgi"),
    ),
    Workload(
        "hello world, 8 in flight, a connection per request",
        "/hello",
        8,
        False,
        ("sync", "trio-wsgi", "trio-asgi"),
    ),
]


def run(seconds: float) -> list[tuple[Workload, list[tuple[Server, Result]]]]:
    results = []
    with tempfile.TemporaryDirectory(prefix="fcgi-bench-") as tmp:
        for workload in WORKLOADS:
            rows = []
            for key in workload.servers:
                server = SERVERS[key]
                sock = os.path.join(tmp, f"{key}.sock")
                with running(server, sock):
                    # Warm up with one connection: a warm-up at full concurrency
                    # would leave requests queued for the measured run.
                    load(sock, workload.path, 1, min(1.0, seconds), workload.keep)
                    result = load(sock, workload.path, workload.conns, seconds, workload.keep)
                print(
                    f"{workload.title:55} {server.label:32} {result.rps:9.0f} req/s "
                    f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms "
                    f"errors {result.errors}",
                    flush=True,
                )
                rows.append((server, result))
            results.append((workload, rows))
    return results


def render(results: list[tuple[Workload, list[tuple[Server, Result]]]], seconds: float) -> str:
    import trio

    client = "bench/build/fcgiload (C, epoll)" if FCGILOAD.exists() else "asyncio client"
    lines = [
        "# Trio worker against sync worker",
        "",
        "Written by `python -m bench.trio_vs_sync` (see its docstring). One worker process",
        "each, on a unix socket, loaded directly over FastCGI (no web server) by "
        f"{client}; {seconds:g} s per row after a warm-up on one connection.",
        "",
        f"Machine: {os.cpu_count()} CPUs, {platform.platform()}, Python "
        f"{platform.python_version()}, trio {trio.__version__}.",
        "",
    ]
    for workload, rows in results:
        lines += [
            f"## {workload.title}",
            "",
            "| server | req/s | p50 ms | p99 ms | requests | errors |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for server, result in rows:
            lines.append(
                f"| {server.label} | {result.rps:.0f} | {result.p50_ms:.2f} | "
                f"{result.p99_ms:.2f} | {result.requests} | {result.errors} |"
            )
        lines.append("")
    by_title = {w.title: dict((s.label, r) for s, r in rows) for w, rows in results}
    wait = by_title[WORKLOADS[0].title]
    hello = by_title[WORKLOADS[1].title]
    sync_wait = wait[SERVERS["sync"].label].rps or 1.0
    sync_hello = hello[SERVERS["sync"].label]
    trio_hello = hello[SERVERS["trio-wsgi"].label]
    asgi_hello = hello[SERVERS["trio-asgi"].label]
    lines += [
        "## Reading it",
        "",
        f"- Waiting apps: the trio worker with 10 threads does "
        f"{wait[SERVERS['trio-wsgi'].label].rps / sync_wait:.1f}x the sync worker's throughput "
        "(10 requests wait at once instead of 1); with 64 threads "
        f"{wait[SERVERS['trio-wsgi-64'].label].rps / sync_wait:.1f}x; an ASGI app, which needs no "
        f"thread, {wait[SERVERS['trio-asgi'].label].rps / sync_wait:.1f}x. The sync worker's "
        "latency is mostly time in the listen queue.",
        f"- The price of concurrency, per hello-world request on a kept connection: "
        f"{1e6 / max(trio_hello.rps, 1) - 1e6 / max(sync_hello.rps, 1):.0f} µs more for WSGI on "
        f"the trio worker (thread hop, task, locks) than on the sync worker "
        f"({sync_hello.rps:.0f} → {trio_hello.rps:.0f} req/s), "
        f"{1e6 / max(asgi_hello.rps, 1) - 1e6 / max(sync_hello.rps, 1):.0f} µs for an ASGI app "
        f"({asgi_hello.rps:.0f} req/s).",
        "- So: the sync worker stays the default for CPU-bound WSGI apps (PHP-FPM's model);",
        "  the trio worker is for apps that wait, for ASGI apps, and for multiplexing clients.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per row (default 5)")
    parser.add_argument("--output", default=str(HERE / "TRIO.md"), help="default: bench/TRIO.md")
    args = parser.parse_args()
    results = run(args.duration)
    text = render(results, args.duration)
    Path(args.output).write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
