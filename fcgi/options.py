"""Settings one worker process serves with, and :func:`make_options` that builds them.

The single-process server and every pool worker read the same
:class:`ServerOptions`; the pool's configuration file (issue: process manager)
maps onto it, so a knob means the same thing everywhere. The defaults are
the settings table's (:mod:`fcgi.settings`), written nowhere else.

It sits below the pool and the server, which both build options here: the
pool's :meth:`~fcgi.pool.config.PoolConfig.server_options` and ``fcgi.serve()``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from fcgi.connection import Limits
from fcgi.handoff import Channel
from fcgi.settings import default, resolve
from fcgi.sockets import parse_allowed_clients


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
    #: Listening socket descriptor -> the wire protocol its connections speak,
    #: for the listeners that do not speak FastCGI ("uwsgi", "scgi": a bind
    #: spec's prefix, see fcgi.sockets). By descriptor because a worker gets
    #: its listeners across fork() under the numbers the server opened them
    #: with, and a driver looks each one up once, when it starts to accept.
    protocols: dict[int, str] = field(default_factory=dict)
    #: A pool's channel for passing idle kept connections between its sync
    #: workers (:mod:`fcgi.handoff`); None in a single process, which has no
    #: sibling to pass them to.
    handoff: Channel | None = None
    #: Whether a worker told to stop passes its idle kept connections on too
    #: (not only one leaving on its own). Turned off for a pm = ondemand
    #: worker the master stops for being idle (its SIGQUIT): the master does
    #: that to have none, and a worker started for the connections it passed
    #: on would be stopped idle in its turn.
    handoff_on_stop: bool = True


def make_options(
    *,
    read_timeout: float | str | None = None,
    script_name: str | None = None,
    max_params: int | None = None,
    max_params_bytes: int | str | None = None,
    allowed_clients: Sequence[str] | str | None = None,
    multiprocess: bool = False,
    stderr_tracebacks: bool = True,
    interface: str | None = None,
    threads: int | None = None,
    max_conns: int | None = None,
    max_reqs: int | None = None,
    max_body_size: int | str | None = None,
    request_header_timeout: float | str | None = None,
    send_timeout: float | str | None = None,
) -> ServerOptions:
    """Build :class:`ServerOptions` from keyword settings, validating each.

    None means the default of :data:`fcgi.settings.SETTINGS`; values are read
    as in the file (``"512M"``, ``"1m30s"``). ``allowed_clients`` is the
    ``listen_allowed_clients`` setting; the addresses in the environment's
    ``FCGI_WEB_SERVER_ADDRS`` are allowed too.
    """
    given = dict(locals())
    processes, tracebacks = given.pop("multiprocess"), given.pop("stderr_tracebacks")
    given["listen_allowed_clients"] = given.pop("allowed_clients")
    v = resolve(given, lambda name: name)
    allowed = parse_allowed_clients(v["listen_allowed_clients"])
    env_allowed = os.environ.get("FCGI_WEB_SERVER_ADDRS")
    if env_allowed:
        allowed += parse_allowed_clients(env_allowed)
    return ServerOptions(
        read_timeout=v["read_timeout"],
        limits=Limits(
            max_params=v["max_params"],
            max_params_bytes=v["max_params_bytes"],
            max_body_size=v["max_body_size"],
        ),
        request_header_timeout=v["request_header_timeout"],
        send_timeout=v["send_timeout"],
        script_name=v["script_name"],
        allowed_clients=allowed,
        multiprocess=processes,
        stderr_tracebacks=tracebacks,
        interface=v["interface"],
        threads=v["threads"],
        max_conns=v["max_conns"],
        max_reqs=v["max_reqs"],
    )
