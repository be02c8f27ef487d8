"""``status_listen``: a socket the master answers itself, with the status and ping pages.

Workers answer ``status_path`` on the pool's own socket, which is no help when
every worker is busy, the moment the page matters most. This socket is served
by the master's loop, non-blocking, a connection at a time per readiness event
and with a short deadline, so a stuck client cannot hold the master.

A TCP ``status_listen`` takes connections only from the pool's
``listen_allowed_clients``, as the workers do on the pool's own sockets: the
page shows what every worker is doing, and an address that may not send
requests has no business reading it.

:class:`StatusServer` serves any :class:`Responder`; :class:`StatusResponder`
is the one the master gives it, making a pool's page from the scoreboard.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from typing import Protocol

from fcgi import events as ev
from fcgi.connection import ServerConnection
from fcgi.errors import FastCGIError
from fcgi.hooks import render_answer
from fcgi.listen_queue import total_listen_queue
from fcgi.pool.running_pool import RunningPool
from fcgi.pool.status import PageAnswer, collect_from_board, ping_answer, render
from fcgi.sockets import peer_allowed

log = logging.getLogger("fcgi.pool")

#: Seconds a status_listen connection gets in all, so a stuck client cannot hold
#: the master.
DEADLINE = 5.0


class Responder(Protocol):
    """Makes the page for a request's params; knows which peers may ask."""

    #: TCP peers allowed to connect (empty: any); unix peers always may.
    allowed_clients: tuple[str, ...]

    def __call__(self, params: dict[str, str], /) -> PageAnswer: ...


class StatusResponder:
    """The status_listen page of one pool, made by the master from the scoreboard."""

    def __init__(self, pool: RunningPool) -> None:
        self.pool = pool
        #: status_listen admits the same TCP peers as the pool's own sockets.
        self.allowed_clients: tuple[str, ...] = tuple(pool.config.listen_allowed_clients)

    def __call__(self, params: dict[str, str]) -> PageAnswer:
        cfg = self.pool.config
        path = (params.get("REQUEST_URI") or params.get("SCRIPT_NAME", "")).split("?", 1)[0]
        if cfg.ping_path is not None and path == cfg.ping_path:
            return ping_answer(cfg.ping_response)
        queue = total_listen_queue(self.pool.listeners)
        return render(
            collect_from_board(cfg, self.pool.board, queue), params.get("QUERY_STRING", "")
        )


class _StatusConnection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.conn = ServerConnection()
        self.deadline = time.monotonic() + DEADLINE


class StatusServer:
    """Accepts on ``listener``; ``respond(params)`` makes the page."""

    def __init__(self, listener: socket.socket, respond: Responder) -> None:
        self.listener = listener
        self.respond = respond
        listener.setblocking(False)
        self.connections: dict[int, _StatusConnection] = {}

    def fds(self) -> list[int]:
        return [self.listener.fileno(), *self.connections]

    def on_readable(self, fd: int) -> None:
        if fd == self.listener.fileno():
            self._accept()
        elif fd in self.connections:
            self._read(self.connections[fd])

    def expire(self, now: float) -> None:
        for c in list(self.connections.values()):
            if now > c.deadline:
                self._close(c)

    def close(self) -> None:
        for c in list(self.connections.values()):
            self._close(c)

    def _accept(self) -> None:
        for _ in range(16):
            try:
                sock, peer = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("status_listen: accept failed: %s", exc)
                return
            allowed = self.respond.allowed_clients
            if allowed and not peer_allowed(peer, allowed):
                log.warning("status_listen: refused %s: not an allowed client", peer)
                sock.close()
                continue
            sock.setblocking(False)
            self.connections[sock.fileno()] = _StatusConnection(sock)

    def _read(self, c: _StatusConnection) -> None:
        try:
            data = c.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(c)
            return
        if not data:
            self._close(c)
            return
        try:
            events = c.conn.feed(data)
        except FastCGIError as exc:
            log.warning("status_listen: closing connection: %s", exc)
            self._close(c)
            return
        for event in events:
            if isinstance(event, ev.Params):
                self._answer(c, event.request_id, event.params)
                if c.conn.should_close or c.sock.fileno() < 0:
                    break
            elif isinstance(event, ev.RequestRejected):
                c.conn.send_stdout(event.request_id, b"Status: 400 Bad Request\r\n\r\n")
                c.conn.end_request(event.request_id)
        self._flush(c)
        if c.conn.should_close:
            self._close(c)

    def _answer(self, c: _StatusConnection, rid: int, params: dict[str, str]) -> None:
        try:
            answer = self.respond(params)
        except Exception:
            log.exception("status_listen: building the page failed")
            answer = PageAnswer("500 Internal Server Error", [], b"")
        c.conn.send_stdout(rid, render_answer(answer, params.get("REQUEST_METHOD", "GET")))
        c.conn.end_request(rid)

    def _flush(self, c: _StatusConnection) -> None:
        data = c.conn.data_to_send()
        if not data:
            return
        try:
            c.sock.setblocking(True)
            c.sock.settimeout(max(0.1, c.deadline - time.monotonic()))
            c.sock.sendall(data)
            c.sock.setblocking(False)
        except OSError:
            self._close(c)

    def _close(self, c: _StatusConnection) -> None:
        fd = c.sock.fileno()
        self.connections.pop(fd, None)
        with contextlib.suppress(OSError):
            c.sock.close()
