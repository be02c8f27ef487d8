"""The stack of a request, as the slowlog shows it: the app's frames first, ours trimmed.

A worker's SIGUSR2 handler (the slowlog, and ``request_terminate_timeout``
just before the kill) runs in the main thread, on whatever frame the signal
interrupted. That frame is the request's only in the sync worker, where the app
runs in the main thread. Under trio it is the scheduler's: a WSGI app runs in
a thread of ``trio.to_thread`` and an ASGI app in a task that is suspended
whenever the signal finds trio waiting. So a concurrent driver says, per
request, what runs it (:func:`track`): the task, and while the WSGI app runs,
its thread. :func:`request_frames` then finds the frames of that thread
(``sys._current_frames``) or of that task (its coroutine's ``cr_await`` chain
down to the innermost awaitable), and :func:`format_frames` writes them most
recent call first, each run of frames that belong to fcgi itself, trio,
``threading`` or ``runpy`` folded into one line such as
``... 18 frames of fcgi``: what an operator reads first is where the app is.

Code stuck in C never returns to the interpreter, so no Python-level handler
can run there: :mod:`fcgi.pool.worker_process` registers :mod:`faulthandler`
on :data:`FALLBACK_SIGNAL`, whose C handler prints every thread's stack
whatever the interpreter is doing. The master sends it only when the Python
dump did not happen in time (see ``Master._check_requests``); a worker that
did write its stack for a terminated request says so by ignoring that
signal (:func:`acknowledge_dump`), which the master reads in
``/proc/PID/status`` (:func:`dump_acknowledged`), so the log holds one stack,
not two.
"""

from __future__ import annotations

import contextlib
import faulthandler
import linecache
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from fcgi.escape import escape_controls

#: The signal the master sends when a worker did not write its stack itself:
#: faulthandler's C-level handler answers it (all threads). SIGPWR on Linux:
#: neither Python, trio nor the kernel sends it to a worker (init gets it, on
#: power failure, and a worker is never init), and its default action
#: (terminate) is harmless for a worker the master is about to kill anyway.
#: Elsewhere SIGXCPU, whose only other sender is RLIMIT_CPU.
FALLBACK_SIGNAL: int = getattr(signal, "SIGPWR", signal.SIGXCPU)
#: request_terminate_timeout: seconds a worker gets to write the stuck
#: request's stack itself (SIGUSR2, Python) before the master asks
#: faulthandler. A worker whose main thread runs Python answers within
#: milliseconds; one stuck in C never does, and lives this much longer.
STACK_DUMP_GRACE = 0.5
#: Seconds from FALLBACK_SIGNAL to SIGKILL: faulthandler's C handler writes in
#: microseconds; this leaves it room on a loaded host.
FALLBACK_DUMP_GRACE = 0.2


class Runner:
    """What runs one request's app right now: its trio task, and its thread if any.

    ``thread`` is set by the WSGI thread as it starts the app and cleared as
    it returns: trio reuses its threads, so an ident kept past the app's
    return would show the next request's stack under this one's name.
    """

    __slots__ = ("responder", "task", "thread")

    def __init__(self, task: Any) -> None:
        self.task = task
        self.thread: int | None = None
        #: The ASGI request cycle (fcgi.asgi.ASGIResponder) the task runs, if
        #: any: its ``app_coroutine`` is where the app's frames begin.
        self.responder: Any = None


#: Runners by the token WorkerHooks.request_started gave, while the request runs.
_runners: dict[object, Runner] = {}
#: Functions that make the runner of a token not in ``_runners``, on demand: a
#: driver that keeps its requests by token anyway registers one instead of
#: making a Runner for every request (the asyncio worker; a slowlog dump is
#: rare, requests are not).
_finders: list[Callable[[object], Runner | None]] = []


def track(token: object, task: Any) -> Runner:
    """Record that ``task`` runs the request ``token``; call :func:`untrack` at its end."""
    runner = Runner(task)
    if token is not None:  # NoHooks (no pool, no slowlog) gives None for every request
        _runners[token] = runner
    return runner


def untrack(token: object) -> None:
    _runners.pop(token, None)


def add_finder(finder: Callable[[object], Runner | None]) -> None:
    """Ask ``finder`` for the runners of tokens :func:`track` was not told of."""
    _finders.append(finder)


