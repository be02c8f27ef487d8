"""Listening sockets: parsing bind addresses, binding safely, inherited fds.

Address forms: ``unix:/path`` (or any path starting with ``/`` or ``.``),
``HOST:PORT``, ``[V6]:PORT``, a bare ``PORT`` (loopback only: FastCGI has no
authentication, so listening on every interface must be asked for with
``0.0.0.0:PORT``), and ``fd://N`` for a socket handed over by a parent.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import ipaddress
import logging
import math
import os
import pwd
import socket
import stat
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from fcgi.errors import ConfigError

log = logging.getLogger("fcgi.sockets")


@dataclass(frozen=True, slots=True)
class BindSpec:
    kind: str  # "unix", "tcp" or "fd"
    path: str = ""
    host: str = ""
    port: int = 0
    fd: int = -1

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        if self.kind == "fd":
            return f"fd://{self.fd}"
        return format_address(self.host, self.port)


def parse_bind(spec: str) -> BindSpec:
    """Parse an address, raising ConfigError with the offending text."""
    text = spec.strip()
    if text.startswith("unix:"):
        path = text[5:]
        if not path:
            raise ConfigError(f"bind address {spec!r}: empty unix socket path")
        return BindSpec("unix", path=path)
    if text.startswith(("/", ".")):
        return BindSpec("unix", path=text)
    if text.startswith("fd://"):
        try:
            fd = int(text[5:])
        except ValueError:
            raise ConfigError(f"bind address {spec!r}: fd:// needs a number") from None
        if fd < 0:
            raise ConfigError(f"bind address {spec!r}: negative fd")
        return BindSpec("fd", fd=fd)
    if text.isdigit():
        host, port_text = "127.0.0.1", text
    elif text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ConfigError(f"bind address {spec!r}: expected [IPV6]:PORT")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ConfigError(
                f"bind address {spec!r}: expected unix:/path, HOST:PORT, [IPV6]:PORT or fd://N"
            )
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"bind address {spec!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"bind address {spec!r}: port {port} out of range")
    return BindSpec("tcp", host=host, port=port)


def open_listener(
    spec: BindSpec | str,
    *,
    mode: int = 0o660,
    backlog: int = 511,
    owner: str | None = None,
    group: str | None = None,
) -> socket.socket:
    """Bind and listen. A stale unix socket file is replaced; a live one is an error."""
    if isinstance(spec, str):
        spec = parse_bind(spec)
    if spec.kind == "unix":
        return _open_unix(spec.path, mode, backlog, owner, group)
    if spec.kind == "fd":
        return adopt_listener(spec.fd)
    try:
        infos = socket.getaddrinfo(
            spec.host, spec.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ConfigError(f"bind address {spec}: cannot resolve {spec.host!r}: {exc}") from None
    family, socktype, proto, _, addr = infos[0]
    sock = socket.socket(family, socktype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {spec}: {exc.strerror or exc}") from None
    return sock


def _open_unix(
    path: str, mode: int, backlog: int, owner: str | None, group: str | None
) -> socket.socket:
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Bind under a umask that leaves no window in which the socket is wider
    # open than asked, then set the exact mode.
    old_umask = os.umask(0o777 & ~mode)
    try:
        sock.bind(path)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on unix:{path}: {exc.strerror or exc}") from None
    finally:
        os.umask(old_umask)
    os.chmod(path, mode)
    if owner is not None or group is not None:
        uid = _uid(owner) if owner is not None else -1
        gid = _gid(group) if group is not None else -1
        os.chown(path, uid, gid)
    return sock


#: How long a new server waits for processes left by a dead one to let go of
#: the socket at its path (the workers of a master killed with SIGKILL finish
#: their requests first). Past it, the start fails saying what holds the path.
LEFTOVER_WAIT = 10.0
#: Seconds between two connection probes while waiting.
LEFTOVER_PROBE_INTERVAL = 0.2


def _remove_stale_socket(path: str) -> None:
    """Make way for a new socket at ``path``, unless a live server listens there.

    Connection refused: nobody listens, the file is stale and is removed. A
    connection is accepted into the queue: someone holds the listening
    socket. If the process that called listen() on it (SO_PEERCRED) still
    runs, that is another server: refuse. If it is gone, what holds the
    socket are processes it left, such as the workers of a master killed
    with SIGKILL finishing their requests before they exit: wait up to
    LEFTOVER_WAIT for them, then refuse, naming the path to free. A full
    queue (EAGAIN) is treated the same way, as nobody can be asked.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"cannot listen on unix:{path}: a file that is not a socket is there")
    deadline = time.monotonic() + LEFTOVER_WAIT
    warned = False
    while True:
        listening, creator = _probe_unix(path)
        if not listening:
            log.info("removing stale socket %s (nobody listens on it)", path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        if creator is not None and _process_alive(creator):
            raise ConfigError(
                f"cannot listen on unix:{path}: another server is listening there (pid {creator})"
            )
        who = f"pid {creator}" if creator is not None else "a server that accepts nothing"
        if not warned:
            warned = True
            log.warning(
                "unix:%s: the server that created it (%s) is gone, but processes it left still "
                "hold the socket; waiting up to %g s for them to finish",
                path,
                who,
                LEFTOVER_WAIT,
            )
        if time.monotonic() >= deadline:
            raise ConfigError(
                f"cannot listen on unix:{path}: processes left by {who} still hold the socket "
                f"after {LEFTOVER_WAIT:g} s; stop them (fuser -k {path}) or choose another path"
            )
        time.sleep(LEFTOVER_PROBE_INTERVAL)


def _probe_unix(path: str) -> tuple[bool, int | None]:
    """(someone holds a listening socket at path, pid that called listen() if known)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Non-blocking: a full queue must not hang the start (EAGAIN instead).
    probe.setblocking(False)
    try:
        probe.connect(path)
    except BlockingIOError:
        return True, None
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False, None
        raise ConfigError(f"cannot listen on unix:{path}: {exc.strerror}") from None
    else:
        # For a unix stream socket, the peer credentials are the listener's
        # as of its listen() call. A pid of 0: from another pid namespace.
        creds = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        pid = int(_UCRED.unpack(creds)[0])
        return True, pid if pid > 0 else None
    finally:
        probe.close()


#: struct ucred of SO_PEERCRED: pid, uid, gid.
_UCRED = struct.Struct("3i")


def _process_alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie waiting to be reaped does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return state not in (b"Z", b"X")


def _uid(name: str) -> int:
    try:
        return int(name) if name.isdigit() else pwd.getpwnam(name).pw_uid
    except KeyError:
        raise ConfigError(f"unknown user {name!r}") from None


def _gid(name: str) -> int:
    try:
        return int(name) if name.isdigit() else grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(f"unknown group {name!r}") from None


def adopt_listener(fd: int) -> socket.socket:
    """Wrap an inherited listening socket, checking that it is one."""
    try:
        st = os.fstat(fd)
    except OSError as exc:
        raise ConfigError(f"fd://{fd}: {exc.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"fd://{fd} is not a socket")
    sock = socket.socket(fileno=fd)
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise ConfigError(f"fd://{fd} is a socket but not a listening one")
    return sock


def inherited_fd0() -> socket.socket | None:
    """The listening socket on fd 0 that mod_fcgid, lighttpd and spawn-fcgi pass.

    Returns None when fd 0 is not a listening socket (a terminal, a pipe, a
    CGI request body). The socket moves to a new fd and fd 0 becomes /dev/null,
    so nothing in the app mistakes it for standard input.
    """
    try:
        st = os.fstat(0)
    except OSError:
        return None
    if not stat.S_ISSOCK(st.st_mode):
        return None
    probe = socket.socket(fileno=os.dup(0))
    try:
        listening = probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        listening = 0
    if not listening:
        probe.close()
        return None
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    return probe


def defer_accept(sock: socket.socket, seconds: float) -> None:
    """Have the kernel hold new TCP connections on ``sock`` until they send data.

    With TCP_DEFER_ACCEPT (Linux) a connection that connects and stays silent
    is not handed to accept() for about ``seconds``, so it never occupies a
    worker; one that sends its request at once is accepted with the request
    already readable. A no-op for unix sockets and where the option is missing.
    """
    option = getattr(socket, "TCP_DEFER_ACCEPT", None)
    if option is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, option, max(1, math.ceil(seconds)))


def socket_path(sock: socket.socket) -> str | None:
    """The filesystem path of a bound unix socket, if any."""
    if sock.family != socket.AF_UNIX:
        return None
    name = sock.getsockname()
    if isinstance(name, str) and name and not name.startswith("\0"):
        return name
    return None


def parse_allowed_clients(text: str | Iterable[str]) -> tuple[str, ...]:
    """FCGI_WEB_SERVER_ADDRS / listen_allowed_clients: comma-separated addresses or networks."""
    items = text.split(",") if isinstance(text, str) else list(text)
    result = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ConfigError(f"allowed client {item!r} is not an IP address or network") from None
        result.append(item)
    return tuple(result)


def format_address(host: str, port: int) -> str:
    """``HOST:PORT``, an IPv6 host in brackets: how bind specs and log lines write it."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Named(Protocol):
    """A socket of any flavour (stdlib, trio, asyncio's transport socket)."""

    def getsockname(self) -> Any: ...


def describe_peer(peer: object, sock: _Named) -> str:
    """Who is on the other end of an accepted connection, for log lines.

    A TCP peer is ``HOST:PORT``. A unix-socket peer has no address of its
    own, so the path it came in by is named instead. Every driver formats
    peers here, so a log line names a peer the same way whichever wrote it.
    """
    if isinstance(peer, tuple) and len(peer) >= 2:
        return format_address(str(peer[0]), peer[1])
    try:
        name = sock.getsockname()
    except OSError:
        name = ""
    return f"unix:{name}" if name else "unix socket"


def peer_allowed(peer: object, allowed: Sequence[str]) -> bool:
    """Unix-socket peers are always allowed; TCP peers must match ``allowed`` if set."""
    if not allowed or not isinstance(peer, tuple):
        return True
    try:
        addr = ipaddress.ip_address(peer[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in ipaddress.ip_network(net, strict=False) for net in allowed)
