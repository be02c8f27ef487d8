"""Exceptions raised by fcgi.

The protocol layer raises only :class:`ProtocolError` for anything a peer can
send, so a driver needs exactly one ``except`` to survive hostile input.
"""

from __future__ import annotations


class FastCGIError(Exception):
    """Base class for every error fcgi raises on purpose."""


class ProtocolError(FastCGIError):
    """The peer broke the FastCGI protocol; the connection cannot continue."""


class LocalProtocolError(FastCGIError):
    """This side tried something the protocol forbids (a driver bug, not peer input)."""


class ConfigError(FastCGIError):
    """A setting is missing, unknown or out of range."""


class RequestBodyIncomplete(FastCGIError):
    """The web server stopped sending the request body before its end.

    It closed the connection, or sent nothing for read_timeout, in the middle
    of FCGI_STDIN. Raised from the app's next read past what did arrive, so a
    cut-off upload is never taken for a whole one (only the web server's empty
    FCGI_STDIN record ends a body). An app that lets it propagate gets a 400
    (if the web server is still there to read it), not a 500 and a traceback.
    """


class RequestBodyTooLarge(FastCGIError):
    """The request body crossed ``max_body_size``.

    Raised from the app's next read of the body (``wsgi.input``, ASGI
    ``receive()``) once the bytes below the limit are used up. An app that
    lets it propagate gets a 413 answer instead of a 500 with a traceback.
    """
