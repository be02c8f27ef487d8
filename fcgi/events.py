"""Events produced by the application-side cores, for the drivers.

:class:`fcgi.connection.ServerConnection` (FastCGI) and the uwsgi and SCGI
cores (:mod:`fcgi.uwsgi`, :mod:`fcgi.scgi`) all speak these, so a driver
serves every protocol the same way. Every event names the request it belongs
to; FastCGI's management records never surface here because the connection
answers them itself.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Event:
    """What every event carries: the request it belongs to."""

    request_id: int


@dataclass(slots=True)
class BeginRequest(Event):
    """BEGIN_REQUEST accepted: the id is now active."""

    role: int
    keep_conn: bool


@dataclass(slots=True)
class Params(Event):
    """The PARAMS stream is complete.

    Names and values are decoded as latin-1, which maps bytes to code points one
    to one: this is exactly the "native string" PEP 3333 asks for, and lossless.
    A name sent twice keeps its last value.
    """

    params: dict[str, str]


@dataclass(slots=True)
class StdinData(Event):
    """Part of the request body (FCGI_STDIN); never empty."""

    data: bytes


@dataclass(slots=True)
class StdinEnd(Event):
    """The body is whole: the web server sent the empty FCGI_STDIN record."""


@dataclass(slots=True)
class DataChunk(Event):
    """Part of the FCGI_DATA stream (FILTER role only)."""

    data: bytes


@dataclass(slots=True)
class DataEnd(Event):
    """The FCGI_DATA stream is whole (its empty record arrived)."""


@dataclass(slots=True)
class AbortRequest(Event):
    """The web server gave up on this request; answer with end_request() soon."""


@dataclass(slots=True)
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


@dataclass(slots=True)
class RequestRefused(Event):
    """A BEGIN_REQUEST the connection answered itself with END_REQUEST.

    Reported only so the driver can log it: ``protocol_status`` is
    CANT_MPX_CONN, OVERLOADED or UNKNOWN_ROLE and nothing more is needed.
    """

    protocol_status: int
    role: int
