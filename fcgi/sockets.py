"""Addresses: bind specs, peers, and which peers are allowed.

Address forms: ``unix:/path`` (or any path starting with ``/`` or ``.``),
``HOST:PORT``, ``[V6]:PORT``, a bare ``PORT`` (loopback only: FastCGI has no
authentication, so listening on every interface must be asked for with
``0.0.0.0:PORT``), and ``fd://N`` for a socket handed over by a parent.

Any of them may start with the wire protocol the listener speaks:
``uwsgi:unix:/run/app.sock``, ``scgi:127.0.0.1:4000``, ``fastcgi:...`` (the
default, so the prefix is only ever needed for the other two). The protocol
is a property of the listener, not of the address: two specs for one address
are the same socket (a systemd socket or a re-executed master's is matched by
address alone), and :attr:`BindSpec.protocol` says what its connections speak.

What drivers need of a socket they were given lives here (naming and
admitting peers, TCP_DEFER_ACCEPT); opening, inheriting and removing
listening sockets is :mod:`fcgi.listeners`, which only the servers use.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from fcgi.errors import ConfigError

#: The wire protocols a listener can speak, as a bind spec's prefix names them.
#: FastCGI is the default: a spec without a prefix speaks it.
FASTCGI = "fastcgi"
UWSGI = "uwsgi"
SCGI = "scgi"
PROTOCOLS = (FASTCGI, UWSGI, SCGI)

#: A word followed by ':' at the start of a spec: a protocol prefix if the
#: rest is an address of its own (see :func:`split_protocol`).
_PREFIX = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):(.*)", re.DOTALL)


@dataclass(frozen=True, slots=True)
class BindSpec:
    kind: str  # "unix", "tcp" or "fd"
    path: str = ""
    host: str = ""
    port: int = 0
    fd: int = -1
    #: What the listener's connections speak: one of :data:`PROTOCOLS`.
    protocol: str = FASTCGI

    def __str__(self) -> str:
        """The address alone, as :func:`fcgi.listeners.address_of` writes a socket's.

        Without the protocol: it is how an inherited socket is matched to a
        spec, and a socket does not know what protocol it was meant for.
        """
        if self.kind == "unix":
            return f"unix:{self.path}"
        if self.kind == "fd":
            return f"fd://{self.fd}"
        return format_address(self.host, self.port)


def split_protocol(spec: str) -> tuple[str, str]:
    """(protocol, address) of a bind spec; FastCGI when it names none.

    ``uwsgi:unix:/x`` is uwsgi at ``unix:/x``. A word other than a protocol
    before the first ':' is one only when an address of its own follows it
    (another ':', or a path): ``http://host:80`` or ``tcp:1.2.3.4:9000`` are
    unknown protocols, refused by name, while ``localhost:9000`` and
    ``unix:/x`` stay addresses. Raises ConfigError for an unknown protocol.
    """
    text = spec.strip()
    match = _PREFIX.fullmatch(text)
    if match is None:
        return FASTCGI, text
    word, rest = match.groups()
    name = word.lower()
    if name in PROTOCOLS:
        return name, rest.strip()
    if name in ("unix", "fd") or not (":" in rest or rest.startswith(("/", "."))):
        return FASTCGI, text
    raise ConfigError(
        f"bind address {spec!r}: unknown protocol {word!r} "
        f"(expected an address, or one prefixed with {', '.join(p + ':' for p in PROTOCOLS)})"
    )


def parse_bind(spec: str) -> BindSpec:
    """Parse a bind spec (an address, perhaps with its protocol), raising ConfigError."""
    protocol, text = split_protocol(spec)
    if not text:
        raise ConfigError(f"bind address {spec!r}: no address after the protocol")
    parsed = _parse_address(spec, text)
    return parsed if protocol == FASTCGI else replace(parsed, protocol=protocol)


def _parse_address(spec: str, text: str) -> BindSpec:
    """``text`` (``spec`` without its protocol) as an address; errors quote ``spec``."""
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
