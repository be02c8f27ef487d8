"""The backends under test, how to start and stop them, and /proc accounting of their processes.

Every backend serves ``bench.app:app`` (or the same routes in C, or their ASGI twin
``bench.asgi_app:app``) on its own unix socket with ``workers`` processes.  The FastCGI
backends speak FastCGI to nginx; the HTTP peers (uvicorn, granian, gunicorn, hypercorn) are
what a team picks instead of FastCGI, and speak HTTP/1.1 to nginx's ``proxy_pass``.  uWSGI
on its own protocol (``uwsgi_pass``), and fcgi on that protocol and on SCGI
(``scgi_pass``), are issue 14's rows: a uWSGI site moved to fcgi without touching nginx.

Command lines are templates; the placeholders are ``{python}``,
``{sock}``, ``{workers}``, ``{build}`` (compiled C programs), ``{root}`` (repo root) and
``{uwsgi}`` (the uwsgi program) and ``{user}`` (who runs the harness).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "bench" / "build"

#: fcgi's own command line: the one place to change when the CLI changes.  It can also be
#: replaced at run time with ``--fcgi-cmd`` or the ``FCGI_BENCH_CMD`` environment variable.
FCGI_COMMAND = (
    "{python} -m fcgi serve bench.app:app --bind unix:{sock} --workers {workers} --user {user}"
)


def _fcgi_on(protocol: str) -> str:
    """fcgi's command with its listener on ``protocol`` (``uwsgi:unix:...``, ``scgi:...``).

    Derived from :data:`FCGI_COMMAND` so that the rows differ in the protocol alone.
    """
    bind = "--bind unix:"
    if bind not in FCGI_COMMAND:
        raise ValueError(f"FCGI_COMMAND has no {bind!r} to put a protocol prefix on")
    return FCGI_COMMAND.replace(bind, f"--bind {protocol}:unix:")


@dataclass(frozen=True)
class BackendSpec:
    """A backend as the harness knows it."""

    key: str
    label: str
    command: str
    keep_conn: bool  # honours FCGI_KEEP_CONN, so it also gets an nginx keepalive row
    note: str = ""
    # "fastcgi"; "http": behind proxy_pass, checked and timed over HTTP; "uwsgi" or "scgi":
    # behind uwsgi_pass or scgi_pass with the stock params, one request per connection
    protocol: str = "fastcgi"

    @property
    def http(self) -> bool:
        return self.protocol == "http"

    @property
    def fastcgi(self) -> bool:
        """Reachable by the FastCGI tools too (fcgiload: the direct rows, the cost curve)."""
        return self.protocol == "fastcgi"


SPECS: dict[str, BackendSpec] = {
    spec.key: spec
    for spec in (
        BackendSpec(
            "c",
            "C responder (raw protocol)",
            "{build}/responder {sock} {workers}",
            True,
            "bench/c/responder.c: prefork, epoll per process",
        ),
        BackendSpec(
            "libfcgi",
            "C responder (libfcgi)",
            "{build}/libfcgi_responder {sock} {workers}",
            False,
            "bench/c/libfcgi_responder.c on libfcgi's fcgiapp; one connection per process",
        ),
        BackendSpec(
            "uwsgi",
            "uWSGI",
            "{uwsgi} --fastcgi-socket {sock} --processes {workers} --master --disable-logging"
            " --die-on-term --need-app --chmod-socket=666 --pythonpath {root}"
            " --module bench.app:app",
            False,
            "ignores FCGI_KEEP_CONN (closes every connection)",
        ),
        BackendSpec(
            "flup",
            "flup prefork",
            "{python} -m bench.servers flup {sock} {workers}",
            False,
            "flup.server.fcgi_fork, minSpare=maxSpare=maxChildren=workers",
        ),
        BackendSpec(
            "fcgisgi",
            "fcgisgi (asyncio)",
            "{python} -m bench.servers fcgisgi {sock} {workers}",
            False,
            "no prefork of its own: bench/servers.py forks the workers on a shared fd 0",
        ),
        BackendSpec(
            "fcgi", "fcgi", FCGI_COMMAND, True, "this project; the command actually used is above"
        ),
        # fcgi serving the ASGI twin: the asyncio worker, which an ASGI app gets by default,
        # and the trio worker, for issue 12's ASGI targets against uvicorn and hypercorn.
        BackendSpec(
            "fcgi-asgi",
            "fcgi asyncio (ASGI)",
            "{python} -m fcgi serve bench.asgi_app:app --bind unix:{sock} --workers {workers}"
            " --user {user}",
            True,
            "this project, ASGI app (bench/asgi_app.py) on the asyncio worker (uvloop)",
        ),
        BackendSpec(
            "fcgi-trio",
            "fcgi trio (ASGI)",
            "{python} -m fcgi serve bench.asgi_app:app --bind unix:{sock} --workers {workers}"
            " --user {user} --worker trio",
            True,
            "this project, ASGI app (bench/asgi_app.py) on the trio worker",
        ),
        # Issue 14: uWSGI on its own protocol, as most uWSGI sites run it, and fcgi pools
        # listening on that protocol and on SCGI.  Neither protocol keeps a connection, so
        # each has one nginx row and no direct row (fcgiload speaks FastCGI only).
        BackendSpec(
            "uwsgi-native",
            "uWSGI (uwsgi_pass)",
            "{uwsgi} --socket {sock} --processes {workers} --master --disable-logging"
            " --die-on-term --need-app --chmod-socket=666 --pythonpath {root}"
            " --module bench.app:app",
            False,
            "uWSGI's own protocol (--socket), nginx include uwsgi_params + uwsgi_pass",
            "uwsgi",
        ),
        BackendSpec(
            "fcgi-uwsgi",
            "fcgi (uwsgi_pass)",
            _fcgi_on("uwsgi"),
            False,
            "this project on a uwsgi: listener, nginx include uwsgi_params + uwsgi_pass",
            "uwsgi",
        ),
        BackendSpec(
            "fcgi-scgi",
            "fcgi (scgi_pass)",
            _fcgi_on("scgi"),
            False,
            "this project on an scgi: listener, nginx include scgi_params + scgi_pass",
            "scgi",
        ),
        # The HTTP peers, each as its docs recommend it behind nginx (bench/nginx.py gives
        # them an upstream keepalive pool over HTTP/1.1).  Access logs are off, as for the rest.
        BackendSpec(
            "uvicorn",
            "uvicorn (uvloop + httptools)",
            "{python} -m uvicorn bench.asgi_app:app --uds {sock} --workers {workers}"
            " --loop uvloop --http httptools --no-access-log",
            False,
            "HTTP peer, ASGI app (bench/asgi_app.py)",
            "http",
        ),
        BackendSpec(
            "granian",
            "granian (WSGI)",
            "{python} -m granian --interface wsgi --uds {sock} --workers {workers}"
            " --no-access-log bench.app:app",
            False,
            "HTTP peer, WSGI app; Rust HTTP/1.1 stack, the app in its blocking threads",
            "http",
        ),
        BackendSpec(
            "gunicorn",
            "gunicorn sync",
            "{python} -m gunicorn --workers {workers} --worker-class sync --bind unix:{sock}"
            " bench.app:app",
            False,
            "HTTP peer, WSGI app; the sync worker closes the connection after each answer",
            "http",
        ),
        BackendSpec(
            "hypercorn",
            "hypercorn (trio)",
            "{python} -m hypercorn --worker-class trio --workers {workers} --bind unix:{sock}"
            " bench.asgi_app:app",
            False,
            "HTTP peer, ASGI app (bench/asgi_app.py) on trio",
            "http",
        ),
    )
}

#: The HTTP peers whose faster one is the "best HTTP peer" of issue 12's targets.
BEST_HTTP = ("uvicorn", "granian")


def _help(module_args: list[str]) -> tuple[bool, str]:
    try:
        proc = subprocess.run(
            [sys.executable, "-m", *module_args, "--help"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    if proc.returncode != 0:
        return False, (proc.stderr.strip().splitlines() or ["?"])[-1]
    return True, proc.stdout


def fcgi_command(override: str | None = None) -> tuple[str | None, str]:
    """Pick fcgi's command line.  Returns (template or None if unusable, explanation)."""
    override = override or os.environ.get("FCGI_BENCH_CMD")
    if override:
        return override, f"`{override}` (--fcgi-cmd / FCGI_BENCH_CMD)"
    ok, text = _help(["fcgi", "serve"])
    if ok:
        return FCGI_COMMAND, f"`{FCGI_COMMAND}`"
    return None, f"`python -m fcgi serve --help` failed: {text}"


