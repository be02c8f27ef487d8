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


class RequestBodyTooLarge(FastCGIError):
    """The request body crossed ``max_body_size``.

    Raised from the app's next read of the body (``wsgi.input``, ASGI
    ``receive()``) once the bytes below the limit are used up. An app that
    lets it propagate gets a 413 answer instead of a 500 with a traceback.
    """
