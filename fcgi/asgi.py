"""ASGI 3 on FastCGI: the HTTP scope from PARAMS, one request cycle, and lifespan.

Nothing here touches a socket or picks an event loop: a driver (the trio or
the asyncio worker) hands :class:`ASGIResponder` a
:class:`fcgi.spool.SpooledBody` with the request body, an async ``write`` for
STDOUT and its :class:`Waits` (how to wait on its loop), and runs a
:class:`Lifespan` subclass once per worker process. The rules (which message
comes when, what is an error, what the web server sees) are here once, for
both.

The response goes out CGI-style, like the WSGI one: ``Status: 200 OK`` and the
headers, sent with the first piece of body so a short response is one record.
"""

from __future__ import annotations

import contextlib
import http
import inspect
import logging
import re
import traceback
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from types import CoroutineType
from typing import Any, Final, Protocol
from urllib.parse import quote

from mypy_extensions import mypyc_attr

from fcgi.errors import FastCGIError, RequestBodyTooLarge
from fcgi.escape import Lines
from fcgi.records import SPEEDUPS
from fcgi.spool import SpooledBody
from fcgi.wsgi import (
    HEAD_JOIN_MAX,
    ClientGone,
    content_length,
    error_response,
    fix_script_name,
)

log = logging.getLogger("fcgi.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
#: ``write(data)``: queue STDOUT for this request; raises ClientGone.
Write = Callable[[bytes], Awaitable[None]]


class Event(Protocol):
    """A one-shot flag tasks can wait for: ``trio.Event`` and ``asyncio.Event`` both are."""

    def set(self) -> None: ...

    def is_set(self) -> bool: ...

    async def wait(self) -> Any: ...


class Queue(Protocol):
    """Messages between the worker and the app's lifespan call (``asyncio.Queue`` is one)."""

    async def put(self, item: Message) -> None: ...

    async def get(self) -> Message: ...


class Waits(Protocol):
    """How :class:`ASGIResponder` waits: the one thing that differs between event loops.

    Each driver supplies one (``fcgi.trio_worker``'s, ``fcgi.asyncio_worker``'s),
    so the request cycle's rules are written once and neither loop is imported
    here. One whose :meth:`checkpoint` does nothing may say so with a class
    attribute ``needs_checkpoints = False``: :class:`ASGIResponder` then does
    not call it (a coroutine made and run for nothing, on every response).
    """

    async def checkpoint(self) -> None:
        """A point where the loop's own rules want one: under trio every async
        call is a checkpoint; asyncio needs none, and a no-op costs it nothing."""

    async def pause(self) -> None:
        """Let every other task run before going on (an app that loops on
        ``receive()`` after the end must not keep the loop from them)."""

    async def next_piece(self, body: SpooledBody, timeout: float) -> bytes | None:
        """The next piece of ``body`` (b"" at its end); None if nothing came within ``timeout``."""

    def event(self) -> Event:
        """A new :class:`Event` of this loop."""


ASGI_VERSION: Final = "3.0"
HTTP_SPEC_VERSION: Final = "2.4"
LIFESPAN_SPEC_VERSION: Final = "2.0"
#: How long an app may take to return after answering lifespan.shutdown.
LIFESPAN_EXIT_GRACE: Final = 5.0
#: Seconds between two looks, while the app's lifespan startup runs, at
#: whether the worker was told to stop (a signal cannot end that wait itself).
LIFESPAN_POLL: Final = 0.5
#: After this many seconds of startup, and as often again, a line says the
#: worker still waits for it: until then it serves nothing, and says nothing.
LIFESPAN_NOTICE = 10.0  # not Final: tests shorten it


# A plain class even when compiled: mypyc's classes cannot derive from OSError.
@mypyc_attr(native_class=False)
class ClientDisconnected(OSError):
    """Raised by ``send`` once the web server gave up on the request (ASGI spec 2.4)."""


class LifespanFailure(FastCGIError):
    """The app's lifespan startup failed; the worker must not serve."""


# -- the scope -----------------------------------------------------------------------


def _text(native: str) -> str:
    """A PEP 3333 "native string" (bytes as latin-1) back to the text it encodes."""
    if native.isascii():  # the usual path: ASCII reads the same either way
        return native
    return native.encode("latin-1").decode("utf-8", "replace")


#: Most distinct names the caches below keep: an app or a peer that makes up
#: names per request just stops being cached.
_CACHE_LIMIT: Final = 512

#: CGI variable name -> the ASGI header name it carries (``HTTP_USER_AGENT``
#: -> ``b"user-agent"``), or None for a variable that is not a header. The
#: same twenty-odd names come with every request, so each is worked out once.
_HEADER_NAMES: Final[dict[str, bytes | None]] = {}


def _header_name(variable: str) -> bytes | None:
    """The header a CGI variable carries, or None (CONTENT_TYPE/LENGTH come separately)."""
    if not variable.startswith("HTTP_") or variable in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
        header = None
    else:
        header = variable[5:].lower().replace("_", "-").encode("latin-1")
    if len(_HEADER_NAMES) < _CACHE_LIMIT:
        _HEADER_NAMES[variable] = header
    return header


#: SERVER_PROTOCOL -> the scope's ``http_version``: the same one or two come with every request.
_HTTP_VERSIONS: Final[dict[str, str]] = {}


def _http_version(protocol: str) -> str:
    version = _HTTP_VERSIONS.get(protocol)
    if version is not None:
        return version
    version = protocol.partition("/")[2]
    if version in ("1.0", "1.1"):
        pass
    elif version in ("2", "2.0"):
        version = "2"
    elif version in ("3", "3.0"):
        version = "3"
    else:
        version = "1.1"
    if len(_HTTP_VERSIONS) < _CACHE_LIMIT:
        _HTTP_VERSIONS[protocol] = version
    return version


def _port(value: str | None) -> int | None:
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        return None


#: Marks a CGI variable not seen yet in :data:`_HEADER_NAMES`, told by identity:
#: this object is never a header name the cache holds (those are made anew).
_UNSEEN: Final = b"\0not seen"

#: The body's headers, from their own CGI variables (or the HTTP_ ones some
#: web servers send instead), and their ASGI names.
_BODY_HEADERS: Final = (
    ("CONTENT_TYPE", "HTTP_CONTENT_TYPE", b"content-type"),
    ("CONTENT_LENGTH", "HTTP_CONTENT_LENGTH", b"content-length"),
)


#: The scope's ``asgi`` item; each scope gets a copy (an app may change its own).
_ASGI_INFO: Final[dict[str, str]] = {"version": ASGI_VERSION, "spec_version": HTTP_SPEC_VERSION}

_scope_c: Callable[[object, object, object, object], Scope | None] | None = None
if SPEEDUPS:
    from fcgi._speedups import asgi_scope as _scope_c


def build_scope(
    params: dict[str, str],
    *,
    mount: str | None = None,
    state: Mapping[str, Any] | None = None,
) -> Scope:
    """The ASGI ``http`` scope of a FastCGI request.

    ``root_path`` and ``path`` follow the same SCRIPT_NAME / PATH_INFO rules as
    the WSGI environ (:func:`fcgi.wsgi.fix_script_name`): ``root_path`` is the
    mount point and ``path`` the whole path, mount point included, as ASGI asks.

    :func:`_build_scope_py` is the reference. Where the C extension is built,
    the usual request (no mount point, ASCII path, names seen before) is made
    by ``_speedups.asgi_scope``, which returns None for whatever it does not
    vouch for; tests/test_speedups.py holds the two to the same scope.
    """
    if _scope_c is not None and mount is None:
        scope = _scope_c(params, _HEADER_NAMES, _HTTP_VERSIONS, _ASGI_INFO)
        if scope is not None:
            if state is not None:
                scope["state"] = dict(state)
            return scope
    return _build_scope_py(params, mount=mount, state=state)


def _build_scope_py(
    params: dict[str, str],
    *,
    mount: str | None = None,
    state: Mapping[str, Any] | None = None,
) -> Scope:
    """:func:`build_scope` in Python: the rules."""
    script = params.get("SCRIPT_NAME", "")
    path_info = params.get("PATH_INFO", "")
    if mount is not None or not path_info:
        cgi = {
            "SCRIPT_NAME": script,
            "PATH_INFO": path_info,
            "REQUEST_URI": params.get("REQUEST_URI", ""),
        }
        fix_script_name(cgi, mount)
        script = cgi["SCRIPT_NAME"]
        path_info = cgi["PATH_INFO"]
    # (_text's ASCII test inline: the usual path is a request of plain ASCII.)
    root_path = script if script.isascii() else _text(script)
    path = root_path + (path_info if path_info.isascii() else _text(path_info))
    uri = params.get("REQUEST_URI")
    if uri:
        query = uri.find("?")
        raw_path = (uri if query < 0 else uri[:query]).encode("latin-1")
    else:
        raw_path = quote(path, safe="/:@!$&'()*+,;=~").encode("ascii")

    headers: list[tuple[bytes, bytes]] = []
    names = _HEADER_NAMES
    for name, value in params.items():
        # HTTP_CONTENT_TYPE / _LENGTH map to None: CONTENT_TYPE / CONTENT_LENGTH
        # below are authoritative.
        header = names.get(name, _UNSEEN)
        if header is _UNSEEN:
            header = _header_name(name)
        if header is not None:
            headers.append((header, value.encode("latin-1")))
    for name, http_name, header_name in _BODY_HEADERS:
        value = params.get(name) or params.get(http_name, "")
        if value:
            headers.append((header_name, value.encode("latin-1")))

    https_flag = params.get("HTTPS")
    https = https_flag is not None and https_flag.lower() in ("on", "1")
    if not https:
        https = params.get("REQUEST_SCHEME") == "https"
    remote = params.get("REMOTE_ADDR")
    server_port = _port(params.get("SERVER_PORT"))
    server_host = params.get("SERVER_ADDR") or params.get("SERVER_NAME")
    scope: Scope = {
        "type": "http",
        "asgi": _ASGI_INFO.copy(),
        "http_version": _http_version(params.get("SERVER_PROTOCOL", "HTTP/1.1")),
        "method": (params.get("REQUEST_METHOD") or "GET").upper(),
        "scheme": "https" if https else "http",
        "path": path,
        "raw_path": raw_path,
        "query_string": params.get("QUERY_STRING", "").encode("latin-1"),
        "root_path": root_path,
        "headers": headers,
        "client": (remote, _port(params.get("REMOTE_PORT")) or 0) if remote else None,
        "server": (server_host, server_port) if server_host and server_port else None,
        "extensions": {"fastcgi": {"params": params}},
    }
    if state is not None:
        scope["state"] = dict(state)
    return scope


# -- one request ---------------------------------------------------------------------

_TOKEN_RE: Final = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_ERROR_BODY: Final = b"<h1>500 Internal Server Error</h1>\n"
_ERROR_RESPONSE: Final = (
    b"Status: 500 Internal Server Error\r\nContent-Type: text/html\r\n"
    b"Content-Length: " + str(len(_ERROR_BODY)).encode() + b"\r\n\r\n" + _ERROR_BODY
)
_DISCONNECT: Final[Message] = {"type": "http.disconnect"}


#: The status line of each status code Python knows a reason phrase for.
_STATUS_LINES: Final = {
    code.value: b"Status: %d %s\r\n" % (code.value, code.phrase.encode("latin-1"))
    for code in http.HTTPStatus
}

#: The bytes a header value must not hold, as the ints ``in`` finds fastest.
_CR: Final = 13
_LF: Final = 10
_NUL: Final = 0

#: Header names already found valid, each mapped to whether it is
#: Content-Length: the regular expression runs once per distinct name.
_GOOD_NAMES: Final[dict[bytes, bool]] = {}


def _check_name(name: bytes | bytearray) -> bool:
    """Validate a header name the slow way; True if it is Content-Length."""
    if not _TOKEN_RE.match(name):
        raise ValueError(f"invalid header name {bytes(name)!r}")
    is_length = name.lower() == b"content-length"
    if type(name) is bytes and len(_GOOD_NAMES) < _CACHE_LIMIT:
        _GOOD_NAMES[name] = is_length
    return is_length


def _encode_head(status: object, headers: object) -> tuple[bytes, bool]:
    """The CGI response head, and whether the app gave a Content-Length."""
    if type(status) is not int or not 100 <= status <= 999:
        raise ValueError(f"invalid status {status!r} in http.response.start")
    line = _STATUS_LINES.get(status)
    parts = [line if line is not None else b"Status: %d Unknown\r\n" % status]
    has_length = False
    good = _GOOD_NAMES
    for item in headers or ():  # type: ignore[attr-defined]
        kind = type(item)
        if (kind is list or kind is tuple) and len(item) == 2:
            # Indexed, not unpacked: unpacking makes an iterator, and with it
            # a share of the garbage collector's work, for every header.
            name = item[0]
            value = item[1]
        else:
            try:
                name, value = item
            except (TypeError, ValueError):
                # Said here: compiled (setup.py) and not, Python's own words differ.
                raise TypeError(
                    f"header {item!r}: an ASGI header is a [name, value] pair"
                ) from None
        if type(name) is bytes and type(value) is bytes:
            is_length = good.get(name)
        elif isinstance(name, bytes | bytearray) and isinstance(value, bytes | bytearray):
            is_length = None  # a bytearray is not hashable: checked the slow way
        else:
            raise TypeError(f"header {item!r}: ASGI header names and values are bytes")
        if is_length is None:
            is_length = _check_name(name)
        # CR and LF would split the header; NUL ends it early in some web servers.
        # Tested as byte values: ``b"\r" in value`` first tries the operand as
        # an int, and that failure costs more than the search itself.
        if _CR in value or _LF in value or _NUL in value:
            raise ValueError(f"invalid value for header {bytes(name)!r}: {bytes(value)!r}")
        if is_length:
            has_length = True
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts), has_length