# ----------------------------------------------------------------------------- /proc


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name is in parentheses and may hold spaces: split after the last ')'
    return raw[raw.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants, found by scanning /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime (+ reaped children's) of the given processes, in seconds."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            # after the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
            ticks += sum(int(fields[i]) for i in (11, 12, 13, 14))
    return ticks / _TICK


def status_kib(pid: int, key: str) -> int:
    """A ``VmRSS``/``VmHWM``-style value from /proc/<pid>/status, in KiB (0 if gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_peak_rss(pid: int) -> None:
    """Reset VmHWM (``echo 5 > /proc/<pid>/clear_refs``); silently ignored if not allowed."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


# ----------------------------------------------------------------------------- running


@dataclass
class Backend:
    """A started backend process group."""

    spec: BackendSpec
    sock: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    known_pids: set[int] = field(default_factory=set)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def tree(self) -> list[int]:
        pids = process_tree(self.pid) if self.alive() else []
        self.known_pids.update(pids)
        return pids

    def workers(self) -> list[int]:
        """The worker processes: the tree without its root, or the root alone.

        multiprocessing's resource tracker (started by uvicorn's and hypercorn's spawned
        workers) is a helper, not a worker, so it is left out.
        """
        pids = [p for p in self.tree() if not _is_helper(p)]
        return pids[1:] if len(pids) > 1 else pids

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        if os.path.exists(self.sock):
            os.unlink(self.sock)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.spec.key} exited at start; see {self.log}")
            if os.path.exists(self.sock):
                try:
                    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                        probe.connect(self.sock)
                    time.sleep(0.3)  # let every worker reach accept()
                    self.tree()
                    return
                except OSError:
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.spec.key} did not listen on {self.sock}; see {self.log}")

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL what is left; also any known stray pid."""
        if self.proc is None:
            return
        self.tree()
        pgid = self.proc.pid
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, sig)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                continue
            # the leader is gone; give its workers a moment, then make sure
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and any(_in_group(p, pgid) for p in self.known_pids):
                time.sleep(0.05)
            if not any(_in_group(p, pgid) for p in self.known_pids):
                break
        for pid in self.known_pids:
            if _in_group(pid, pgid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if os.path.exists(self.sock):
            with contextlib.suppress(OSError):
                os.unlink(self.sock)
        self.proc = None


def _is_helper(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"resource_tracker" in cmdline


def _in_group(pid: int, pgid: int) -> bool:
    """Is ``pid`` a live (non-zombie) process of process group ``pgid``?"""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z" and int(fields[2]) == pgid


def uwsgi_path() -> str:
    """The uwsgi program of this Python (pip puts it beside the interpreter)."""
    beside = Path(sys.executable).parent / "uwsgi"
    if beside.exists():
        return str(beside)
    return shutil.which("uwsgi") or "uwsgi"


def make_backend(
    spec: BackendSpec, sock: str, workers: int, log: Path, command: str | None = None
) -> Backend:
    template = command or spec.command
    line = template.format(
        python=shlex.quote(sys.executable),
        sock=shlex.quote(sock),
        workers=workers,
        build=shlex.quote(str(BUILD)),
        root=shlex.quote(str(ROOT)),
        uwsgi=shlex.quote(uwsgi_path()),
        user=shlex.quote(pwd.getpwuid(os.geteuid()).pw_name),
    )
    return Backend(spec, sock, shlex.split(line), log)
