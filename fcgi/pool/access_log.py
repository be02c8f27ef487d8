"""The access log, one line per request, in PHP-FPM's ``access.format`` language.

Supported: ``%C`` CPU %, ``%d`` duration (seconds, 3 decimals), ``%{NAME}e``
a FastCGI param, ``%f`` SCRIPT_FILENAME, ``%l`` CONTENT_LENGTH, ``%m`` method,
``%M`` peak memory (bytes), ``%n`` pool, ``%p`` / ``%P`` pid / ppid, ``%q``
query string, ``%Q`` ``?`` when there is a query string, ``%r`` request URI
without its query, ``%R`` REMOTE_ADDR, ``%s`` status, ``%t`` / ``%T`` request
start / end time, ``%u`` REMOTE_USER, ``%%`` a percent sign.

Every value a format code puts in the line goes through
:func:`fcgi.escape.escape_quoted`, as nginx does in its own access log: a
control character becomes ``\\xHH``, and so do ``\\`` and ``"``. The
request URI, the query string, the method and every other param are text the
client chose; unescaped, a CR or LF in them would write a line of its own, and
a quote would end the quoted ``"%m %r"`` field early.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

from fcgi.escape import escape_quoted

_TOKEN = re.compile(r"%(?:\{([^}]*)\})?([a-zA-Z%])")


@dataclass(slots=True)
class RequestRecord:
    params: Mapping[str, str]
    status: int
    start: float
    end: float
    cpu_percent: float
    peak_memory: int
    pool: str


def _date(ts: float) -> str:
    return time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(ts))


def format_line(fmt: str, rec: RequestRecord) -> str:
    p = rec.params
    uri = p.get("REQUEST_URI", p.get("SCRIPT_NAME", "") + p.get("PATH_INFO", ""))

    def sub(m: re.Match[str]) -> str:
        arg, code = m.group(1), m.group(2)
        if code == "%":
            return "%"
        if code == "C":
            return f"{rec.cpu_percent:.2f}"
        if code == "d":
            return f"{rec.end - rec.start:.3f}"
        if code == "e":
            return p.get(arg or "", "-")
        if code == "f":
            return p.get("SCRIPT_FILENAME", "-") or "-"
        if code == "l":
            return p.get("CONTENT_LENGTH", "") or "0"
        if code == "m":
            return p.get("REQUEST_METHOD", "-")
        if code == "M":
            return str(rec.peak_memory)
        if code == "n":
            return rec.pool
        if code == "p":
            return str(os.getpid())
        if code == "P":
            return str(os.getppid())
        if code == "q":
            return p.get("QUERY_STRING", "")
        if code == "Q":
            return "?" if p.get("QUERY_STRING") else ""
        if code == "r":
            return uri.split("?", 1)[0] or "-"
        if code == "R":
            return p.get("REMOTE_ADDR", "-") or "-"
        if code == "s":
            return str(rec.status)
        if code == "t":
            return _date(rec.start)
        if code == "T":
            return _date(rec.end)
        if code == "u":
            return p.get("REMOTE_USER", "-") or "-"
        return m.group(0)

    return _TOKEN.sub(lambda m: escape_quoted(sub(m)), fmt)


class AccessLog:
    """An append-only file (or ``-`` for stderr), reopened on SIGUSR1."""

    def __init__(self, path: str, fmt: str) -> None:
        self.path = path
        self.format = fmt
        self._fd = -1
        self.reopen()

    def reopen(self) -> None:
        if self.path == "-":
            self._fd = 2
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        old, self._fd = self._fd, fd
        if old > 2:
            os.close(old)

    def write(self, rec: RequestRecord) -> None:
        line = format_line(self.format, rec) + "\n"
        with contextlib.suppress(OSError):
            os.write(self._fd, line.encode("utf-8", "replace"))

    def close(self) -> None:
        if self._fd > 2:
            os.close(self._fd)
        self._fd = -1
