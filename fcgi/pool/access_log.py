"""The access log, one line per request, in PHP-FPM's ``access.format`` language.

A format is text with ``%`` codes, some taking a modifier in braces before the
letter (``%{mili}d``), exactly as PHP-FPM's ``www.conf`` documents them:

=====================  ========================================================
``%%``                 a percent sign
``%C``                 CPU used by the request, % (``%{total}C``; PHP-FPM's
                       ``{user}`` / ``{system}`` split is not measured here)
``%d``                 duration: ``%{seconds}d`` (default, 3 decimals),
                       ``%{milli}d`` / ``%{milliseconds}d`` (3 decimals; also
                       PHP-FPM's spellings ``mili`` / ``miliseconds``),
                       ``%{micro}d`` / ``%{microseconds}d`` (an integer)
``%{NAME}e``           the request's FastCGI param NAME (``%{HTTP_HOST}e``)
``%f``                 SCRIPT_FILENAME
``%l``                 CONTENT_LENGTH
``%m``                 method
``%M``                 the worker's peak memory: ``%{bytes}M`` (default),
                       ``%{kilo}M`` / ``%{kilobytes}M``, ``%{mega}M`` /
                       ``%{megabytes}M`` (whole units, rounded down)
``%n``                 pool name
``%{NAME}o``           the response header NAME (``%{Content-Type}o``), ``-``
                       when the response has none; several headers of that
                       name print as one, their values joined with ``, ``
``%p`` / ``%P``        pid of the worker / of the master
``%q`` / ``%Q``        query string / ``?`` when there is one
``%r``                 request URI without its query
``%R``                 REMOTE_ADDR
``%s``                 status
``%t`` / ``%T``        time the request started / ended, by default as
                       ``%d/%b/%Y:%H:%M:%S %z``; ``%{FORMAT}t`` takes any
                       strftime(3) format (``%{%Y-%m-%dT%H:%M:%S%z}t``)
``%u``                 REMOTE_USER
=====================  ========================================================

Modifier names are matched without regard to case, as PHP-FPM does, and so
are header names. ``%{NAME}o`` reads the CGI header block fcgi sent to the web
server (:meth:`fcgi.hooks.WorkerHooks.request_finished`): the app's headers,
the Content-Length fcgi added to a response known whole, the headers of fcgi's
own answers (a 500 for a failed app, the status and ping pages), and the
``Status`` line too (``%{Status}o`` prints ``200 OK``). Not what the web
server adds of its own (``Date``, ``Server``). The block is parsed only by
this code, when a line is written: a format without it costs nothing more.

A format is compiled once, when the settings are validated: an unknown letter,
an unknown modifier, a modifier on a letter that takes none, ``%e`` or ``%o``
without a name, a header name HTTP would not allow, or an unclosed brace is a
:class:`~fcgi.errors.ConfigError` that names the format, before any worker
starts (PHP-FPM too checks the format at start-up).
Silently printing the code instead would be found only by reading the log.

Every value a code puts in the line goes through
:func:`fcgi.escape.escape_quoted`, as nginx does in its own access log: a
control character becomes ``\\xHH``, and so do ``\\`` and ``"``. The
request URI, the query string, the method and every other param are text the
client chose, and a response header's value is text the app chose (or copied
from the client: a ``Location`` echoing a path). Unescaped, a CR or LF in
them would write a line of its own, and a quote would end the quoted
``"%m %r"`` field early. WSGI and ASGI refuse CR, LF and NUL in a header
value, but not the other controls, nor U+0085 (NEL), a line break to some
readers.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from fcgi.errors import ConfigError
from fcgi.escape import escape_quoted


@dataclass(slots=True)
class RequestRecord:
    params: Mapping[str, str]
    status: int
    start: float
    end: float
    cpu_percent: float
    #: The worker's peak RSS in bytes (ru_maxrss), PHP-FPM's "peak of memory".
    peak_memory: int
    pool: str
    #: The response's CGI header block as sent, None if none was (see
    #: WorkerHooks.request_finished); what follows its empty line is not read.
    head: bytes | None = None


#: How ``%t`` / ``%T`` print a time without a modifier (PHP-FPM's, Apache's).
DEFAULT_TIME_FORMAT = "%d/%b/%Y:%H:%M:%S %z"

#: One piece of a compiled format: the text it adds for a request.
_Field = Callable[[RequestRecord], str]


def _uri(p: Mapping[str, str]) -> str:
    return p.get("REQUEST_URI", p.get("SCRIPT_NAME", "") + p.get("PATH_INFO", ""))


def _seconds(rec: RequestRecord) -> str:
    return f"{rec.end - rec.start:.3f}"


def _milliseconds(rec: RequestRecord) -> str:
    return f"{(rec.end - rec.start) * 1e3:.3f}"


def _microseconds(rec: RequestRecord) -> str:
    return str(round((rec.end - rec.start) * 1e6))


def _bytes(rec: RequestRecord) -> str:
    return str(rec.peak_memory)


def _kilobytes(rec: RequestRecord) -> str:
    return str(rec.peak_memory // 1024)


def _megabytes(rec: RequestRecord) -> str:
    return str(rec.peak_memory // (1024 * 1024))


#: Codes with a choice of units: modifier (lower case) -> field. "" is the
#: code without a modifier.
_UNITS: dict[str, dict[str, _Field]] = {
    "d": {
        "": _seconds,
        "seconds": _seconds,
        "milli": _milliseconds,
        "milliseconds": _milliseconds,
        # PHP-FPM's first spelling, still accepted there for old configs.
        "mili": _milliseconds,
        "miliseconds": _milliseconds,
        "micro": _microseconds,
        "microseconds": _microseconds,
    },
    "M": {
        "": _bytes,
        "bytes": _bytes,
        "kilo": _kilobytes,
        "kilobytes": _kilobytes,
        "mega": _megabytes,
        "megabytes": _megabytes,
    },
    "C": {
        "": lambda rec: f"{rec.cpu_percent:.2f}",
        "total": lambda rec: f"{rec.cpu_percent:.2f}",
    },
}

#: What ``%P`` (PHP-FPM: the master's pid) prints. None: the parent's pid, the
#: master of a pool worker. A single process has no master and sets its own
#: pid here, as it is its own master.
master_pid: int | None = None

#: Codes that take no modifier.
_PLAIN: dict[str, _Field] = {
    "f": lambda rec: rec.params.get("SCRIPT_FILENAME", "-") or "-",
    "l": lambda rec: rec.params.get("CONTENT_LENGTH", "") or "0",
    "m": lambda rec: rec.params.get("REQUEST_METHOD", "-"),
    "n": lambda rec: rec.pool,
    "p": lambda rec: str(os.getpid()),
    "P": lambda rec: str(master_pid or os.getppid()),
    "q": lambda rec: rec.params.get("QUERY_STRING", ""),
    "Q": lambda rec: "?" if rec.params.get("QUERY_STRING") else "",
    "r": lambda rec: _uri(rec.params).split("?", 1)[0] or "-",
    "R": lambda rec: rec.params.get("REMOTE_ADDR", "-") or "-",
    "s": lambda rec: str(rec.status),
    "u": lambda rec: rec.params.get("REMOTE_USER", "-") or "-",
}

#: Why a known PHP-FPM modifier is refused, by code and modifier.
_UNSUPPORTED = {
    ("C", "user"): "only the total CPU time of a request is measured (use %C or %{total}C)",
    ("C", "system"): "only the total CPU time of a request is measured (use %C or %{total}C)",
}


def _time_field(fmt: str, at_end: bool) -> _Field:
    def field(rec: RequestRecord) -> str:
        return time.strftime(fmt, time.localtime(rec.end if at_end else rec.start))

    return field


def _param_field(name: str) -> _Field:
    return lambda rec: rec.params.get(name, "-")


#: A header name as HTTP allows it (RFC 9110 token): what %{NAME}o accepts.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")


def header_values(head: bytes | None, name: str) -> list[str]:
    """The values of the headers called ``name`` (any case) in a CGI head, in order.

    ``head`` is a block of ``Name: value`` lines ending in an empty line,
    perhaps followed by a body, which is not looked at. Values are decoded as
    latin-1, as the app's WSGI headers were encoded, so that every byte comes
    back as one character for :func:`~fcgi.escape.escape_quoted` to judge.
    """
    if not head:
        return []
    end = head.find(b"\r\n\r\n")
    block = head if end < 0 else head[:end]
    key = name.lower().encode("ascii")
    values = []
    for line in block.split(b"\r\n"):
        found, colon, value = line.partition(b":")
        if colon and found.lower() == key:
            values.append(value.strip(b" \t").decode("latin-1"))
    return values


def _header_field(name: str) -> _Field:
    def field(rec: RequestRecord) -> str:
        values = header_values(rec.head, name)
        return ", ".join(values) if values else "-"

    return field


def _escaped(field: _Field) -> _Field:
    return lambda rec: escape_quoted(field(rec))


def _literal(text: str) -> _Field:
    return lambda rec: text


def _field(letter: str, modifier: str | None, fail: Callable[[str], ConfigError]) -> _Field:
    """The field for one ``%{modifier}letter`` code."""
    code = f"%{{{modifier}}}{letter}" if modifier is not None else f"%{letter}"
    if letter in _UNITS:
        choice = (modifier or "").strip().lower()
        if (letter, choice) in _UNSUPPORTED:
            raise fail(f"{code}: {_UNSUPPORTED[letter, choice]}")
        if choice not in _UNITS[letter]:
            allowed = ", ".join(k for k in _UNITS[letter] if k)
            raise fail(f"{code}: unknown modifier {modifier!r} (expected one of {allowed})")
        return _UNITS[letter][choice]
    if letter in "tT":
        strf = modifier or DEFAULT_TIME_FORMAT
        try:
            time.strftime(strf, time.localtime(0))
        except ValueError as exc:
            raise fail(f"{code}: not a strftime format: {exc}") from None
        return _time_field(strf, at_end=letter == "T")
    if letter == "e":
        if not modifier:
            raise fail(f"{code}: name the param in braces, as in %{{HTTP_HOST}}e")
        return _param_field(modifier)
    if letter == "o":
        if not modifier:
            raise fail(f"{code}: name the header in braces, as in %{{Content-Type}}o")
        if not _HEADER_NAME.match(modifier):
            raise fail(f"{code}: {modifier!r} is not a header name")
        return _header_field(modifier)
    if letter in _PLAIN:
        if modifier is not None:
            raise fail(f"{code}: %{letter} takes no modifier")
        return _PLAIN[letter]
    raise fail(f"{code}: unknown format code")


def compile_format(fmt: str) -> Callable[[RequestRecord], str]:
    """Turn an ``access.format`` into a function that makes one log line.

    Raises :class:`~fcgi.errors.ConfigError` naming the format and the code at
    fault. Parsing once, here, rather than per request, is also what lets the
    check run before any worker starts.
    """

    def fail(why: str) -> ConfigError:
        # Callers add the setting's name (access_format) and the file.
        return ConfigError(f"{fmt!r}: {why}")

    parts: list[_Field] = []
    literal: list[str] = []
    i, n = 0, len(fmt)
    while i < n:
        pct = fmt.find("%", i)
        if pct < 0:
            literal.append(fmt[i:])
            break
        literal.append(fmt[i:pct])
        i = pct + 1
        if i >= n:
            raise fail("a lone '%' at the end (write %% for a percent sign)")
        modifier: str | None = None
        if fmt[i] == "{":
            close = fmt.find("}", i + 1)
            if close < 0:
                raise fail(f"{fmt[pct:]!r}: '{{' without its '}}'")
            modifier = fmt[i + 1 : close]
            i = close + 1
            if i >= n:
                raise fail(f"%{{{modifier}}}: the code letter is missing after the braces")
        letter = fmt[i]
        i += 1
        if letter == "%" and modifier is None:
            literal.append("%")
            continue
        if literal:
            parts.append(_literal("".join(literal)))
            literal = []
        parts.append(_escaped(_field(letter, modifier, fail)))
    if literal:
        parts.append(_literal("".join(literal)))

    def line(rec: RequestRecord) -> str:
        return "".join([part(rec) for part in parts])

    return line


class AccessLog:
    """An append-only file (or ``-`` for stderr), reopened on SIGUSR1."""

    def __init__(self, path: str, fmt: str) -> None:
        self.path = path
        self.format = fmt
        # Compiled before the file is opened: a bad format names itself
        # rather than leaving an empty log behind.
        self._line = compile_format(fmt)
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
        line = self._line(rec) + "\n"
        with contextlib.suppress(OSError):
            os.write(self._fd, line.encode("utf-8", "replace"))

    def close(self) -> None:
        if self._fd > 2:
            os.close(self._fd)
        self._fd = -1
