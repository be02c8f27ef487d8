"""Listening sockets of a server process: opened, inherited, and their files removed.

The single-process server (:mod:`fcgi.server`) and the pool's master
(:mod:`fcgi.pool.master`) both get their sockets here, so a socket is bound,
adopted and cleaned up the same way whichever runs:

* **Opened** from a bind spec (:mod:`fcgi.sockets` parses it): a unix socket
  is created with exactly ``listen_mode`` (bound under a umask, never wider
  for a moment) and ``listen_owner`` / ``listen_group``; a stale socket file
  is replaced, a live server's is refused. A TCP socket gets SO_REUSEADDR
  (and IPV6_V6ONLY for IPv6).
* **Inherited**: ``fd://N`` from a parent, the socket on fd 0 that
  mod_fcgid, lighttpd and spawn-fcgi pass, systemd's ``LISTEN_FDS``
  (:func:`fcgi.systemd.listen_fds`), and a previous image's after a reload
  that re-executed the process (:mod:`fcgi.pool.reexec` carries them).
* **Removed**: whoever creates a unix socket file removes it. The files this
  process bound are :attr:`Listeners.owned_paths`, removed at a graceful stop
  (no new connection can join the queue by path while the queued ones are
  served, and a successor may bind the path at once) and at exit. An
  inherited socket's file belongs to whoever made it and is never removed;
  a re-executed image inherits the owned paths with the sockets, so the last
  image removes them.

Each socket also has the wire protocol its spec named (``uwsgi:``, ``scgi:``,
FastCGI by default): :attr:`Listeners.protocols`, by descriptor, which the
server puts into :attr:`fcgi.options.ServerOptions.protocols` for the drivers.
An inherited socket takes the protocol of the spec that claims it; one that no
spec names (systemd's or fd 0 for the single process) speaks FastCGI.

Drivers never import this module: they get sockets already listening, and
what they need of addresses (peers, allowed clients) is in :mod:`fcgi.sockets`.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import logging
import os
import pwd
import socket
import stat
import struct
import time
from collections.abc import Iterable, Mapping

from fcgi import systemd
from fcgi.errors import ConfigError
from fcgi.records import LISTENSOCK_FILENO
from fcgi.sockets import (
    FASTCGI,
    BindSpec,
    format_address,
    parse_bind,
    socket_path,
    split_protocol,
)

#: The lines about stale and held socket files keep the logger they were
#: always written under (fcgi.sockets), for whoever filters on it.
log = logging.getLogger("fcgi.sockets")

#: How long a new server waits for processes left by a dead one to let go of
#: the socket at its path (the workers of a master killed with SIGKILL finish
#: their requests first). Past it, the start fails saying what holds the path.
LEFTOVER_WAIT = 10.0
#: Seconds between two connection probes while waiting.
LEFTOVER_PROBE_INTERVAL = 0.2


class Listeners:
    """The listening sockets of one process, and the socket files that are its to remove.

    ``sockets`` is every socket in the order it was opened or claimed;
    ``owned_paths`` the unix socket files this process (or the image it
    re-executed from) created. A master first fills ``unclaimed`` with what
    it inherited (:meth:`inherit`), then asks for each spec of its pools:
    :meth:`claim` an inherited socket listening there, else :meth:`bind` one.
    """

    def __init__(self, sockets: Iterable[socket.socket] = (), owned_paths: Iterable[str] = ()):
        self.sockets: list[socket.socket] = list(sockets)
        self.owned_paths: list[str] = list(owned_paths)
        #: Bind spec -> socket, for each one opened or claimed by its spec:
        #: what a master hands to the image it re-executes.
        self.by_spec: dict[str, socket.socket] = {}
        #: Inherited sockets no spec has claimed yet, by the address they
        #: listen on (written as :func:`str` of a parsed spec writes it).
        self.unclaimed: dict[str, socket.socket] = {}
        #: The protocol each socket a previous image handed over spoke there,
        #: by address: a reload that changes it is not graceful (see claim).
        self.spoke: dict[str, str] = {}
        #: Descriptor -> wire protocol of each socket that does not speak
        #: FastCGI ("uwsgi", "scgi"): what the drivers serve it with.
        self.protocols: dict[int, str] = {}

    @classmethod
    def inherit(
        cls, handed_over: Mapping[str, socket.socket], owned_paths: Iterable[str]
    ) -> Listeners:
        """A master's start: systemd's sockets and a previous image's, waiting for a claim.

        ``handed_over`` (bind spec -> socket) and ``owned_paths`` come from the
        image this one re-executed from, if any; a socket of both systemd and
        the previous image under the same address is the previous image's.
        """
        listeners = cls(owned_paths=owned_paths)
        for sock in systemd.listen_fds():
            listeners.unclaimed[address_of(sock)] = sock
        for spec, sock in handed_over.items():
            parsed = parse_bind(spec)
            listeners.unclaimed[str(parsed)] = sock
            listeners.spoke[str(parsed)] = parsed.protocol
        return listeners

    @classmethod
    def handed_over(
        cls, named: Mapping[str, socket.socket], owned_paths: Iterable[str]
    ) -> Listeners:
        """A re-executed single process's sockets, each under the name :meth:`names` gave it."""
        listeners = cls(owned_paths=owned_paths)
        for name, sock in named.items():
            listeners._add(sock, split_protocol(name)[0])
        return listeners

    def names(self) -> dict[str, socket.socket]:
        """Each socket under a name of its own that keeps its protocol (see :meth:`handed_over`)."""
        named = {}
        for i, sock in enumerate(self.sockets):
            protocol = self.protocols.get(sock.fileno(), FASTCGI)
            prefix = "" if protocol == FASTCGI else f"{protocol}:"
            named[f"{prefix}{address_of(sock)}#{i}"] = sock
        return named

    def _add(self, sock: socket.socket, protocol: str) -> None:
        self.sockets.append(sock)
        if protocol != FASTCGI:
            self.protocols[sock.fileno()] = protocol

    def protocols_of(self, sockets: Iterable[socket.socket]) -> dict[int, str]:
        """The entries of :attr:`protocols` for ``sockets`` (one pool's)."""
        fds = {sock.fileno() for sock in sockets}
        return {fd: name for fd, name in self.protocols.items() if fd in fds}

    def claim(self, spec: str) -> socket.socket | None:
        """The inherited socket listening where ``spec`` says, if there is one.

        It speaks the protocol ``spec`` names, whatever it was inherited for.
        """
        parsed = parse_bind(spec)
        sock = self.unclaimed.pop(str(parsed), None)
        if sock is not None:
            before = self.spoke.get(str(parsed), parsed.protocol)
            if before != parsed.protocol:
                log.warning(
                    "%s speaks %s now and spoke %s before this reload: until they are "
                    "replaced, the old workers answer its connections in %s (restart, "
                    "not reload, to change a listener's protocol)",
                    parsed,
                    parsed.protocol,
                    before,
                    before,
                )
            self._add(sock, parsed.protocol)
            self.by_spec[spec] = sock
        return sock

    def bind(
        self,
        spec: str,
        *,
        mode: int = 0o660,
        backlog: int = 511,
        owner: str | None = None,
        group: str | None = None,
    ) -> socket.socket:
        """Open a socket for ``spec``; a unix socket's file is then ours to remove."""
        parsed = parse_bind(spec)
        sock = open_listener(parsed, mode=mode, backlog=backlog, owner=owner, group=group)
        self._add(sock, parsed.protocol)
        self.by_spec[spec] = sock
        if parsed.kind == "unix":
            path = socket_path(sock)
            if path:
                self.owned_paths.append(path)
        return sock

    def close_unclaimed(self) -> list[str]:
        """Close the inherited sockets no spec claimed; their addresses, to warn about."""
        addresses = list(self.unclaimed)
        for sock in self.unclaimed.values():
            sock.close()
        self.unclaimed.clear()
        return addresses

    def remove_files(self) -> None:
        """Remove the socket files this process created, now, and forget them.

        At a graceful stop: no new connection joins the queue by path, so it
        runs dry while the workers serve it, and a successor may bind the path
        at once. Forgotten once removed, so that the exit cannot remove a
        successor's file.
        """
        for path in self.owned_paths:
            with contextlib.suppress(OSError):
                os.unlink(path)
        self.owned_paths.clear()

    def close(self) -> None:
        """At exit (or a start that failed half way): close every socket, remove our files."""
        for sock in self.sockets:
            sock.close()
        self.close_unclaimed()
        self.remove_files()


