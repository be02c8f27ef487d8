"""Who may serve: the process that started serving, and only while its master lives.

Two cheap checks of process identity, for code that runs on behalf of a
connection or a scoreboard slot:

* :func:`check` and :func:`verify`: app code may ``fork()``. If the child
  returns into fcgi instead of exiting, it holds copies of the worker's
  connection, listening sockets and scoreboard slot: it would answer the
  request a second time, then serve as a worker nobody supervises.
  :func:`arm` records the serving process once it starts serving; both
  functions end any other process with ``os._exit`` before it touches
  anything shared. The pid is the ground truth, but getpid() is a system
  call, and the request path would pay for several of them per request. So
  :func:`check`, for the many places app code may call back into fcgi
  (reads, writes, scoreboard updates), looks only at a flag that
  ``os.register_at_fork`` sets in every child of ``os.fork()``; and
  :func:`verify`, for the one place a child must pass when it returns from
  the app, compares pids, which also catches a fork made by C code.
* :func:`parent_gone`: a pool worker records its master's pid before it
  serves; once its parent is another process (the master died and the worker
  was re-parented), the worker must finish its request and exit.
"""

from __future__ import annotations

import contextlib
import os
from typing import Final, NoReturn

#: Exit status of a process forked by the app that returned into fcgi. 0: the
#: child did run the app's code to its end, and whoever forked it (the app)
#: may wait for it and treat a failure as its own; the mistake is reported on
#: stderr instead.
STRAY_EXIT: Final = 0

#: Bound once: compiled code calling ``os.getpid()`` would look it up in the
#: module on every request first.
_getpid: Final = os.getpid

#: The pid of the process that serves; 0 until :func:`arm` (no check then).
_serving_pid = 0
#: Set in the child of every os.fork() once armed (see :func:`check`).
_forked = False
#: The pid of the master this worker belongs to; 0 when not in a pool.
_parent_pid = 0


def arm() -> None:
    """Record the current process as the one serving (call as it starts serving)."""
    global _serving_pid, _forked
    if not _serving_pid:
        os.register_at_fork(after_in_child=_mark_forked)
    _serving_pid = os.getpid()
    _forked = False


def _mark_forked() -> None:
    global _forked
    _forked = True


def check() -> None:
    """Return in the serving process; ``os._exit`` in a child of its ``os.fork()``.

    Free unless a fork happened (one flag test): fit for every read, write
    and scoreboard update. A fork made by C code, which runs no Python hook,
    is caught by :func:`verify` when the child returns from the app.
    """
    if _forked:
        verify()


def verify() -> None:
    """Return in the serving process; ``os._exit`` in any process forked from it.

    One getpid() system call: for the points a child must pass on its way
    back from the app into fcgi (once per request).
    """
    serving = _serving_pid
    if serving and _getpid() != serving:
        _leave(serving)


def _leave(serving: int) -> NoReturn:
    # os.write, not logging: a logging lock may be held by a thread that does
    # not exist in this child, and the log handlers' buffers are the parent's.
    text = (
        f"fcgi: process {os.getpid()}, forked by the app in worker {serving}, returned "
        "into the server; exiting without touching the connection\n"
    )
    with contextlib.suppress(OSError):
        os.write(2, text.encode())
    os._exit(STRAY_EXIT)


def expect_parent(pid: int) -> None:
    """Record the master's pid: a worker serves only as long as it is its parent."""
    global _parent_pid
    _parent_pid = pid


def parent_gone() -> bool:
    """True when a parent was recorded and this process now has another one."""
    parent = _parent_pid
    return bool(parent) and os.getppid() != parent
