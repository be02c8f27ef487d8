"""systemd integration without libsystemd: sd_notify, the watchdog and socket activation.

* ``notify("READY=1")`` sends one datagram to ``$NOTIFY_SOCKET`` (a path, or an
  abstract name written ``@name``); without the variable it does nothing.
* ``watchdog_interval()`` is ``sd_watchdog_enabled()``: the unit's
  ``WatchdogSec=`` in seconds when ``$WATCHDOG_USEC`` is set and meant for
  this process, else None. The master then sends ``WATCHDOG=1`` from its loop.
* ``reloading()`` is the ``RELOADING=1`` message with the ``MONOTONIC_USEC=``
  stamp systemd uses to match a reload with the ``READY=1`` that ends it.
* ``listen_fds()`` takes the sockets systemd passed (``LISTEN_FDS`` file
  descriptors from 3 on, valid when ``LISTEN_PID`` is this process) and clears
  the variables so workers and re-executed masters do not see them twice.
"""

from __future__ import annotations

import os
import socket
import time

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


def watchdog_interval() -> float | None:
    """Seconds within which systemd wants ``WATCHDOG=1``, or None if it wants none.

    As ``sd_watchdog_enabled()``: ``$WATCHDOG_USEC`` is the interval;
    ``$WATCHDOG_PID``, when set, names the one process it is for (a worker
    inherits the variables but is not that process). The variables are left
    in place: a master that re-executes itself keeps its pid and its watchdog.
    """
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = os.environ.get("WATCHDOG_PID", "")
    if owner:
        try:
            if int(owner) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 1_000_000


def reloading() -> str:
    """The ``RELOADING=1`` message, stamped with ``CLOCK_MONOTONIC`` as systemd asks."""
    return f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}"


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