def open_single(bind: Iterable[str], *, mode: int = 0o660, backlog: int = 511) -> Listeners:
    """The single-process server's sockets: every address of ``bind``, else what it was given.

    Without an address: systemd's sockets if it passed any, else the
    listening socket on fd 0, else none at all (the caller then answers one
    request as CGI, or refuses). Those speak FastCGI: nothing names another
    protocol for them (mod_fcgid's fd 0 is FastCGI by definition).
    """
    specs = list(bind)
    if not specs:
        activated = systemd.listen_fds()
        if activated:
            return Listeners(activated)
        inherited = inherited_fd0()
        return Listeners([inherited] if inherited is not None else [])
    listeners = Listeners()
    try:
        for spec in specs:
            listeners.bind(spec, mode=mode, backlog=backlog)
    except BaseException:
        listeners.close()
        raise
    return listeners


def address_of(sock: socket.socket) -> str:
    """Where ``sock`` listens, written as a bind spec is (``unix:/path``, ``HOST:PORT``).

    A socket with no such address (an abstract or unnamed unix socket) is
    named by its descriptor: no bind spec can match it.
    """
    path = socket_path(sock)
    if path:
        return f"unix:{path}"
    name = sock.getsockname()
    if isinstance(name, tuple):
        return format_address(name[0], name[1])
    return f"fd {sock.fileno()}"


# -- opening -----------------------------------------------------------------------


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


# -- inheriting ----------------------------------------------------------------------


def adopt_listener(fd: int) -> socket.socket:
    """Wrap an inherited listening socket (``fd://N``), checking that it is one."""
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

    FastCGI's ``FCGI_LISTENSOCK_FILENO``. Returns None when fd 0 is not a
    listening socket (a terminal, a pipe, a CGI request body). The socket
    moves to a new fd and fd 0 becomes /dev/null, so nothing in the app
    mistakes it for standard input.
    """
    try:
        st = os.fstat(LISTENSOCK_FILENO)
    except OSError:
        return None
    if not stat.S_ISSOCK(st.st_mode):
        return None
    probe = socket.socket(fileno=os.dup(LISTENSOCK_FILENO))
    try:
        listening = probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        listening = 0
    if not listening:
        probe.close()
        return None
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, LISTENSOCK_FILENO)
    os.close(devnull)
    return probe
