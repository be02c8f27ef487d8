"""The benchmark run: start every backend and one nginx, check answers, time alternating rounds.

``python -m bench --help`` lists the options.  Outputs: ``bench/RESULTS.md``,
``bench/results.png`` and the raw numbers in ``bench/out/results.json`` (logs in
``bench/out/logs/``).  Every process started here is stopped on exit, Ctrl-C or error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import deps, fcgiclient, httpunix
from bench.app import SLOW_BODY
from bench.backends import (
    BUILD,
    ROOT,
    SPECS,
    Backend,
    cpu_seconds,
    fcgi_command,
    make_backend,
    reset_peak_rss,
    status_kib,
    uwsgi_path,
)
from bench.nginx import Front, Nginx, free_port
from bench.nginx import version as nginx_version

BENCH = ROOT / "bench"
OUT = BENCH / "out"
CONNS = 16
#: The mixed-latency workload sends every SLOW_EVERY-th request to /slow (1%).
SLOW_EVERY = 100


@dataclass(frozen=True)
class Workload:
    """One kind of request, timed through nginx (wrk, or httpload when mixed) or directly."""

    key: str
    label: str
    via: str  # "nginx" or "direct"
    path: str
    method: str = "GET"
    body: int = 0
    headers: int = 0
    expect: bytes = b"Hello, world!"
    lua: str | None = None
    keep: bool = False  # direct only: FCGI_KEEP_CONN
    slow_every: int = 0  # nginx only: every Nth request goes to /slow, timed by httpload

    def expect_args(self) -> list[str]:
        if len(self.expect) <= 64:
            return ["-E", self.expect.decode()]
        return ["-l", str(len(self.expect))]


WORKLOADS = [
    Workload("hello", "hello via nginx", "nginx", "/hello"),
    Workload("64k", "64 KiB via nginx", "nginx", "/64k", expect=b"x" * 65536),
    Workload(
        "post16k",
        "POST 16 KiB via nginx",
        "nginx",
        "/post",
        "POST",
        16384,
        expect=b"16384",
        lua="post16k.lua",
    ),
    Workload(
        "upload1m",
        "1 MiB upload via nginx",
        "nginx",
        "/upload",
        "POST",
        1048576,
        expect=b"1048576",
        lua="upload1m.lua",
    ),
    Workload(
        "headers40", "40 headers via nginx", "nginx", "/hello", headers=40, lua="headers40.lua"
    ),
    Workload(
        "mixed",
        "hello + 1% /slow (50 ms) via nginx",
        "nginx",
        "/hello",
        slow_every=SLOW_EVERY,
    ),
    Workload("direct-new", "hello direct, new conn/request", "direct", "/hello"),
    Workload("direct-keep", "hello direct, kept conns", "direct", "/hello", keep=True),
]
WORKLOAD_KEYS = [w.key for w in WORKLOADS]

CURVE_SIZES = [1024, 4096, 16384, 65536, 262144, 1048576]
CURVE_HEADERS = [0, 10, 20, 40, 70, 100]


@dataclass
class Target:
    """A backend as reached by one workload family: nginx (+ keepalive), proxy_pass, direct."""

    name: str
    backend: str  # key into SPECS
    front: str  # "nginx", "nginx-ka", "proxy" (an HTTP peer) or "direct"
    port: int = 0


def log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


# ------------------------------------------------------------------------------ cleanup


class Cleanup:
    """Stops, in reverse order, everything registered; runs once, also on SIGTERM/Ctrl-C."""

    def __init__(self) -> None:
        self._stack: list[tuple[str, Callable[[], None]]] = []

    def push(self, what: str, fn: Callable[[], None]) -> None:
        self._stack.append((what, fn))

    def run(self) -> None:
        while self._stack:
            what, fn = self._stack.pop()
            try:
                fn()
            except Exception as exc:
                log(f"cleanup of {what} failed: {exc}")


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _raise_interrupt(signum: int, _frame: types.FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# ------------------------------------------------------------------------------ checks


def check_direct(
    sock: str, w: Workload, keep: bool = False, protocol: str = "fastcgi"
) -> str | None:
    """One request straight to the backend, in its protocol (``BackendSpec.protocol``).

    Returns an error text or None.  FastCGI (``keep``: on a kept connection), HTTP for an
    HTTP peer, or uwsgi / SCGI with the variables nginx's stock params files send.
    """
    body = b"b" * w.body
    resp: fcgiclient.Response | httpunix.Response
    try:
        if protocol == "http":
            resp = httpunix.request(sock, w.path, w.method, body, w.headers)
        elif protocol != "fastcgi":
            resp = fcgiclient.request_over(protocol, sock, w.path, w.method, body, w.headers)
        elif keep:
            import socket

            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(10)
                s.connect(sock)
                for _ in range(3):
                    resp = fcgiclient.request_on(
                        s, w.path, w.method, body, w.headers, keep_conn=True
                    )
                    if resp.status != 200 or resp.body != w.expect:
                        break
        else:
            resp = fcgiclient.request(sock, w.path, w.method, body, w.headers)
    except Exception as exc:
        return f"{w.key}: {type(exc).__name__}: {exc}"
    if resp.status != 200 or resp.body != w.expect:
        return f"{w.key}: status {resp.status}, body {resp.body[:40]!r} ({len(resp.body)} bytes)"
    return None


def check_http(port: int, w: Workload) -> str | None:
    """One request through nginx; returns an error text or None."""
    headers = {f"X-Bench-Header-{i}": f"value-{i}-abcdefghijklmnopqrstuvwxyz" for i in range(40)}
    hdrs = headers if w.headers else {}
    body = b"b" * w.body if w.body else None
    if body is not None:
        hdrs = {**hdrs, "Content-Type": "application/octet-stream"}
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        conn.request(w.method, w.path, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
    except Exception as exc:
        return f"{w.key}: {type(exc).__name__}: {exc}"
    if resp.status != 200 or data != w.expect:
        return f"{w.key}: HTTP {resp.status}, body {data[:40]!r} ({len(data)} bytes)"
    return None


def full_check(sock: str, keep_conn: bool, protocol: str = "fastcgi") -> str | None:
    """Every route, plus a 404, plus (if the backend keeps connections) a kept connection."""
    extra = [
        Workload("size", "", "direct", "/size/1000", expect=b"x" * 1000),
        Workload("slow", "", "direct", "/slow", expect=SLOW_BODY),
    ]
    for w in WORKLOADS + extra:
        if w.key == "direct-keep":
            continue
        err = check_direct(sock, w, protocol=protocol)
        if err:
            return err
    try:
        if protocol == "http":
            status = httpunix.request(sock, "/nope").status
        elif protocol == "fastcgi":
            status = fcgiclient.request(sock, "/nope").status
        else:
            status = fcgiclient.request_over(protocol, sock, "/nope").status
        if status != 404:
            return f"/nope answered {status}, not 404"
    except Exception as exc:
        return f"/nope: {exc}"
    if keep_conn and protocol == "fastcgi":
        return check_direct(sock, WORKLOADS[0], keep=True)
    return None


# ------------------------------------------------------------------------------ load tools


_UNITS = {"us": 1.0, "ms": 1000.0, "s": 1e6}


def _us(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if not m:
        return float("nan")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> dict[str, Any]:
    res: dict[str, Any] = {"errors": 0}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["rps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    res["requests"] = int(m.group(1)) if m else 0
    for pct, key in (("50", "p50_us"), ("99", "p99_us")):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        res[key] = _us(m.group(1)) if m else float("nan")
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        res["errors"] += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        res["errors"] += sum(int(x) for x in m.groups())
    return res


def _run(cmd: list[str], timeout: float) -> tuple[int, str, str]:
    """Run a load tool; on any interruption kill it *and* reap it before re-raising."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc.returncode, out, err