def remove_finder(finder: Callable[[object], Runner | None]) -> None:
    with contextlib.suppress(ValueError):
        _finders.remove(finder)


def runner_of(token: object) -> Runner | None:
    """The runner of ``token``; None: the main thread runs it (the sync worker)."""
    runner = _runners.get(token)
    if runner is None:
        for finder in _finders:
            runner = finder(token)
            if runner is not None:
                break
    return runner


# -- finding the frames ----------------------------------------------------------


def _chain(frame: FrameType | None, stop: FrameType | None = None) -> list[FrameType]:
    """``frame`` and its callers, innermost first, up to ``stop`` (included)."""
    frames = []
    while frame is not None:
        frames.append(frame)
        if frame is stop:
            break
        frame = frame.f_back
    return frames


def _awaitable_frames(coro: Any) -> list[FrameType]:
    """Frames of a suspended coroutine and of what it awaits, innermost first."""
    frames: list[FrameType] = []
    seen = 0
    while coro is not None and seen < 1000:  # bounded: a cycle must not hang a handler
        seen += 1
        frame = (
            getattr(coro, "cr_frame", None)
            or getattr(coro, "gi_frame", None)
            or getattr(coro, "ag_frame", None)
        )
        if frame is not None:
            frames.append(frame)
        coro = (
            getattr(coro, "cr_await", None)
            or getattr(coro, "gi_yieldfrom", None)
            or getattr(coro, "ag_await", None)
        )
    frames.reverse()
    return frames


def request_frames(runner: Runner | None, interrupted: FrameType | None) -> list[FrameType]:
    """The request's frames, innermost first.

    ``interrupted`` is the frame the signal handler was given (the main
    thread's). With no runner the request runs in the main thread. A runner's
    thread, while it runs the app, is read from ``sys._current_frames``. A
    task that is running now is on the main thread's stack, from the
    interrupted frame up to the task's own coroutine; a suspended one is
    walked down its ``cr_await`` chain.
    """
    if runner is None:
        return _chain(interrupted)
    ident = runner.thread
    if ident is not None and ident != threading.main_thread().ident:
        top = sys._current_frames().get(ident)
        if top is not None:
            return _chain(top)
    coro = getattr(runner.task, "coro", None)
    if coro is None:
        return []
    frames = _coroutine_frames(coro, interrupted)
    app = getattr(runner.responder, "app_coroutine", None)
    root = getattr(app, "cr_frame", None)
    if root is not None and all(frame is not root for frame in frames):
        # The chain broke at a coroutine of fcgi's that is compiled
        # (setup.py): those have no frames and do not say what they await.
        # The app's coroutine does, and its frames are the innermost.
        frames = _coroutine_frames(app, interrupted) + frames
    return frames


def _coroutine_frames(coro: Any, interrupted: FrameType | None) -> list[FrameType]:
    """The frames of ``coro``: on the interrupted stack if it runs now, else its await chain."""
    root = getattr(coro, "cr_frame", None)
    if getattr(coro, "cr_running", False) and root is not None:
        frames = _chain(interrupted, stop=root)
        if frames and frames[-1] is root:
            return frames
    return _awaitable_frames(coro)


# -- writing them ---------------------------------------------------------------


def _package_dir(module: str) -> str | None:
    mod = sys.modules.get(module)
    path = getattr(mod, "__file__", None)
    return os.path.dirname(path) + os.sep if path else None


def _internal_kinds() -> list[tuple[str, str]]:
    """(path prefix, name) of code whose frames are folded: ours, trio's, the stdlib's plumbing."""
    kinds: list[tuple[str, str]] = []
    for module, name in (("fcgi", "fcgi"), ("trio", "trio"), ("outcome", "trio")):
        prefix = _package_dir(module)
        if prefix:
            kinds.append((prefix, name))
    kinds.append((threading.__file__, "threading"))
    kinds.append(("<frozen runpy>", "runpy"))
    runpy = sys.modules.get("runpy")
    if runpy is not None and getattr(runpy, "__file__", None):
        kinds.append((str(runpy.__file__), "runpy"))
    return kinds


def _kind(filename: str, kinds: list[tuple[str, str]]) -> str | None:
    for prefix, name in kinds:
        if filename.startswith(prefix):
            return name
    return None