def _awaitable(result: Any) -> Awaitable[Any]:
    """What the app's call returned, if it can be awaited; else the TypeError CPython gives.

    Said here: compiled (setup.py), ``await`` of something else says
    "'NoneType' object is not iterable", which misleads (a sync app, or a
    WSGI one served as ASGI, is the usual cause).
    """
    if type(result) is not CoroutineType and not inspect.isawaitable(result):
        raise TypeError(f"object {type(result).__name__} can't be used in 'await' expression")
    return result


class ASGIResponder:
    """Runs one ASGI HTTP request cycle; :meth:`disconnect` is the abort path.

    ``waits`` is the driver's (see :class:`Waits`). ``write_last``, if given,
    takes the response's last piece instead of ``write``: the asyncio worker
    sends it with END_REQUEST, in one write, when the app returns at once.
    ``write_head``, if given, takes the CGI head when the first piece of the
    body is large, instead of the head being copied in front of the piece:
    the asyncio worker queues it, to leave in the same write as the piece.
    ``where`` names the request in log lines; by default its method and
    REQUEST_URI (its path if it has none).

    A body that stalls for ``body_timeout`` is not taken for a whole one: the
    app's receive() says http.disconnect and the web server gets a 400. If
    ``silence_timed()`` says the driver times that silence itself (the
    connection is in the middle of a record, as a uwsgi or SCGI body always
    is), the driver closes the connection with the event's one line, which
    disconnects this request; the responder then waits for that instead.
    """

    def __init__(
        self,
        app: ASGIApp,
        scope: Scope,
        body: SpooledBody,
        write: Write,
        *,
        waits: Waits,
        write_last: Write | None = None,
        write_head: Write | None = None,
        stderr: Write | None = None,
        body_timeout: float = 30.0,
        where: str = "",
        silence_timed: Callable[[], bool] | None = None,
    ) -> None:
        self.app = app
        self.scope = scope
        self.body = body
        self.write = write
        self.write_last = write_last or write
        self.write_head = write_head
        self.waits = waits
        #: False if the driver's checkpoint() is a no-op (see Waits).
        self._checkpoints: bool = getattr(waits, "needs_checkpoints", True)
        self.stderr = stderr
        self.body_timeout = body_timeout
        self._silence_timed = silence_timed
        #: True once the body stalled and the request was ended for it.
        self._stalled = False
        params = scope["extensions"]["fastcgi"]["params"]
        self._where = where
        if not where:
            # Only log lines name the request: the parts are kept as they are
            # now (the app may change its scope), the text made if one is written.
            self._method = scope.get("method")
            self._target = params.get("REQUEST_URI") or scope.get("path")
        #: HTTP status the app chose (0 before http.response.start).
        self.status = 0
        self.gone: str | None = None
        #: The app's coroutine once :meth:`run` started it: where the slowlog
        #: begins the request's stack (fcgi.stacks) when the coroutines that
        #: await it are compiled (setup.py) and show no frames.
        self.app_coroutine: Any = None
        self._remaining = content_length(params)
        self._body_done = False
        #: The CGI header block from http.response.start; once _head_sent,
        #: the one sent (with the Content-Length fcgi added, or fcgi's error).
        self._head: bytes | None = None
        self._head_has_length = False
        self._head_sent = False
        self._complete = False
        #: Set once the response is complete or the web server went away; made
        #: only when an app waits for that (most never do).
        self._finished: Event | None = None

    @property
    def where(self) -> str:
        """The request as log lines name it: ``where``, or its method and REQUEST_URI (or path)."""
        if not self._where:
            self._where = f"{self._method} {self._target}"
        return self._where

    def disconnect(self, reason: str) -> None:
        """The web server went away: receive() says http.disconnect, send() raises."""
        if self.gone is None:
            self.gone = reason
        self._finish()
        self.body.end()

    def _finish(self) -> None:
        if self._finished is not None:
            self._finished.set()

    # -- the callables the app gets -------------------------------------------------

    async def receive(self) -> Message:
        if self.gone is not None or self._complete:
            await self.waits.pause()
            return dict(_DISCONNECT)
        if not self._body_done:
            body = self.body
            chunk = await self.waits.next_piece(body, self.body_timeout)
            if chunk is None and self._silence_timed is not None and self._silence_timed():
                # The driver's read timeout ends this one (see the class
                # docstring): one more wait, so a driver that does not is
                # no reason to hang.
                chunk = await self.waits.next_piece(body, self.body_timeout)
            if self._is_gone():  # not ``self.gone``: see _is_gone
                return dict(_DISCONNECT)
            if chunk is None:
                log.warning(
                    "%s: request body stalled for %gs; ending the request with a 400",
                    self.where,
                    self.body_timeout,
                )
                self._stalled = True
                self.disconnect("the request body stalled")
                return dict(_DISCONNECT)
            if self._remaining is not None:
                if len(chunk) >= self._remaining:
                    if len(chunk) > self._remaining:
                        # Only then: compiled (setup.py), even a slice of
                        # the whole of it copies the bytes.
                        chunk = chunk[: self._remaining]
                    body.end()
                    self._body_done = True
                self._remaining -= len(chunk)
            if not chunk or body.exhausted:
                self._body_done = True
            return {"type": "http.request", "body": chunk, "more_body": not self._body_done}
        # Nothing left to receive until the response is complete or the web
        # server goes away (neither has happened: see the first test).
        if self._finished is None:
            self._finished = self.waits.event()
        await self._finished.wait()
        return dict(_DISCONNECT)

    def _is_gone(self) -> bool:
        """True once :meth:`disconnect` ran, read afresh.

        For :meth:`receive` after its awaits: it tested ``gone is not None``
        first, and compiled (setup.py) a second ``self.gone`` there is taken
        for the None that test left it as: a disconnect during the wait
        raised ``TypeError: None object expected; got str`` in the app.
        """
        return self.gone is not None

    def _why_gone(self) -> str:
        """:attr:`gone`, read afresh.

        Not read in :meth:`send` itself: that tested ``gone is not None``
        before its awaits, and compiled (setup.py) it would take the value
        for the None that test left it as, though a disconnect set it since.
        """
        return self.gone or "the web server went away"

    async def send(self, message: Message) -> None:
        if self.gone is not None:
            if self._checkpoints:
                await self.waits.checkpoint()
            raise ClientDisconnected(self.gone)
        # As a dict: compiled, a dict's get() is a direct call where a
        # mapping's is a method looked up by name (six per response). Apps
        # send dicts, the type the ASGI spec gives; another mapping is copied.
        msg: dict[str, Any] = message if type(message) is dict else dict(message.items())
        kind = msg.get("type")
        if kind == "http.response.start":
            if self._head is not None:
                raise RuntimeError("http.response.start sent twice")
            status: Any = msg.get("status")
            self._head, self._head_has_length = _encode_head(status, msg.get("headers", ()))
            # The value _encode_head checked (an int), not message["status"]
            # read again: a mapping may answer otherwise the second time,
            # and compiled (setup.py) the attribute's int type is enforced.
            self.status = status
            if self._checkpoints:
                await self.waits.checkpoint()
        elif kind == "http.response.body":
            if self._head is None:
                raise RuntimeError("http.response.body sent before http.response.start")
            if self._complete:
                raise RuntimeError("http.response.body sent after the response was complete")
            body = msg.get("body", b"")
            more = bool(msg.get("more_body", False))
            if type(body) is bytes:
                data: bytes = body
            elif isinstance(body, bytes | bytearray | memoryview):  # a subclass too
                data = bytes(body)
            else:
                raise TypeError(f"http.response.body body must be bytes, not {type(body).__name__}")
            head_apart: bytes | None = None
            write_head = self.write_head
            if not self._head_sent:
                head = self._head
                if not more and not self._head_has_length and self._may_add_length():
                    head = head[:-2] + b"Content-Length: %d\r\n\r\n" % len(data)
                    self._head = head
                if write_head is not None and len(data) > HEAD_JOIN_MAX:
                    head_apart = head  # not copied in front of a large piece
                else:
                    data = head + data
                self._head_sent = True
            write = self.write
            if not more:
                self._complete = True
                if self._finished is not None:  # (_finish, inline: on every response)
                    self._finished.set()
                write = self.write_last
            if data:
                try:
                    if head_apart is not None and write_head is not None:
                        await write_head(head_apart)
                    await write(data)
                except ClientGone as exc:
                    self.disconnect(str(exc) or "the web server went away")
                    raise ClientDisconnected(self._why_gone()) from None
            elif self._checkpoints:
                await self.waits.checkpoint()
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} for an http scope")

    def _may_add_length(self) -> bool:
        return (
            self.scope["method"] != "HEAD" and self.status not in (204, 304) and self.status >= 200
        )

    # -- the cycle -------------------------------------------------------------------

    @property
    def head(self) -> bytes | None:
        """The CGI header block sent, or None before one was.

        What :meth:`fcgi.hooks.WorkerHooks.request_finished` takes for the
        access log's ``%{NAME}o``: the bytes already made for the web server,
        so nothing is built for a log that prints no header.
        """
        return self._head if self._head_sent else None

    async def run(self) -> tuple[int, int, bytes | None]:
        """Run the app; return (HTTP status, FastCGI appStatus, :attr:`head`)."""
        try:
            self.app_coroutine = _awaitable(self.app(self.scope, self.receive, self.send))
            await self.app_coroutine
        except RequestBodyTooLarge as exc:
            # The client sent too much; the app did nothing wrong: no traceback.
            log.warning("%s: %s", self.where, exc)
            if not self._head_sent and self.gone is None:
                self._head_sent = self._complete = True
                self.status = 413
                self._head = error_response(413)
                with contextlib.suppress(ClientGone):
                    await self.write(self._head)
            return self.status or 413, 1, self.head
        except Exception:
            if self.gone is not None:
                # What stopped it (ClientDisconnected from its send, most
                # likely) follows from the web server going away, which the
                # driver logged: one line per event, so this one is debug.
                log.debug(
                    "%s: app stopped after the web server went away: %s", self.where, self.gone
                )
                return await self._ended_early()
            await self._failed()
            return self.status or 500, 1, self.head
        if self.gone is not None:
            return await self._ended_early()
        if not self._head_sent:
            if self._head is None:
                log.error("%s: the app returned without sending http.response.start", self.where)
                await self._write_error()
                return 500, 1, self.head
            # Started but no body message: an empty body.
            await self.send({"type": "http.response.body", "body": b""})
        elif not self._complete:
            log.warning("%s: the app returned before the end of its response body", self.where)
            return self.status, 1, self.head
        return self.status, 0, self.head

    async def _ended_early(self) -> tuple[int, int, bytes | None]:
        """The result of a request ended under the app: the web server left, or the body stalled.

        A stalled body's web server is still there and hears why, as from
        the sync worker: a 400, unless the app's answer had begun.
        """
        if self._stalled and not self._head_sent:
            self._head_sent = self._complete = True
            self.status = 400
            self._head = error_response(400)
            with contextlib.suppress(ClientGone):
                await self.write(self._head)
        return self.status, 1, self.head

    async def _failed(self) -> None:
        trace = traceback.format_exc()
        log.error("app raised while serving %s\n%s", self.where, Lines(trace.rstrip()))
        if self.stderr is not None:
            text = f"fcgi: app raised while serving {self.where}\n{trace}"
            try:
                await self.stderr(text.encode("utf-8", "replace"))
            except ClientGone:
                return
        if not self._head_sent:
            await self._write_error()

    async def _write_error(self) -> None:
        self._head_sent = True
        self._complete = True
        self.status = 500
        self._head = _ERROR_RESPONSE
        with contextlib.suppress(ClientGone):
            await self.write(_ERROR_RESPONSE)