def run_wrk(port: int, w: Workload, duration: int) -> dict[str, Any]:
    cmd = ["wrk", "-t1", f"-c{CONNS}", f"-d{duration}s", "--latency"]
    if w.lua:
        cmd += ["-s", str(BENCH / "wrk" / w.lua)]
    cmd.append(f"http://127.0.0.1:{port}{w.path}")
    code, out, err = _run(cmd, duration + 60)
    res = parse_wrk(out)
    if code != 0 or res["requests"] == 0:
        res["errors"] = max(1, res["errors"])
        res["failure"] = (err or out).strip()[-300:]
    return res


def run_httpload(port: int, w: Workload, duration: int) -> dict[str, Any]:
    """The mixed-latency workload: ``bench/build/httpload`` times fast and slow requests apart.

    wrk cannot: one latency histogram for all requests, and Lua hooks that cannot pair a
    response with its request (see bench/c/httpload.c).  p50_us/p99_us are the fast ones'.
    """
    cmd = [str(BUILD / "httpload"), "-p", str(port), "-c", str(CONNS), "-d", str(duration)]
    cmd += ["-f", w.path, "-F", w.expect.decode(), "-s", "/slow", "-S", SLOW_BODY.decode()]
    cmd += ["-n", str(w.slow_every)]
    _code, out, err = _run(cmd, duration + 60)
    try:
        res: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"rps": 0.0, "requests": 0, "errors": 1, "failure": err.strip()[-300:]}
    return res


