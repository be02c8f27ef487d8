"""Events produced by the application-side cores, for the drivers.

:class:`fcgi.connection.ServerConnection` (FastCGI) and the uwsgi and SCGI
cores (:mod:`fcgi.uwsgi`, :mod:`fcgi.scgi`) all speak these, so a driver
serves every protocol the same way. Every event names the request it belongs
to; FastCGI's management records never surface here because the connection
answers them itself.
"""

from __future__ import annotations

from dataclasses import dataclass

# Each event writes its own __init__ (``init=False``): compiled by mypyc
# (setup.py), a dataclass would get the __init__ the dataclasses module
# generates, which runs as interpreted code, and a request makes three or
# more events. The dataclass still gives them __eq__ and __repr__.


@dataclass(slots=True, init=False)
class Event:
    """What every event carries: the request it belongs to."""

    request_id: int

    def __init__(self, request_id: int) -> None:
        self.request_id = request_id


@dataclass(slots=True, init=False)
class BeginRequest(Event):
    """BEGIN_REQUEST accepted: the id is now active."""

    role: int
    keep_conn: bool

    def __init__(self, request_id: int, role: int, keep_conn: bool) -> None:
        self.request_id = request_id
        self.role = role
        self.keep_conn = keep_conn


@dataclass(slots=True, init=False)
class Params(Event):
    """The PARAMS stream is complete.

    Names and values are decoded as latin-1, which maps bytes to code points one
    to one: this is exactly the "native string" PEP 3333 asks for, and lossless.
    A name sent twice keeps its last value.
    """

    params: dict[str, str]

    def __init__(self, request_id: int, params: dict[str, str]) -> None:
        self.request_id = request_id
        self.params = params


@dataclass(slots=True, init=False)
class StdinData(Event):
    """Part of the request body (FCGI_STDIN); never empty.

    ``data`` is bytes, or a read-only memoryview of bytes the driver handed
    over with :meth:`fcgi.connection.ServerConnection.feed_owned` (a body
    passed on without a copy of its own).
    """

    data: bytes | memoryview

    def __init__(self, request_id: int, data: bytes | memoryview) -> None:
        self.request_id = request_id
        self.data = data


@dataclass(slots=True, init=False)
class StdinEnd(Event):
    """The body is whole: the web server sent the empty FCGI_STDIN record."""

    def __init__(self, request_id: int) -> None:
        self.request_id = request_id


@dataclass(slots=True, init=False)
class DataChunk(Event):
    """Part of the FCGI_DATA stream (FILTER role only); bytes or a view, as StdinData."""

    data: bytes | memoryview

    def __init__(self, request_id: int, data: bytes | memoryview) -> None:
        self.request_id = request_id
        self.data = data


@dataclass(slots=True, init=False)
class DataEnd(Event):
    """The FCGI_DATA stream is whole (its empty record arrived)."""

    def __init__(self, request_id: int) -> None:
        self.request_id = request_id


@dataclass(slots=True, init=False)
class AbortRequest(Event):
    """The web server gave up on this request; answer with end_request() soon."""

    def __init__(self, request_id: int) -> None:
        self.request_id = request_id


@dataclass(slots=True, init=False)
class RequestRejected(Event):
    """The request broke a per-request rule (limits, stream order).

    The connection itself is still sound. Further input for this id is dropped.
    Before the request's Params event (the app has not started), the driver
    should answer with an error response (``http_status`` is a suggestion)
    and call end_request(). After it, the request's input simply ends: with
    ``http_status`` 413 (the body crossed max_body_size) the driver makes the
    app's next read raise :class:`fcgi.errors.RequestBodyTooLarge`.
    """

    reason: str
    http_status: int

    def __init__(self, request_id: int, reason: str, http_status: int) -> None:
        self.request_id = request_id
        self.reason = reason
        self.http_status = http_status


@dataclass(slots=True, init=False)
class RequestRefused(Event):
    """A BEGIN_REQUEST the connection answered itself with END_REQUEST.

    Reported only so the driver can log it: ``protocol_status`` is
    CANT_MPX_CONN, OVERLOADED or UNKNOWN_ROLE and nothing more is needed.
    """

    protocol_status: int
    role: int

    def __init__(self, request_id: int, protocol_status: int, role: int) -> None:
        self.request_id = request_id
        self.protocol_status = protocol_status
        self.role = role
