"""Exceptions raised by fcgi.

Every error fcgi raises on purpose derives from :class:`FastCGIError`, so a
program that embeds fcgi tells fcgi's refusals from its own bugs with one
``except``. The protocol layer raises only :class:`ProtocolError` for anything
a peer can send, so a driver needs exactly one ``except`` to survive hostile
input. The tree, with where each class lives when it is not here::

    FastCGIError
    ├── ProtocolError           the peer broke the protocol
    ├── LocalProtocolError      this side broke it (a driver bug)
    ├── ConfigError             a setting is missing, unknown or out of range
    │   ├── ConfigErrors        several at once (fcgi.settings)
    │   └── StartupError        what the start-up checks found (fcgi.pool.preflight)
    ├── RequestBodyIncomplete   raised into the app's reads of the body
    │   └── BodyCutOff          ... because the web server went away (fcgi.wsgi;
    │                           also a ClientGone: the driver logged it, no answer)
    ├── RequestBodyTooLarge     raised into the app's reads of the body
    ├── ClientGone              a driver's send: the web server went away (fcgi.wsgi)
    ├── AppImportError          the app named does not import (fcgi.app_loader)
    ├── LifespanFailure         an ASGI app refused to start (fcgi.asgi)
    ├── BootError               a pool worker cannot start (fcgi.pool.worker_process)
    │   └── AppLoadError        ... because of the app itself
    ├── ClientError             ``fcgi request`` and FastCGIClient (fcgi.client)
    │   ├── ConnectionFailed
    │   └── RequestTimeout
    └── UsageError              ``fcgi request``'s arguments (fcgi.client)

Classes that live next to the code raising them stay there (an adapter's
error belongs with the adapter); this module holds the ones several layers
share. Two errors stay outside on purpose, because what catches them is
fixed elsewhere: :class:`fcgi.asgi.ClientDisconnected` is an ``OSError``, as
the ASGI spec (2.4) says ``send`` raises once the client is gone, and
:class:`fcgi.sync_worker.SendTimeout` is a ``TimeoutError`` that never leaves
the sync worker (it becomes :class:`ClientGone` there). Private exceptions a
module raises and catches itself (``_Timeout``) are control flow, not errors.

:class:`ClientGone`, :class:`BootError` and :class:`UsageError` joined the
tree late (they derived from ``Exception``), and doing so changed what no
``except`` in fcgi catches: each is caught by name where it can arise (the
drivers and adapters around every send; the worker's start, the start-up
check's child and the master's preload; ``fcgi request``'s argument reading),
and the three ``except FastCGIError`` clauses (``fcgi serve`` around
``serve()``, ``fcgi request`` around the request, the status listener around
``Connection.feed``) enclose none of those places. Neither is any of them a
:class:`ProtocolError`, which drivers catch to close a connection.
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
