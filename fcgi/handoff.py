"""Sync workers of one pool passing idle kept connections to each other.

A sync worker serves one request at a time, and a connection parked in it
(kept by the web server between requests, or new and silent so far) is read
by it alone. With ``fastcgi_keep_conn on`` nginx may send a request on a
connection parked in a worker that is busy with a slow request: that request
would wait for the slow one while other workers sit idle.

So the master gives each pool of sync workers a :class:`Channel`, a unix
socket pair every worker inherits both ends of. A worker whose request has
run for :data:`SLOW_REQUEST` sends its parked connections that hold no input
in user space (the bytes a web server already wrote stay in the kernel and
travel with the socket) down the channel with SCM_RIGHTS, then closes its own
descriptor; an idle worker, which polls the channel's other end together
with its listeners, takes each one in as a parked connection of its own.
Nothing is ever closed by a hand-off: a send that would block leaves the
connection where it was, and a connection sent while every worker is busy
waits in the channel for the first worker to be free (the sender too, once
its request is over), never longer than it would have waited in the sender.

:class:`SlowRequestWatch` is the sender's clock: one daemon thread per
worker, which the worker's main thread only touches with attribute stores
and an uncontended lock per request, so a fast request pays nothing more.
"""

from __future__ import annotations

import array
import contextlib
import logging
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable

log = logging.getLogger("fcgi.worker")

#: Seconds a request must have run before its worker passes its idle parked
#: connections on. Short, because a request waiting behind a slow one waits
#: this long at least; long enough that ordinary fast requests (well under a
#: millisecond for a small app) never trigger a hand-off, and that the watch
#: thread, which wakes this often only while its worker is busy, costs little.
SLOW_REQUEST = 0.005

#: What travels with each descriptor: a format version (a re-executed master
#: keeps its pools' channels, so an upgrade of fcgi puts workers of two
#: versions on one channel: a mismatch must never be misread), when the
#: connection's request head must be whole and when it is closed if nothing
#: arrives (time.monotonic() values: one clock for every process of the
#: machine), and whether it was idle between requests (True) or new and still
#: silent (False). The close deadline travels so that a move does not restart
#: read_timeout: a connection moved on every slow request would never expire.
_PAYLOAD = struct.Struct("=Bdd?")
_VERSION = 2
#: Room for the control message of one descriptor (and a few more, so that a
#: message with extra descriptors is received whole and they can be closed).
_CMSG_ROOM = socket.CMSG_SPACE(8 * array.array("i").itemsize)


