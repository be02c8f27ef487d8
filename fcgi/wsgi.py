"""PEP 3333 glue: environ from FastCGI params, wsgi.input, start_response, output.

Nothing here touches a socket. A driver hands :func:`respond` a ``send``
callable and gets back the HTTP status and the head of the response it sent;
the same code serves the sync worker and the trio worker's threads.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Final, Protocol
from urllib.parse import unquote_to_bytes

from fcgi.errors import FastCGIError, RequestBodyIncomplete, RequestBodyTooLarge
from fcgi.escape import Lines
from fcgi.file_wrapper import FileWrapper
from fcgi.records import SPEEDUPS

log = logging.getLogger("fcgi.wsgi")

ExcInfo = tuple[type[BaseException], BaseException, TracebackType]
OptExcInfo = ExcInfo | tuple[None, None, None]


class StartResponse(Protocol):
    def __call__(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: OptExcInfo | None = None,
        /,
    ) -> Callable[[bytes], object]: ...


WSGIEnviron = dict[str, Any]
WSGIApp = Callable[[WSGIEnviron, StartResponse], Iterable[bytes]]
#: ``send(data, flush)``: queue ``data`` as STDOUT; ``flush=False`` lets the
#: driver coalesce it with END_REQUEST into one write.
Send = Callable[[bytes, bool], None]

#: The largest first body piece the response head is joined to (a copy of the
#: piece); a larger one is sent after the head, not copied. The ASGI adapter
#: follows the same line.
HEAD_JOIN_MAX: Final = 8192


class ClientGone(FastCGIError):
    """Raised by a driver's ``send`` when the web server went away mid-response."""


class BodyCutOff(RequestBodyIncomplete, ClientGone):
    """The web server closed the connection in the middle of the request body.

    Raised into the app's reads like any :class:`RequestBodyIncomplete`, so a
    cut-off upload is never taken for a whole one; and a :class:`ClientGone`
    too, so that :func:`respond` answers it with nothing (no 400: there is no
    one left to read it) and the driver writes nothing more. The driver that
    raises it has logged the event's one line already (the peer, the reason),
    so whatever catches it later logs nothing of its own.
    """


# -- wsgi.input -----------------------------------------------------------------


class InputStream:
    """The request body, read from the web server as the app asks for it.

    ``fill`` returns the next chunk of FCGI_STDIN, or b"" at the end of the
    stream (or when the web server gave up). At most ``limit`` bytes are ever
    returned, so an app cannot read past CONTENT_LENGTH, and a body shorter than
    declared ends in EOF rather than a hang.

    Chunks are never copied into a buffer of our own: the unread part of the
    current chunk is an offset into it, a read that wants a whole chunk that
    is bytes gets that very object, and any other read is one join of views.
    A chunk may itself be a read-only view (of bytes the driver received the
    body into); the app always gets bytes.
    """

    __slots__ = ("_chunk", "_eof", "_fill", "_pos", "_remaining")

    def __init__(self, fill: Callable[[], bytes | memoryview], limit: int | None = None) -> None:
        self._fill = fill
        self._chunk: bytes | memoryview = b""
        self._pos = 0
        self._eof = False
        self._remaining = limit if limit is not None else -1

    def _next(self) -> bytes | memoryview:
        """The next chunk from the web server, cut at the limit; b"" at the end."""
        if self._eof:
            return b""
        chunk = self._fill()
        if not chunk:
            self._eof = True
            return b""
        if self._remaining >= 0:
            if len(chunk) >= self._remaining:
                chunk = chunk[: self._remaining]
                self._eof = True
            self._remaining -= len(chunk)
        return chunk

    def _current(self) -> tuple[bytes | memoryview, int]:
        """The chunk being read and the offset of its first unread byte (b"" at EOF)."""
        chunk, pos = self._chunk, self._pos
        if pos >= len(chunk):
            chunk = self._next()
            pos = 0
            self._chunk, self._pos = chunk, 0
        return chunk, pos

    def read(self, size: int | None = -1) -> bytes:
        parts: list[bytes | memoryview] = []
        need = -1 if size is None or size < 0 else size
        while need:
            chunk, pos = self._current()
            if not chunk:
                break
            avail = len(chunk) - pos
            if 0 <= need < avail:
                parts.append(memoryview(chunk)[pos : pos + need])
                self._pos = pos + need
                break
            parts.append(memoryview(chunk)[pos:] if pos else chunk)
            self._chunk, self._pos = b"", 0
            if need > 0:
                need -= avail
        if len(parts) == 1 and type(parts[0]) is bytes:
            return parts[0]
        return b"".join(parts)

    def readline(self, size: int | None = -1) -> bytes:
        parts: list[memoryview] = []
        left = -1 if size is None or size < 0 else size
        while left:
            chunk, pos = self._current()
            if not chunk:
                break
            if type(chunk) is memoryview:
                # find() is a bytes method: a view is copied once, here, as
                # every chunk was before views came (read() needs no copy).
                chunk = self._chunk = chunk.tobytes()
            end = len(chunk) if left < 0 else min(len(chunk), pos + left)
            nl = chunk.find(b"\n", pos, end)
            if nl >= 0:
                end = nl + 1
            parts.append(memoryview(chunk)[pos:end])
            self._pos = end
            if nl >= 0:
                break
            if left > 0:
                left -= end - pos
        return b"".join(parts)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        if hint is None:
            hint = -1
        lines = []
        total = 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def drain(self) -> None:
        """Consume what the app left unread, so the connection can be reused."""
        self._chunk, self._pos = b"", 0
        while self._next():
            pass