# -- lifespan ------------------------------------------------------------------------


# Compiled by mypyc (setup.py); the trio worker, plain Python, subclasses it.
@mypyc_attr(allow_interpreted_subclasses=True)
class Lifespan:
    """The ASGI lifespan protocol, run once per worker process, on any event loop.

    :meth:`startup` starts the app's lifespan call in the background and waits
    for its answer; :meth:`shutdown` asks it to stop and waits again. An app
    that does not speak lifespan (it raises or returns before reading the
    startup message) is served without it, as the spec says.

    The rules are here; a driver's subclass says how the call runs in the
    background on its loop (:meth:`_start`, :meth:`_cancel`,
    :meth:`_wait_exited`) and gives the two queues and the event.
    """

    def __init__(
        self,
        app: ASGIApp,
        to_app: Queue,
        from_app: Queue,
        exited: Event,
        stopping: Callable[[], bool] | None = None,
    ) -> None:
        self.app = app
        #: True if the worker was told to stop: the startup wait ends then.
        self._stopping = stopping or (lambda: False)
        #: Set when a stop ended the startup wait: the worker must not serve.
        self.interrupted = False
        #: Shared with every request scope (shallow copies), per the lifespan spec.
        self.state: dict[str, Any] = {}
        self.supported = False
        self._to_app = to_app
        self._from_app = from_app
        #: Set once the app's lifespan call has returned (or raised).
        self._exited = exited
        self._receive_called = False

    # -- what the driver supplies ---------------------------------------------------

    def _start(self) -> None:
        """Run :meth:`_run_app` in the background."""
        raise NotImplementedError

    async def _cancel(self) -> None:
        """Stop the app's lifespan call if it still runs."""
        raise NotImplementedError

    async def _wait_exited(self, timeout: float) -> None:
        """Wait at most ``timeout`` seconds for the app's call to return."""
        raise NotImplementedError

    async def _next_reply(self, timeout: float) -> Message | None:
        """The app's next message, or None if none came within ``timeout`` seconds."""
        raise NotImplementedError

    # -- the protocol ----------------------------------------------------------------

    async def _receive(self) -> Message:
        self._receive_called = True
        return await self._to_app.get()

    async def _send(self, message: Message) -> None:
        await self._from_app.put(message)

    async def _run_app(self) -> None:
        """The app's lifespan call; how it ended is the last message it sends us.

        Cancelled, it sends nothing: the worker cancels it only once it waits
        for no more messages.
        """
        scope: Scope = {
            "type": "lifespan",
            "asgi": {"version": ASGI_VERSION, "spec_version": LIFESPAN_SPEC_VERSION},
            "state": self.state,
        }
        outcome: Message = {"type": "fcgi.app_exited", "error": None}
        try:
            await _awaitable(self.app(scope, self._receive, self._send))
        except Exception as exc:
            outcome["error"] = exc
            outcome["trace"] = traceback.format_exc()
        finally:
            self._exited.set()
        await self._from_app.put(outcome)

    async def startup(self) -> None:
        """Raise :class:`LifespanFailure` if the app says startup failed.

        A stop asked meanwhile ends the wait: the app's call is cancelled and
        :attr:`interrupted` set (the worker then leaves without serving).
        """
        self._start()
        await self._to_app.put({"type": "lifespan.startup"})
        reply = await self._startup_reply()
        if reply is None:
            await self._cancel()
            self.interrupted = True
            log.info("stopped before the app's lifespan startup completed")
            return
        kind = reply.get("type")
        if kind == "lifespan.startup.complete":
            self.supported = True
            log.debug("lifespan startup complete")
            return
        if kind == "lifespan.startup.failed":
            await self._cancel()
            message = reply.get("message") or "(no message)"
            # !s: compiled (setup.py), a plain {message} is str(), not format().
            raise LifespanFailure(f"the app's lifespan startup failed: {message!s}")
        if kind == "fcgi.app_exited":
            error = reply.get("error")
            if error is None:
                log.info("the app does not use lifespan (it returned without answering startup)")
                return
            if not self._receive_called:
                log.info("the app does not support lifespan (%s: %s)", type(error).__name__, error)
                return
            raise LifespanFailure(
                f"the app raised during lifespan startup:\n{reply.get('trace', error)}".rstrip()
            )
        await self._cancel()
        raise LifespanFailure(f"unexpected ASGI message {kind!r} during lifespan startup")

    async def _startup_reply(self) -> Message | None:
        """The app's answer to lifespan.startup; None if the worker was told to stop first."""
        waited = said = 0.0
        while True:
            reply = await self._next_reply(LIFESPAN_POLL)
            if reply is not None:
                return reply
            if self._stopping():
                return None
            waited += LIFESPAN_POLL
            if waited - said >= LIFESPAN_NOTICE:
                said = waited
                log.warning(
                    "still waiting for the app's lifespan startup after %.0fs: "
                    "nothing is served until it completes",
                    waited,
                )

    async def shutdown(self) -> None:
        """Ask the app to shut down and wait for it; failures are logged, not raised."""
        if not self.supported or self._exited.is_set():
            await self._cancel()
            return
        await self._to_app.put({"type": "lifespan.shutdown"})
        reply = await self._from_app.get()
        kind = reply.get("type")
        if kind == "lifespan.shutdown.complete":
            log.debug("lifespan shutdown complete")
        elif kind == "lifespan.shutdown.failed":
            log.error("the app's lifespan shutdown failed: %s", reply.get("message") or "")
        elif kind == "fcgi.app_exited" and reply.get("error") is not None:
            log.error("the app raised during lifespan shutdown:\n%s", Lines(reply.get("trace", "")))
        else:
            log.warning("unexpected ASGI message %r during lifespan shutdown", kind)
        await self._wait_exited(LIFESPAN_EXIT_GRACE)
        await self._cancel()
