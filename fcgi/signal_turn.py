"""Give Python's signal handlers their turn, from compiled code.

CPython runs a Python-level signal handler in the main thread between two
bytecode instructions: the C handler only notes the signal. Code that mypyc
compiled (setup.py) runs no bytecode, so a signal that arrives while it runs
waits until interpreted code runs again. For the sync worker's loop that can
be never: a SIGTERM that lands just after a request, before the loop blocks
in epoll, would wait there for the next connection.

So the sync worker points ``signal.set_wakeup_fd`` at its wake pipe (the
blocking wait wakes up), and then calls :func:`run_pending`, which is here
because this module is never compiled: entering a Python function checks for
waiting signals, and their handlers run before it returns.
"""

from __future__ import annotations


def run_pending() -> None:
    """Return once the signal handlers that were waiting have run (in the main thread)."""
