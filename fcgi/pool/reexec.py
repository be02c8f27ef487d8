"""Reloading a preloaded app: the master replaces itself with a fresh interpreter.

With ``preload_app`` the app lives in the master's memory, so new code needs a
new master. The master first checks in a subprocess that the new code imports
(if not, nothing changes and the old workers go on), then exec()s itself with
the same command line. Its pid stays, its listening sockets stay open across
the exec (so no connection is refused), and its old workers stay its children:
the new master tells them to finish once its own workers are ready.

Between the exec and the moment the new master has its handlers, a signal
would meet the default disposition, which for most of them is death: the
master would vanish and leave its workers orphaned. So the master's signals
are blocked across the exec (the mask survives it) and stay pending until
the new master has installed its handlers (see :func:`unblock_signals`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NoReturn

log = logging.getLogger("fcgi.pool")

#: Environment variable carrying the :class:`Handover` (JSON) to the new master.
ENV = "FCGI_REEXEC_STATE"
#: Seconds the new code gets to import in the check subprocess.
IMPORT_CHECK_TIMEOUT = 120.0

#: Every signal the master handles: blocked across the exec (and, at the first
#: start, from run_master on) until its handlers are in place.
MASTER_SIGNALS = (
    signal.SIGTERM,
    signal.SIGQUIT,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGCHLD,
)


def block_signals() -> None:
    """Hold the master's signals pending: nothing can kill it before its handlers exist."""
    signal.pthread_sigmask(signal.SIG_BLOCK, MASTER_SIGNALS)


def unblock_signals() -> None:
    """Deliver what is pending to the handlers; forked or spawned processes start clean."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, MASTER_SIGNALS)


@dataclass(slots=True)
class Handover:
    """What a master passes to the one it execs."""

    #: Bind spec -> listening socket.
    sockets: dict[str, socket.socket] = field(default_factory=dict)
    #: Unix socket files the first master created (to remove at the final exit).
    owned_paths: list[str] = field(default_factory=list)
    #: Workers of the previous generation, still serving until told to finish.
    workers: list[int] = field(default_factory=list)
    #: Each sync pool's hand-off channel (fcgi.handoff), both ends, by pool
    #: name: the new master's pool of that name keeps it, so the kept
    #: connections the previous workers pass on as they finish reach the new
    #: workers.
    pool_channels: dict[str, tuple[socket.socket, socket.socket]] = field(default_factory=dict)
    #: The sending ends of channels no pool of the new master took (its
    #: configuration has no such sync pool): shut before the previous workers
    #: are told to finish, so that their kept connections are closed, not
    #: passed into a channel no new worker reads.
    channels: list[socket.socket] = field(default_factory=list)


def import_error(apps: Iterable[tuple[str, str | None]]) -> str | None:
    """Import each ``(app spec, chdir)`` in a fresh interpreter; the error text, if any."""
    for spec, chdir in apps:
        code = "import sys\nfrom fcgi.app_loader import load_app\nload_app(sys.argv[1])\n"
        try:
            proc = subprocess.run(
                [sys.executable, "-c", code, spec],
                cwd=chdir or None,
                capture_output=True,
                text=True,
                timeout=IMPORT_CHECK_TIMEOUT,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{spec}: {exc}"
        if proc.returncode != 0:
            lines = proc.stderr.strip().splitlines()
            return f"{spec}: {lines[-1] if lines else f'exit status {proc.returncode}'}"
    return None


def exec_master(handover: Handover) -> NoReturn:
    """Replace this process with a new master started from the same command line.

    The master's signals are blocked when this returns by raising (exec
    failed: the caller unblocks them), and the new master inherits them
    blocked: whatever arrives meanwhile waits for its handlers.
    """
    block_signals()
    state = {
        "sockets": {spec: sock.fileno() for spec, sock in handover.sockets.items()},
        "owned": handover.owned_paths,
        "workers": handover.workers,
        "pool_channels": {
            name: [send.fileno(), receive.fileno()]
            for name, (send, receive) in handover.pool_channels.items()
        },
        "channels": [sock.fileno() for sock in handover.channels],
    }
    ends = [end for pair in handover.pool_channels.values() for end in pair]
    for sock in [*handover.sockets.values(), *ends, *handover.channels]:
        sock.set_inheritable(True)
    os.environ[ENV] = json.dumps(state)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    logging.shutdown()
    os.execv(sys.executable, sys.orig_argv)


def take_handover(environ: Mapping[str, str] | None = None) -> Handover:
    """The state a previous master left in the environment (empty if none)."""
    env = os.environ if environ is None else environ
    raw = env.get(ENV)
    if not raw:
        return Handover()
    os.environ.pop(ENV, None)
    state = json.loads(raw)
    sockets = {}
    for spec, fd in state.get("sockets", {}).items():
        sock = socket.socket(fileno=fd)
        sock.set_inheritable(False)
        sockets[spec] = sock
    def take(fd: int) -> socket.socket:
        sock = socket.socket(fileno=fd)
        sock.set_inheritable(False)
        return sock

    pool_channels = {
        name: (take(send), take(receive))
        for name, (send, receive) in state.get("pool_channels", {}).items()
    }
    return Handover(
        sockets,
        list(state.get("owned", [])),
        [int(p) for p in state.get("workers", [])],
        pool_channels,
        [take(fd) for fd in state.get("channels", [])],
    )