class ErrorStream:
    """``wsgi.errors``: lines go to the log and, optionally, to FCGI_STDERR."""

    __slots__ = ("_pending", "_sink")

    def __init__(self, sink: Callable[[bytes], None] | None = None) -> None:
        self._sink = sink
        self._pending = ""

    def write(self, s: str) -> int:
        self._pending += s
        if "\n" in self._pending:
            self.flush()
        return len(s)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        text, self._pending = self._pending, ""
        if not text:
            return
        for line in text.rstrip("\n").split("\n"):
            log.warning("app: %s", line)
        if self._sink is not None:
            self._sink(text.encode("utf-8", "backslashreplace"))


# -- environ ----------------------------------------------------------------------


def fix_script_name(environ: dict[str, Any], mount: str | None) -> None:
    """Make SCRIPT_NAME + PATH_INFO describe the request the way PEP 3333 means.

    With ``mount`` set (``--script-name``), SCRIPT_NAME is the mount point and
    PATH_INFO what follows it. Without it, a non-empty PATH_INFO from the web
    server is trusted (nginx with ``fastcgi_split_path_info``, Apache mod_fcgid);
    a missing or empty PATH_INFO means the web server put the whole path in
    SCRIPT_NAME (nginx's stock ``fastcgi_params``, lighttpd with the app at "/"),
    so the app is taken to be mounted at the root: SCRIPT_NAME "" and PATH_INFO
    the path. With a mount, a SCRIPT_NAME that ends in "/" and a PATH_INFO that
    starts with one are joined with a single slash.
    """
    script = environ.get("SCRIPT_NAME", "")
    path_info = environ.get("PATH_INFO", "")
    if mount is None:
        if path_info:
            return
        if not script:
            script = _request_path(environ)
        environ["SCRIPT_NAME"] = ""
        environ["PATH_INFO"] = script
        return
    mount = mount.rstrip("/")
    if script.endswith("/") and path_info.startswith("/"):
        # The slash between the two is sent twice: Apache's mod_proxy_uwsgi
        # puts the ProxyPass prefix with its trailing slash ("/app/") in
        # SCRIPT_NAME and the rest with its leading one ("/") in PATH_INFO,
        # and "/app//" would leave the app a PATH_INFO of "//" for "/app/".
        script = script[:-1]
    full = script + path_info if (script or path_info) else _request_path(environ)
    if full == mount or full.startswith(mount + "/"):
        full = full[len(mount) :]
    environ["SCRIPT_NAME"] = mount
    environ["PATH_INFO"] = full


def _request_path(environ: Mapping[str, Any]) -> str:
    uri = environ.get("REQUEST_URI", "")
    path = uri.split("?", 1)[0]
    return unquote_to_bytes(path.encode("latin-1")).decode("latin-1")


_BASE_ENVIRON: Final[dict[str, Any]] = {
    "wsgi.version": (1, 0),
    "wsgi.run_once": False,
    "wsgi.file_wrapper": FileWrapper,
    "SCRIPT_NAME": "",
    "QUERY_STRING": "",
    "SERVER_PROTOCOL": "HTTP/1.1",
}