class Channel:
    """A pool's hand-off channel: one end to send connections on, one to receive them.

    SOCK_SEQPACKET: a message is one connection (no record boundaries to
    keep), and unlike SOCK_DGRAM its queue is bounded by bytes, not by the
    ten datagrams of ``net.unix.max_dgram_qlen``. Both ends are non-blocking
    and close on exec; a re-executed master inherits them on purpose
    (:mod:`fcgi.pool.reexec`) and its pool of the same name keeps the channel.
    """

    def __init__(self, send_end: socket.socket, receive_end: socket.socket) -> None:
        self.send_end = send_end
        self.receive_end = receive_end
        #: True once :meth:`receive` saw the end of the stream (see :meth:`refuse_more`):
        #: the receive end stays readable from then on, and must leave the poller.
        self.ended = False

    @classmethod
    def create(cls) -> Channel:
        send_end, receive_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        send_end.setblocking(False)
        receive_end.setblocking(False)
        return cls(send_end, receive_end)

    def fds(self) -> list[int]:
        return [self.send_end.fileno(), self.receive_end.fileno()]

    def send(self, fd: int, head_deadline: float, deadline: float, idle: bool) -> bool:
        """Pass connection ``fd`` on; False if the channel cannot take it now."""
        payload = _PAYLOAD.pack(_VERSION, head_deadline, deadline, idle)
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())]
        try:
            sent = self.send_end.sendmsg(
                [payload], rights, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL
            )
        except OSError:
            # Full (EAGAIN), out of buffers, too many descriptors in flight,
            # refused (EPIPE, see refuse_more): the connection stays where it is.
            return False
        return sent == len(payload)

    def refuse_more(self) -> None:
        """Make every later :meth:`send`, in any process, fail; what was sent can still be read.

        For a pool that stops as a whole: no worker of it goes on serving, so
        a connection sent now would wait, unread, until the channel closed
        with the master. Shutting the sending side is seen by every process at
        once (it is one socket, whoever holds a descriptor of it).
        """
        with contextlib.suppress(OSError):
            self.send_end.shutdown(socket.SHUT_WR)

    def receive(self) -> tuple[int, float, float, bool] | None:
        """(descriptor, head deadline, deadline, idle) of the next connection passed on, or None."""
        while True:
            try:
                data, ancillary, flags, _ = self.receive_end.recvmsg(
                    _PAYLOAD.size + 1, _CMSG_ROOM, socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC
                )
            except (BlockingIOError, InterruptedError):
                return None
            fds = array.array("i")
            for level, kind, body in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(body[: len(body) - len(body) % fds.itemsize])
            if len(fds) == 1 and len(data) == _PAYLOAD.size and not flags & socket.MSG_CTRUNC:
                version, head_deadline, deadline, idle = _PAYLOAD.unpack(data)
                if version == _VERSION:
                    return fds[0], head_deadline, deadline, idle
            if not data and not fds:
                # End of stream: the pool stops as a whole (refuse_more). Readable
                # for good from now on: the caller must stop polling for it.
                self.ended = True
                return None
            # Not a message of ours (a worker of another fcgi version, across
            # a re-exec): never misread, never leak what came with it.
            log.warning(
                "closed %d connection(s) passed on in a form this worker does not read "
                "(another fcgi version?)",
                len(fds),
            )
            for fd in fds:
                with contextlib.suppress(OSError):
                    socket.close(fd)

    def close(self) -> None:
        self.send_end.close()
        self.receive_end.close()


class SlowRequestWatch:
    """Calls ``give_away`` in a helper thread once a request has run for SLOW_REQUEST.

    What the worker's main thread does, written inline there (a method call
    per request would cost more than the rest of it):

    * it holds :attr:`gate` while it blocks in its epoll wait (a C lock, two
      calls per wait; an Event would cost a Python-level condition each
      time): the thread waits for the gate meanwhile, so an idle worker has
      no thread waking up;
    * before it enters a request it sets :attr:`running` to a new number
      (a count it keeps), and after it clears it to 0 holding :attr:`lock`.

    While the worker is awake the thread looks at ``running`` every
    SLOW_REQUEST: the same number seen twice means a request that has run at
    least that long. ``give_away`` then runs with ``lock`` held and
    ``running`` unchanged, so it may use the worker's parked connections,
    which the main thread leaves alone while it serves a request, and never
    while the main thread does. It returns False if some connections could
    not be passed on yet (the channel is full): they are tried again on the
    next look.
    """

    def __init__(self, give_away: Callable[[], bool]) -> None:
        self.give_away = give_away
        self.lock = threading.Lock()
        self.running = 0
        self.gate = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._watch, name="fcgi-handoff", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Let the thread end (it is a daemon: nothing waits for it)."""
        self._closed = True

    def _watch(self) -> None:
        # Every signal goes to the main thread: the master's signals to the
        # worker, and the faulthandler dump of a stuck request, whose C
        # handler names the thread it runs in as the current one.
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        given = 0  # the request whose connections were all passed on already
        while True:
            with self.gate:
                pass  # the worker is awake
            if self._closed:
                return
            seen = self.running
            time.sleep(SLOW_REQUEST)
            if not seen or seen == given or self.running != seen:
                continue
            with self.lock:
                if self.running != seen or self._closed:
                    continue
                try:
                    if self.give_away():
                        given = seen
                except Exception:
                    # A bug here must not end the thread (and every later
                    # hand-off of this worker) silently; the connections
                    # not passed on stay where they are.
                    log.exception("passing idle connections to the other workers failed")
                    given = seen
