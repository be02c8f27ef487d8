"""Settings one worker process serves with.

The single-process server and every pool worker read the same
:class:`ServerOptions`; the pool's configuration file (issue: process manager)
maps onto it, so a knob means the same thing everywhere. The defaults are
the settings table's (:mod:`fcgi.settings`), written nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fcgi.connection import Limits
from fcgi.settings import default


@dataclass(slots=True)
class ServerOptions:
    #: Seconds a connection may stay silent (idle keep-alive, or a record
    #: stalled half way) before it is closed with a log line. Also the longest
    #: a single write may wait for the web server to read.
    read_timeout: float = default("read_timeout")
    #: Seconds from a connection's acceptance (or from the first byte of a
    #: later request on a kept connection) until BEGIN_REQUEST and the whole
    #: PARAMS stream have arrived. Bounds what a slow or silent client can
    #: hold: read_timeout alone restarts with every byte.
    request_header_timeout: float = default("request_header_timeout")
    #: Seconds one request may spend, in total, waiting for the web server to
    #: take its output. read_timeout bounds one stalled write; this bounds a
    #: peer that reads a byte just often enough to never stall that long.
    #: Time the app spends producing output does not count.
    send_timeout: float = default("send_timeout")
    #: Protocol limits per connection (params count and size, concurrent ids).
    limits: Limits = field(
        default_factory=lambda: Limits(
            max_params=default("max_params"),
            max_params_bytes=default("max_params_bytes"),
            max_body_size=default("max_body_size"),
        )
    )
    #: Where the app is mounted. None: trust what the web server sent, with the
    #: fixes described in fcgi.wsgi.fix_script_name. "" or "/app": force it.
    script_name: str | None = default("script_name")
    #: Request bodies larger than this are spooled to a temporary file when
    #: they must be buffered; smaller ones stay in memory.
    spool_threshold: int = 1024 * 1024
    #: Allowed TCP peers (FCGI_WEB_SERVER_ADDRS / listen_allowed_clients);
    #: empty means anyone. Unix-socket peers are always allowed.
    allowed_clients: tuple[str, ...] = default("listen_allowed_clients")
    #: What the environ claims (PEP 3333): a pool worker is multiprocess.
    multiprocess: bool = False
    multithread: bool = False
    #: Send app tracebacks to the web server as FCGI_STDERR too (nginx logs them).
    stderr_tracebacks: bool = True
    #: Which interface the app speaks: "auto" (detect), "wsgi" or "asgi".
    interface: str = default("interface")
    #: Trio worker: threads running WSGI apps at once (ASGI apps need none).
    threads: int = default("threads")
    #: Trio worker: most connections served at once. One more makes the
    #: connection quiet for longest (idle, or still without a whole request
    #: head) close; it is refused, with a log line, only when every connection
    #: is busy. Reported as FCGI_MAX_CONNS.
    max_conns: int = default("max_conns")
    #: Trio worker: most requests in progress at once over all connections; one
    #: more gets END_REQUEST OVERLOADED. Reported as FCGI_MAX_REQS.
    max_reqs: int = default("max_reqs")
