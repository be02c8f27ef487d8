"""How many connections wait in a listening socket's kernel queue.

Asked of the kernel through sock_diag netlink (what ``ss -lx`` / ``ss -lt`` use),
for unix sockets as well as TCP: for a listening socket the kernel reports the
current accept queue as ``rqueue`` and the backlog as ``wqueue``. PHP-FPM only
reads TCP figures (from /proc), so "listen queue" is always 0 on the unix
sockets most deployments use; here it is measured for both. For TCP, if netlink
is unavailable, /proc/net/tcp{,6} gives the same numbers.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass

# The kernel's numbers, as its headers name them (Python's socket module has none).
#: linux/netlink.h: the netlink family that answers sock_diag queries.
NETLINK_SOCK_DIAG = 4
#: linux/sock_diag.h: the message type of a query, for any address family.
SOCK_DIAG_BY_FAMILY = 20
#: linux/netlink.h, nlmsghdr flags: a request; ROOT|MATCH, every matching
#: socket; and, on an answer, "one part of several" (NLMSG_DONE ends them).
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLM_F_MULTI = 0x2
#: linux/netlink.h, message types of the answer: an error (0: none), the end.
NLMSG_ERROR = 2
NLMSG_DONE = 3
#: linux/tcp_states.h: the listening state (queries select states by 1 << n;
#: /proc/net/tcp writes it in hex); unix sockets use the same numbers.
TCP_LISTEN = 10
#: linux/unix_diag.h: ask for, then read, the attribute with the two queue figures.
UDIAG_SHOW_RQLEN = 0x10
UNIX_DIAG_RQLEN = 4
#: linux/inet_diag.h's INET_DIAG_NOCOOKIE, in each half of the cookie: any socket.
NO_COOKIE = 0xFFFFFFFF
#: Seconds to wait for the kernel's answer, which comes at once; a status
#: page must never hang on it.
_NETLINK_TIMEOUT = 2.0

#: The kernel's structs, in native byte order: struct nlmsghdr, unix_diag_req,
#: unix_diag_msg, rtattr (an attribute's length and type), inet_diag_req_v2
#: (up to its sockid, which follows zeroed) and inet_diag_msg.
_NLMSGHDR = struct.Struct("=IHHII")
_UNIX_DIAG_REQ = struct.Struct("=BBHIIIII")
_UNIX_DIAG_MSG = struct.Struct("=BBBBIII")
_RTATTR = struct.Struct("=HH")
_INET_DIAG_REQ = struct.Struct("=BBBBI4x")
#: struct inet_diag_sockid: ports (2 + 2), addresses (16 + 16), interface, cookie.
_INET_SOCKID_LEN = 48
_INET_DIAG_MSG = struct.Struct("=BBBBHH32sIIIIIIII")


@dataclass(slots=True)
class ListenQueue:
    """One listening socket's queue (or a pool's, summed)."""

    #: Connections completed by the kernel and not yet accepted.
    queued: int
    #: The backlog the socket listens with (the most that can wait).
    backlog: int


def _netlink_exchange(request: bytes) -> list[tuple[int, bytes]]:
    """Send one sock_diag request; return (type, payload) of every reply message."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(_NETLINK_TIMEOUT)
        nl.sendto(request, (0, 0))
        out: list[tuple[int, bytes]] = []
        while True:
            data = nl.recv(65536)
            pos = 0
            while pos + _NLMSGHDR.size <= len(data):
                length, mtype, flags, _seq, _pid = _NLMSGHDR.unpack_from(data, pos)
                if length < _NLMSGHDR.size:
                    return out
                payload = data[pos + _NLMSGHDR.size : pos + length]
                if mtype == NLMSG_DONE:
                    return out
                if mtype == NLMSG_ERROR:
                    errno = -struct.unpack_from("=i", payload)[0]
                    if errno:
                        raise OSError(errno, os.strerror(errno))
                    return out
                out.append((mtype, payload))
                pos += (length + 3) & ~3
                if not flags & NLM_F_MULTI:  # a single answer
                    return out


def unix_listen_queue(sock: socket.socket) -> ListenQueue:
    """Queue figures of a listening AF_UNIX socket, by its inode."""
    ino = os.fstat(sock.fileno()).st_ino
    body = _UNIX_DIAG_REQ.pack(
        socket.AF_UNIX, 0, 0, 1 << TCP_LISTEN, ino, UDIAG_SHOW_RQLEN, NO_COOKIE, NO_COOKIE
    )
    header = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, 0)
    for _mtype, payload in _netlink_exchange(header + body):
        _fam, _type, _state, _pad, msg_ino, _c0, _c1 = _UNIX_DIAG_MSG.unpack_from(payload)
        if msg_ino != ino:
            continue
        pos = _UNIX_DIAG_MSG.size
        while pos + _RTATTR.size <= len(payload):
            alen, atype = _RTATTR.unpack_from(payload, pos)
            if alen < _RTATTR.size:
                break
            if atype == UNIX_DIAG_RQLEN:
                rqueue, wqueue = struct.unpack_from("=II", payload, pos + _RTATTR.size)
                return ListenQueue(rqueue, wqueue)
            pos += (alen + 3) & ~3
    raise OSError(f"socket inode {ino} not reported by sock_diag")


def inet_listen_queue(sock: socket.socket) -> ListenQueue:
    """Queue figures of a listening TCP socket (IPv4 or IPv6), by its inode."""
    ino = os.fstat(sock.fileno()).st_ino
    try:
        body = _INET_DIAG_REQ.pack(sock.family, socket.IPPROTO_TCP, 0, 0, 1 << TCP_LISTEN)
        body += bytes(_INET_SOCKID_LEN)
        header = _NLMSGHDR.pack(
            _NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0
        )
        for _mtype, payload in _netlink_exchange(header + body):
            values = _INET_DIAG_MSG.unpack_from(payload)
            rqueue, wqueue, msg_ino = values[11], values[12], values[14]
            if msg_ino == ino:
                return ListenQueue(rqueue, wqueue)
    except OSError:
        pass
    return _proc_net_tcp(sock, ino)


def _proc_net_tcp(sock: socket.socket, ino: int) -> ListenQueue:
    name = "tcp6" if sock.family == socket.AF_INET6 else "tcp"
    with open(f"/proc/net/{name}") as f:
        next(f)
        for line in f:
            cols = line.split()
            if len(cols) > 9 and cols[9] == str(ino) and cols[3] == f"{TCP_LISTEN:02X}":
                _tx, rx = cols[4].split(":")
                # /proc shows the accept queue but not the backlog for LISTEN sockets.
                return ListenQueue(int(rx, 16), 0)
    raise OSError(f"socket inode {ino} not found in /proc/net/{name}")


def listen_queue(sock: socket.socket) -> ListenQueue:
    """Queue figures of a listening socket; OSError if the kernel cannot say."""
    if sock.family == socket.AF_UNIX:
        return unix_listen_queue(sock)
    return inet_listen_queue(sock)


def total_listen_queue(socks: Iterable[socket.socket]) -> ListenQueue | None:
    """Sum over a pool's listening sockets; None if the kernel could not say."""
    queued = backlog = 0
    found = False
    for sock in socks:
        try:
            q = listen_queue(sock)
        except (OSError, ValueError, struct.error):
            continue
        found = True
        queued += q.queued
        backlog += q.backlog
    return ListenQueue(queued, backlog) if found else None