def run_fcgiload(
    sock: str,
    path: str,
    duration: float,
    keep: bool = False,
    body: int = 0,
    headers: int = 0,
    expect: list[str] | None = None,
    conns: int = CONNS,
) -> dict[str, Any]:
    cmd = [str(BUILD / "fcgiload"), "-s", sock, "-c", str(conns), "-d", str(duration), "-p", path]
    if keep:
        cmd.append("-k")
    if body:
        cmd += ["-b", str(body)]
    if headers:
        cmd += ["-H", str(headers)]
    cmd += expect or []
    _code, out, err = _run(cmd, duration + 60)
    try:
        res: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"rps": 0.0, "requests": 0, "errors": 1, "failure": err.strip()[-300:]}
    return res


# ------------------------------------------------------------------------------ the run


class Run:
    """State of one benchmark run."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cleanup = Cleanup()
        self.backends: dict[str, Backend] = {}
        self.unavailable: dict[str, str] = {}
        self.targets: list[Target] = []
        self.runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self.memory: dict[str, dict[str, float]] = {}
        self.curve: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self.notes: list[str] = []
        self.fcgi_cmd_note = ""
        self.tmp = Path(tempfile.mkdtemp(prefix="fcgib-"))
        os.chmod(self.tmp, 0o755)
        self.cleanup.push("temp dir", lambda: shutil.rmtree(self.tmp, ignore_errors=True))

    # -- backends

    def start_backends(self) -> None:
        logs = OUT / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for key in self.args.backends:
            spec = SPECS[key]
            command = None
            if key == "fcgi":
                command, why = fcgi_command(self.args.fcgi_cmd)
                self.fcgi_cmd_note = why
                if command is None:
                    self.unavailable[key] = why
                    log(f"fcgi: unavailable ({why})")
                    continue
            sock = str(self.tmp / f"{key}.sock")
            logfile = logs / f"{key}.log"
            logfile.write_text("")
            be = make_backend(spec, sock, self.args.workers, logfile, command)
            log(f"start {key}: {' '.join(be.argv)}")
            self.cleanup.push(key, be.stop)
            try:
                be.start()
            except RuntimeError as exc:
                tail = logfile.read_text(errors="replace").strip().splitlines()[-3:]
                self.unavailable[key] = f"{exc} {' | '.join(tail)}"
                log(f"{key}: did not start: {self.unavailable[key]}")
                be.stop()
                continue
            err = full_check(sock, spec.keep_conn, spec.protocol)
            if err:
                self.unavailable[key] = f"wrong answer: {err}"
                log(f"{key}: FAILED the correctness check: {err}")
                be.stop()
                continue
            workers = be.workers()
            rss = [status_kib(p, "VmRSS") for p in workers]
            self.memory[key] = {
                "processes": len(be.tree()),
                "workers": len(workers),
                "rss_worker_kib": statistics.mean(rss) if rss else 0.0,
            }
            self.backends[key] = be
            log(f"{key}: ok, {len(workers)} worker(s), pid {be.pid}")

    def start_nginx(self) -> None:
        fronts: list[Front] = []
        for key, be in self.backends.items():
            if SPECS[key].http:
                port = free_port()
                self.targets.append(Target(SPECS[key].label, key, "proxy", port))
                fronts.append(Front(key, port, be.sock, True, "http"))
                continue
            port = free_port()
            self.targets.append(Target(SPECS[key].label, key, "nginx", port))
            fronts.append(Front(key, port, be.sock, False, SPECS[key].protocol))
            if SPECS[key].keep_conn:
                port = free_port()
                name = f"{SPECS[key].label} + keepalive"
                self.targets.append(Target(name, key, "nginx-ka", port))
                fronts.append(Front(f"{key}-ka", port, be.sock, True))
        for key in self.backends:
            if SPECS[key].fastcgi:  # fcgiload speaks FastCGI only
                self.targets.append(Target(SPECS[key].label, key, "direct"))
        nginx = Nginx(self.tmp / "nginx", fronts)
        self.cleanup.push("nginx", nginx.stop)
        nginx.start()
        self.nginx = nginx
        for t in self.targets:
            if t.front != "direct":
                err = check_http(t.port, WORKLOADS[0])
                if err:
                    log(f"{t.name}: nginx check failed: {err}")

    # -- timing

    def targets_for(self, w: Workload) -> list[Target]:
        if w.via == "direct":
            return [t for t in self.targets if t.front == "direct"]
        return [t for t in self.targets if t.front != "direct"]

    def time_one(self, t: Target, w: Workload, duration: int) -> dict[str, Any]:
        be = self.backends[t.backend]
        if not be.alive() and not self.revive(t.backend, w):
            return {"rps": 0.0, "requests": 0, "errors": 1, "failure": "backend died"}
        err = check_direct(be.sock, w) if t.front == "direct" else check_http(t.port, w)
        if not err and w.slow_every:
            err = check_http(t.port, Workload("slow", "", "nginx", "/slow", expect=SLOW_BODY))
        if err:
            return {"rps": 0.0, "requests": 0, "errors": 1, "failure": f"check: {err}"}
        workers = be.workers()
        if w.key == "upload1m":
            for pid in workers:
                reset_peak_rss(pid)
        pids = be.tree()
        cpu0 = cpu_seconds(pids)
        if t.front == "direct":
            res = run_fcgiload(
                be.sock, w.path, duration, w.keep, w.body, w.headers, w.expect_args()
            )
        elif w.slow_every:
            res = run_httpload(t.port, w, duration)
        else:
            res = run_wrk(t.port, w, duration)
        cpu = cpu_seconds(pids) - cpu0
        res["cpu_s"] = cpu
        res["cpu_per_1k"] = cpu / res["requests"] * 1000 if res.get("requests") else None
        if w.key == "upload1m":
            peak = max((status_kib(p, "VmHWM") for p in workers), default=0)
            res["peak_rss_kib"] = peak
            mem = self.memory[t.backend]
            mem["upload_peak_kib"] = max(mem.get("upload_peak_kib", 0), peak)
        return res

    def revive(self, key: str, w: Workload) -> bool:
        """Restart a backend that exited during the run, so one crash costs one row, not all.

        A peer can die of a client hanging up mid-request (wrk stops with uploads in flight;
        hypercorn's trio worker has been seen to take the whole server down then).  The
        restart is written into RESULTS.md's notes, with the log to read.
        """
        be = self.backends[key]
        note = f"{SPECS[key].label} exited during the run; restarted before `{w.key}`"
        log(note)
        be.stop()
        try:
            be.start()
        except RuntimeError as exc:
            self.notes.append(f"{note}, but it did not come back: {exc}")
            return False
        self.notes.append(f"{note} (see bench/out/logs/{key}.log)")
        return True

    def rounds(self) -> None:
        workloads = [w for w in WORKLOADS if w.key in self.args.workloads]
        for r in range(self.args.rounds):
            for w in workloads:
                for t in self.targets_for(w):
                    res = self.time_one(t, w, self.args.duration)
                    res["round"] = r
                    self.runs.setdefault(w.key, {}).setdefault(t.name, []).append(res)
                    flag = f" ERRORS={res['errors']}" if res.get("errors") else ""
                    why = f" ({res['failure']})" if res.get("failure") else ""
                    log(
                        f"round {r + 1}/{self.args.rounds} {w.key:11} {t.name:34} "
                        f"{res.get('rps', 0):9.0f} req/s{flag}{why}"
                    )

    def memory_after(self) -> None:
        for key, be in self.backends.items():
            rss = [status_kib(p, "VmRSS") for p in be.workers()]
            if rss:
                self.memory[key]["rss_worker_after_kib"] = statistics.mean(rss)

    def cost_curve(self) -> None:
        keys = [k for k in ("fcgi", "c") if k in self.backends]
        series: list[tuple[str, list[int]]] = [
            ("response_bytes", CURVE_SIZES),
            ("request_bytes", CURVE_SIZES),
            ("headers", CURVE_HEADERS),
        ]
        dur = self.args.curve_duration
        for key in keys:
            be = self.backends[key]
            for name, xs in series:
                points = []
                for x in xs:
                    if name == "response_bytes":
                        args: dict[str, Any] = {"path": f"/size/{x}", "expect": ["-l", str(x)]}
                    elif name == "request_bytes":
                        args = {"path": "/post", "body": x, "expect": ["-E", str(x)]}
                    else:
                        args = {"path": "/hello", "headers": x, "expect": ["-E", "Hello, world!"]}
                    pids = be.tree()
                    cpu0 = cpu_seconds(pids)
                    res = run_fcgiload(be.sock, duration=dur, **args)
                    cpu = cpu_seconds(pids) - cpu0
                    n = res.get("requests", 0)
                    points.append(
                        {
                            "x": x,
                            "rps": res.get("rps", 0.0),
                            "us_per_req": 1e6 / res["rps"] if res.get("rps") else None,
                            "cpu_us_per_req": cpu / n * 1e6 if n else None,
                            "errors": res.get("errors", 0),
                        }
                    )
                    log(
                        f"curve {key:5} {name:15} {x:>8} {res.get('rps', 0):9.0f} req/s"
                        f" errors={res.get('errors', 0)}"
                    )
                self.curve.setdefault(key, {})[name] = points

    # -- output

    def machine(self) -> dict[str, str]:
        cpu = "?"
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass

        def ver(cmd: list[str]) -> str:
            try:
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
                return (p.stdout + p.stderr).strip().splitlines()[0]
            except (OSError, IndexError, subprocess.TimeoutExpired):
                return "?"

        from importlib import metadata

        def dist(name: str) -> str:
            try:
                return metadata.version(name)
            except metadata.PackageNotFoundError:
                return "?"

        return {
            "cpu": cpu,
            "cores": str(os.cpu_count()),
            "kernel": platform.release(),
            "nginx": nginx_version(),
            "wrk": ver(["wrk", "-v"]).split()[1] if ver(["wrk", "-v"]) != "?" else "?",
            "python": platform.python_version(),
            "uwsgi": ver([uwsgi_path(), "--version"]),
            "flup": dist("flup"),
            "fcgisgi": dist("fcgisgi"),
            "uvicorn": dist("uvicorn"),
            "uvloop": dist("uvloop"),
            "httptools": dist("httptools"),
            "granian": dist("granian"),
            "gunicorn": dist("gunicorn"),
            "hypercorn": dist("hypercorn"),
            "fcgi": dist("fcgi"),
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        }

    def results(self) -> dict[str, Any]:
        return {
            "machine": self.machine(),
            "settings": {
                "rounds": self.args.rounds,
                "duration": self.args.duration,
                "curve_duration": self.args.curve_duration,
                "workers": self.args.workers,
                "connections": CONNS,
                "fcgi_command": self.fcgi_cmd_note,
            },
            "backends": {
                k: {
                    "label": SPECS[k].label,
                    "note": SPECS[k].note,
                    "protocol": SPECS[k].protocol,
                    "argv": " ".join(self.backends[k].argv) if k in self.backends else "",
                }
                for k in self.args.backends
            },
            "unavailable": self.unavailable,
            "workloads": [
                asdict(w) | {"expect": len(w.expect)}
                for w in WORKLOADS
                if w.key in self.args.workloads
            ],
            "targets": [asdict(t) for t in self.targets],
            "runs": self.runs,
            "memory": self.memory,
            "curve": self.curve,
            "notes": self.notes,
        }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round of 2 s, short curve")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    p.add_argument("--duration", type=int, default=5, help="seconds per timed run (default 5)")
    p.add_argument(
        "--curve-duration",
        type=float,
        default=None,
        help="seconds per cost-curve point (default 2, --quick 1; 0 skips the curve)",
    )
    p.add_argument("--workers", type=int, default=2, help="processes per backend (default 2)")
    p.add_argument(
        "--backends", default=",".join(SPECS), help=f"comma-separated subset of {','.join(SPECS)}"
    )
    p.add_argument(
        "--workloads",
        default=",".join(WORKLOAD_KEYS),
        help=f"comma-separated subset of {','.join(WORKLOAD_KEYS)}",
    )
    p.add_argument(
        "--fcgi-cmd",
        default=None,
        help="fcgi command template ({python} {sock} {workers} placeholders)",
    )
    p.add_argument("--no-install", action="store_true", help="skip the apt/pip checks")
    p.add_argument(
        "--output",
        default=str(BENCH),
        help="directory for RESULTS.md and results.png (default bench/)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.duration = 1, 2
    if args.curve_duration is None:
        args.curve_duration = 1.0 if args.quick else 2.0
    args.backends = [b for b in args.backends.split(",") if b]
    args.workloads = [w for w in args.workloads.split(",") if w]
    bad = [b for b in args.backends if b not in SPECS] + [
        w for w in args.workloads if w not in WORKLOAD_KEYS
    ]
    if bad:
        p.error(f"unknown backend/workload: {bad}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # installed explicitly: a shell's background job inherits SIGINT ignored
    old = {sig: signal.signal(sig, _raise_interrupt) for sig in _STOP_SIGNALS}
    deps.ensure_all(install=not args.no_install)
    from bench import report

    run = Run(args)
    started = time.monotonic()
    try:
        run.start_backends()
        if not run.backends:
            log("no backend started")
            return 1
        run.start_nginx()
        run.rounds()
        run.memory_after()
        if args.curve_duration > 0:
            run.cost_curve()
    except KeyboardInterrupt:
        log("interrupted: stopping everything")
        return 130
    finally:
        for sig in _STOP_SIGNALS:  # a second Ctrl-C must not cut the cleanup short
            signal.signal(sig, signal.SIG_IGN)
        run.cleanup.run()
        for sig, handler in old.items():
            signal.signal(sig, handler)
    data = run.results()
    data["settings"]["wall_seconds"] = round(time.monotonic() - started)
    out = Path(args.output)
    raw = OUT if out.resolve() == BENCH.resolve() else out  # a side run keeps off bench/out
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "results.json").write_text(json.dumps(data, indent=1))
    md = report.write(data, out / "RESULTS.md", out / "results.png")
    print(md)
    log(f"wrote {out / 'RESULTS.md'}, {out / 'results.png'}, {raw / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