def format_frames(frames: list[FrameType]) -> Iterator[str]:
    """Lines (no newline) for ``frames``, innermost first, internal runs folded.

    Each frame is two lines as in a traceback (``File "...", line N, in f``
    and its source line); a run of internal frames is one line naming how many
    and whose. Control characters in a source line are escaped: it is written
    into a log as it is.
    """
    kinds = _internal_kinds()
    folded: list[str] = []
    count = 0

    def fold() -> Iterator[str]:
        if count:
            owners = ", ".join(dict.fromkeys(folded))
            yield f"  ... {count} frame{'s' if count != 1 else ''} of {owners}"

    for frame in frames:
        code = frame.f_code
        owner = _kind(code.co_filename, kinds)
        if owner is not None:
            folded.append(owner)
            count += 1
            continue
        yield from fold()
        folded, count = [], 0
        lineno = frame.f_lineno or 0
        yield f'  File "{escape_controls(code.co_filename)}", line {lineno}, in {code.co_name}'
        line = linecache.getline(code.co_filename, lineno, frame.f_globals).strip()
        if line:
            yield "    " + escape_controls(line)
    yield from fold()


# -- the fallback's acknowledgement ---------------------------------------------


def acknowledge_dump() -> None:
    """Say "my stack is written": ignore FALLBACK_SIGNAL from now on (worker side).

    Called after the Python-level dump of a request past
    ``request_terminate_timeout``: the master kills this worker next, and a
    faulthandler dump on top would only repeat the stack. The signal's
    disposition is the message, because it is readable from outside without
    any shared state (:func:`dump_acknowledged`) and it is set by one system
    call that a signal handler can make.
    """
    faulthandler.unregister(FALLBACK_SIGNAL)
    signal.signal(FALLBACK_SIGNAL, signal.SIG_IGN)


def write_fallback_header(slowlog: str | None, pool: str, pid: int) -> None:
    """Say, in the slowlog file, whose stacks faulthandler is about to write (master side).

    faulthandler writes bare frames; without a slowlog file they go to the
    error log, where the master's own line before them says whose they are.
    """
    if not slowlog or slowlog == "-":
        return
    stamp = time.strftime("%d-%b-%Y %H:%M:%S")
    text = (
        f"\n[{stamp}]  [pool {pool}] pid {pid}\n"
        "request_terminate_timeout: the worker did not answer; every thread's stack, "
        "from faulthandler:\n"
    )
    try:
        fd = os.open(slowlog, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
    except OSError:
        pass  # the stacks still come; only their header is missing


def dump_acknowledged(pid: int) -> bool:
    """Whether worker ``pid`` ignores FALLBACK_SIGNAL (master side; False if unknown)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"SigIgn:"):
                    return bool(int(line.split()[1], 16) >> (FALLBACK_SIGNAL - 1) & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


# -- the fallback itself (worker side) ------------------------------------------

#: Where faulthandler writes (None: stderr), and the descriptor open on it.
_fallback_path: str | None = None
_fallback_fd = -1


def arm_fallback(path: str | None) -> None:
    """Let FALLBACK_SIGNAL dump every thread's stack from C, into ``path`` (None: stderr).

    ``path`` is the slowlog file; without one the stack goes to stderr, which
    the master sends where the error log goes. The file is opened now and
    kept open: the C handler can write but not open anything. Called again
    by :func:`reopen_fallback` after log rotation.
    """
    global _fallback_path, _fallback_fd
    fd = 2
    if path is not None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    faulthandler.register(FALLBACK_SIGNAL, file=fd, all_threads=True, chain=False)
    if _fallback_fd > 2:
        os.close(_fallback_fd)
    _fallback_path, _fallback_fd = path, fd


def reopen_fallback() -> None:
    """After SIGUSR1: faulthandler writes to the slowlog file by its new inode."""
    if _fallback_fd < 0 or _fallback_path is None:
        return
    if signal.getsignal(FALLBACK_SIGNAL) == signal.SIG_IGN:
        return  # the stack is written and the worker is on its way out
    # On failure the old descriptor stays registered: better the rotated file than nothing.
    with contextlib.suppress(OSError):
        arm_fallback(_fallback_path)