def build_environ(
    params: Mapping[str, str],
    wsgi_input: InputStream,
    errors: ErrorStream,
    *,
    mount: str | None = None,
    multithread: bool = False,
    multiprocess: bool = False,
) -> WSGIEnviron:
    # A copy of the PARAMS dict is one block copy; the few defaults go in
    # after it (a PARAMS value of the same name wins, as the web server's).
    environ: WSGIEnviron = dict(params)
    for name, value in _BASE_ENVIRON.items():
        if name not in environ:
            environ[name] = value
    environ["wsgi.input"] = wsgi_input
    environ["wsgi.errors"] = errors
    environ["wsgi.multithread"] = multithread
    environ["wsgi.multiprocess"] = multiprocess
    https = environ.get("HTTPS", "").lower()
    if https in ("on", "1") or environ.get("REQUEST_SCHEME") == "https":
        environ["wsgi.url_scheme"] = "https"
    else:
        environ["wsgi.url_scheme"] = "http"
    if "REQUEST_METHOD" not in environ:
        environ["REQUEST_METHOD"] = "GET"
    if "SERVER_NAME" not in environ:
        environ["SERVER_NAME"] = environ.get("HTTP_HOST", "localhost").split(":")[0]
    if "SERVER_PORT" not in environ:
        environ["SERVER_PORT"] = "443" if environ["wsgi.url_scheme"] == "https" else "80"
    if not environ.get("CONTENT_LENGTH"):
        environ.pop("CONTENT_LENGTH", None)
    if not environ.get("CONTENT_TYPE"):
        environ.pop("CONTENT_TYPE", None)
    if mount is not None or not environ.get("PATH_INFO"):
        fix_script_name(environ, mount)
    return environ


def content_length(params: Mapping[str, str]) -> int | None:
    if type(params) is dict:
        # Compiled, a dict's get() is a direct call; a mapping's, a method
        # looked up by name. The params are a dict unless a caller made them.
        plain: dict[str, str] = params
        value = plain.get("CONTENT_LENGTH")
    else:
        value = params.get("CONTENT_LENGTH")
    if not value:
        return None
    try:
        length = int(value)
    except ValueError:
        return None
    return length if length >= 0 else None


# -- the response ------------------------------------------------------------------

_STATUS_RE: Final = re.compile(r"[1-9][0-9][0-9] [^\r\n\0]*\Z")
_TOKEN_RE: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_HOP_BY_HOP: Final = frozenset(
    (
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
    )
)

_ERROR_BODY: Final = b"<h1>500 Internal Server Error</h1>\n"
_ERROR_RESPONSE: Final = (
    b"Status: 500 Internal Server Error\r\nContent-Type: text/html\r\n"
    b"Content-Length: " + str(len(_ERROR_BODY)).encode() + b"\r\n\r\n" + _ERROR_BODY
)


#: Reason phrases of the errors fcgi answers by itself (rejected requests,
#: bodies too large or cut off), written once for every driver.
ERROR_REASONS: Final = {
    400: "Bad Request",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}


