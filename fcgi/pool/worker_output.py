"""A worker's stdout and stderr, line by line, into the error log (through the master).

Each stream is a pipe whose write end becomes the worker's fd 1 or 2 and whose
read end the master polls. Lines are logged with the pool and pid, as
PHP-FPM's "child 123 said into stderr", without PHP-FPM's 1024-byte cut (the
limit here is :data:`LINE_LIMIT`), each escaped once by the error log's
formatter (the worker's own log records do not take this path: they go
straight to the error log through the handlers the worker inherited, see
:mod:`fcgi.logsetup`).

When: :func:`captures_output`. PHP-FPM throws a worker's output away unless
``catch_workers_output`` is on. A Python user expects the opposite: a
``print()`` left in a view, or the traceback of an exception that escaped a
thread, is what they look for when something goes wrong, and gunicorn and
uWSGI show it. So it always reaches the error log: with the error log on the
master's stderr, a worker simply inherits that stderr (nothing to pay per
line) unless ``catch_workers_output`` asks for the "child N said" lines;
with a file, syslog or ``log_config``, only the master can write there (one
writer per file, reopened on SIGUSR1; one syslog connection), so the lines go
through it.
"""

from __future__ import annotations

import contextlib
import logging
import os

from fcgi.pool.config import MasterConfig, PoolConfig

log = logging.getLogger("fcgi.pool")

#: Longest line logged as one record; the rest of a longer line follows in the next.
LINE_LIMIT = 16384


def captures_output(config: MasterConfig, pool: PoolConfig) -> bool:
    """Whether ``pool``'s workers write stdout and stderr into pipes the master logs."""
    if pool.catch_workers_output:
        return True
    # Anywhere but the master's stderr: the worker's own stderr would miss it.
    return bool(config.log_config) or config.error_log not in (None, "-")


class OutputPipe:
    """The master's end of one worker stream."""

    def __init__(self, pool: str, stream: str) -> None:
        self.pool = pool
        self.stream = stream
        self.pid = 0
        self.read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self.read_fd, False)
        self._partial = b""

    def close_write_end(self) -> None:
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1

    def drain(self) -> bool:
        """Log what is there; return False once the worker closed its end."""
        while True:
            try:
                data = os.read(self.read_fd, 65536)
            except BlockingIOError:
                return True
            except OSError:
                data = b""
            if not data:
                self._emit(self._partial, final=True)
                self._partial = b""
                return False
            lines = (self._partial + data).split(b"\n")
            self._partial = lines.pop()
            for line in lines:
                self._emit(line)
            if len(self._partial) > LINE_LIMIT:
                self._emit(self._partial)
                self._partial = b""

    def _emit(self, line: bytes, final: bool = False) -> None:
        if not line and final:
            return
        text = line[:LINE_LIMIT].decode("utf-8", "replace").rstrip("\r")
        log.info("[pool %s] child %d said into %s: %s", self.pool, self.pid, self.stream, text)

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.read_fd = self.write_fd = -1
