"""systemd integration without libsystemd: sd_notify and socket activation.

* ``notify("READY=1")`` sends one datagram to ``$NOTIFY_SOCKET`` (a path, or an
  abstract name written ``@name``); without the variable it does nothing.
* ``listen_fds()`` takes the sockets systemd passed (``LISTEN_FDS`` file
  descriptors from 3 on, valid when ``LISTEN_PID`` is this process) and clears
  the variables so workers and re-executed masters do not see them twice.
"""

from __future__ import annotations

import os
import socket

SD_LISTEN_FDS_START = 3


def notify(message: str) -> bool:
    """Send ``message`` (``READY=1``, ``STATUS=...``, ``RELOADING=1``, ``STOPPING=1``)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), address)
    except OSError:
        return False
    return True


def listen_fds(unset_environment: bool = True) -> list[socket.socket]:
    """The listening sockets passed by socket activation, in order (may be empty)."""
    try:
        pid = int(os.environ.get("LISTEN_PID", ""))
        count = int(os.environ.get("LISTEN_FDS", ""))
    except ValueError:
        return []
    finally:
        if unset_environment:
            for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
                os.environ.pop(name, None)
    if pid != os.getpid() or count <= 0:
        return []
    socks = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        os.set_inheritable(fd, False)
        socks.append(socket.socket(fileno=fd))
    return socks


def socket_address(sock: socket.socket) -> str:
    """A bind spec naming where ``sock`` listens, to match it with a ``listen`` entry."""
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        path = name.decode() if isinstance(name, bytes) else name
        return f"unix:{path}"
    if sock.family == socket.AF_INET6:
        return f"[{name[0]}]:{name[1]}"
    return f"{name[0]}:{name[1]}"