def error_response(status: int, reason: str | None = None) -> bytes:
    """A minimal CGI response for an error fcgi answers itself (reason: from ERROR_REASONS)."""
    if reason is None:
        reason = ERROR_REASONS.get(status, "Error")
    body = f"{status} {reason}\n".encode("latin-1")
    return (
        f"Status: {status} {reason}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode("latin-1") + body


class _Response:
    """One response's start_response/write state."""

    __slots__ = ("has_length", "head", "headers_sent", "send", "status")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.status = 0
        #: The CGI header block to send; once headers_sent, the one sent.
        self.head: bytes | None = None
        self.has_length = False
        self.headers_sent = False

    # Declared Any: the app's arguments are checked below and by _encode_head,
    # in the same words whether this module is compiled or not (a compiled
    # signature would raise its own TypeError first, and refuse a list exc_info).
    def start_response(
        self,
        status: Any,
        headers: Any,
        exc_info: Any = None,
    ) -> Callable[[bytes], None]:
        if exc_info is not None and exc_info[0] is not None:
            try:
                if self.headers_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.head is not None:
            raise AssertionError("start_response called a second time without exc_info")
        self.head, self.has_length = _encode_head(status, headers)
        self.status = int(status[:3])
        return self.write

    def write(self, data: Any) -> None:
        """The legacy ``write()`` callable: data goes out before it returns."""
        if type(data) is not bytes:
            raise TypeError(f"write() takes bytes, not {type(data).__name__}")
        self.emit(data, True)

    def emit(self, data: bytes, flush: bool) -> None:
        if not self.headers_sent:
            head = self.head
            if head is None:
                raise AssertionError("the app returned body data before calling start_response")
            self.headers_sent = True
            if len(data) > HEAD_JOIN_MAX:
                # A large first chunk is not copied just to put the head in front.
                self.send(head, False)
            else:
                data = head + data
        if data:
            self.send(data, flush)


#: Header names and status lines already found valid, so the regular
#: expressions run once per distinct name rather than once per response. Each
#: name maps to whether it is Content-Length. Bounded: an app that makes up
#: names per request just stops being cached.
_GOOD_NAMES: Final[dict[str, bool]] = {}
_GOOD_STATUSES: Final[set[str]] = set()
_CACHE_LIMIT: Final = 512


def _check_name(name: object) -> bool:
    """Validate a header name the slow way; True if it is Content-Length."""
    if type(name) is not str or not _TOKEN_RE.match(name):
        raise ValueError(f"invalid header name {name!r}")
    lower = name.lower()
    if lower in _HOP_BY_HOP:
        raise ValueError(f"hop-by-hop header {name} is not allowed from a WSGI app")
    is_length = lower == "content-length"
    if len(_GOOD_NAMES) < _CACHE_LIMIT:
        _GOOD_NAMES[name] = is_length
    return is_length


def _encode_head_py(status: str, headers: list[tuple[str, str]]) -> tuple[bytes, bool]:
    """The CGI header block, and whether it has a Content-Length.

    The reference; ``fcgi._speedups.encode_head`` is its C twin (see
    :func:`_encode_head_fast`).
    """
    if type(status) is not str or status not in _GOOD_STATUSES:
        if type(status) is not str or not _STATUS_RE.match(status):
            raise ValueError(f"invalid status {status!r}: expected a str like '200 OK'")
        if len(_GOOD_STATUSES) < _CACHE_LIMIT:
            _GOOD_STATUSES.add(status)
    if type(headers) is not list:
        raise TypeError(f"headers must be a list, not {type(headers).__name__}")
    lines = ["Status: ", status, "\r\n"]
    has_length = False
    good_names = _GOOD_NAMES
    for item in headers:
        if type(item) is not tuple or len(item) != 2:
            raise TypeError(f"header {item!r} is not a (name, value) tuple")
        name, value = item
        is_length = good_names.get(name) if type(name) is str else None
        if is_length is None:
            is_length = _check_name(name)
        # CR and LF would split the header; NUL ends it early in some web
        # servers (the ASGI path refuses the same three).
        if type(value) is not str or "\n" in value or "\r" in value or "\0" in value:
            raise ValueError(f"invalid value for header {name}: {value!r}")
        if is_length:
            has_length = True
        lines += (name, ": ", value, "\r\n")
    lines.append("\r\n")
    try:
        return "".join(lines).encode("latin-1"), has_length
    except UnicodeEncodeError as exc:
        raise ValueError(f"header text is not latin-1: {exc}") from None


_encode_head_c: Callable[[object, object], tuple[bytes, bool] | None] | None = None
if SPEEDUPS:
    from fcgi._speedups import encode_head as _encode_head_c


def _encode_head_fast(status: str, headers: list[tuple[str, str]]) -> tuple[bytes, bool]:
    """:func:`_encode_head_py` in C; anything it does not vouch for goes to the reference.

    The C version returns None rather than raise, so an invalid status or
    header is always reported by the Python code, in its words.
    """
    head = _encode_head_c(status, headers)  # type: ignore[misc]  # bound only if not None
    return head if head is not None else _encode_head_py(status, headers)


_encode_head = _encode_head_fast if _encode_head_c is not None else _encode_head_py


def run_app(
    app: WSGIApp,
    environ: WSGIEnviron,
    send: Send,
    stderr: Callable[[bytes], None] | None = None,
) -> tuple[int, int]:
    """:func:`respond` for a caller that needs no head: (HTTP status, FastCGI appStatus)."""
    status, app_status, _head = respond(app, environ, send, stderr)
    return status, app_status


def respond(
    app: WSGIApp,
    environ: WSGIEnviron,
    send: Send,
    stderr: Callable[[bytes], None] | None = None,
) -> tuple[int, int, bytes | None]:
    """Run one request through ``app``; return (HTTP status, FastCGI appStatus, head).

    Everything the app raises is logged here and turned into a 500 when no
    header was sent yet; after that, the response just ends early and the
    appStatus says so. :class:`ClientGone` from ``send`` (or a
    :class:`BodyCutOff` from a read) propagates after the iterable's close()
    has run. ``stderr`` also receives app tracebacks
    (FCGI_STDERR, which nginx writes to its error log).

    ``head`` is what :meth:`fcgi.hooks.WorkerHooks.request_finished` takes:
    the CGI header block the response began with, exactly as sent (the
    Content-Length added to a list response, the 500 sent in place of a
    failed app's answer), or None if no header was sent. It is the bytes
    already made for the web server, so handing it on costs nothing; only
    an access log that prints a header (``%{NAME}o``) ever reads it.
    """
    response = _Response(send)
    result: Iterable[object] | None = None
    try:
        result = app(environ, response.start_response)
        if type(result) is list or type(result) is tuple:
            _send_sequence(response, result)
        else:
            emit = response.emit
            pieces: Iterable[object] = result  # see _app_bytes
            for piece in pieces:
                chunk = _app_bytes(piece)
                if chunk:
                    emit(chunk, True)
            if not response.headers_sent:
                emit(b"", False)
    except ClientGone:
        raise
    except (RequestBodyTooLarge, RequestBodyIncomplete) as exc:
        # The body crossed max_body_size, or stopped arriving, while the app
        # read it: the client's doing, not the app's, so no traceback; and no
        # line either, since the driver that found it logged it with the peer
        # (one line per event). The web server is still there (else this
        # would be a BodyCutOff, a ClientGone): it gets a 413 or a 400.
        if not response.headers_sent:
            status = 413 if isinstance(exc, RequestBodyTooLarge) else 400
            response.headers_sent = True
            response.status = status
            response.head = error_response(status)
            response.send(response.head, False)
        return response.status, 1, response.head
    except Exception:
        _app_failed(environ, response, stderr)
        return response.status or 500, 1, response.head if response.headers_sent else None
    finally:
        # A list or tuple has no close(), and asking for it costs an
        # AttributeError made and dropped: 5% of a hello request (callgrind).
        kind = type(result)
        close = None if kind is list or kind is tuple else getattr(result, "close", None)
        if close is not None:
            try:
                close()
            except Exception:
                log.exception("close() of the response iterable raised")
    return response.status, 0, response.head


def _app_bytes(piece: object) -> bytes:
    """``piece`` of the app's iterable, if it is bytes (PEP 3333); else the TypeError of a 500.

    The iterable's items are declared ``object`` and checked here: compiled
    (setup.py), items declared bytes would meet mypyc's own check first, in
    other words, and the plain code would let a bytearray through by accident.
    """
    if isinstance(piece, bytes):
        return piece
    raise TypeError(f"the app yielded {type(piece).__name__}, not bytes")


def _send_sequence(response: _Response, pieces: list[object] | tuple[object, ...]) -> None:
    """A list response is known whole: send it in one piece with a Content-Length."""
    if len(pieces) == 1:  # the usual case: no list made, no join
        body = _app_bytes(pieces[0])
    else:
        body = b"".join([_app_bytes(piece) for piece in pieces])
    if response.headers_sent:  # the app used write() before returning
        if body:
            response.send(body, False)
        return
    head = response.head
    if head is None:
        raise AssertionError("the app returned body data before calling start_response")
    if not response.has_length:
        # Kept as the head sent, for the access log's %{Content-Length}o.
        response.head = head = b"%sContent-Length: %d\r\n\r\n" % (head[:-2], len(body))
    response.headers_sent = True
    if len(body) > HEAD_JOIN_MAX:
        # A large body is not copied just to put the head in front.
        response.send(head, False)
        response.send(body, False)
    else:
        response.send(head + body, False)


def _app_failed(
    environ: Mapping[str, Any], response: _Response, stderr: Callable[[bytes], None] | None
) -> None:
    where = f"{environ.get('REQUEST_METHOD', '?')} {environ.get('REQUEST_URI', '')}"
    trace = traceback.format_exc()
    log.error("app raised while serving %s\n%s", where, Lines(trace.rstrip()))
    if stderr is not None:
        stderr(f"fcgi: app raised while serving {where}\n{trace}".encode("utf-8", "replace"))
    if not response.headers_sent:
        response.headers_sent = True
        response.status = 500
        response.head = _ERROR_RESPONSE
        response.send(_ERROR_RESPONSE, False)
