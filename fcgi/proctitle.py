"""Process titles, so that ``ps`` tells the master from its workers.

PHP-FPM shows ``php-fpm: master process`` and ``php-fpm: pool www``; here the
master shows ``fcgi master [pools www,api]`` and each worker ``fcgi worker www
idle`` or ``fcgi worker www busy GET /path``. The title is set with the
``setproctitle`` library (it rewrites the memory ``/proc/PID/cmdline`` reads
and, on Linux, the 15-character thread name too). It is imported lazily, on
the first title: a process that never sets one never loads it, and without
the library titles are simply not set (the server works the same).

A worker sets its title only when its state changes, at the start and at the
end of a request. Each change is one C call that copies the title into the
argv area (no system call for the command line), a fraction of a microsecond.
"""

from __future__ import annotations

from collections.abc import Callable

from fcgi.escape import escape

#: Most characters of a request URI put in a title: ``ps`` lines stay readable,
#: and the copy stays cheap whatever the client sent (URIs can be kilobytes).
URI_TITLE_LEN = 64
#: Most characters of a request method put in a title (a method is a token
#: the client chooses: it could be as long as it likes).
METHOD_TITLE_LEN = 16

_setter: Callable[[str], None] | None = None
#: False once the import failed: not tried again on every request.
_available = True


def set_title(title: str) -> None:
    """Make ``title`` this process's title; do nothing without ``setproctitle``."""
    global _setter, _available
    setter = _setter
    if setter is None:
        if not _available:
            return
        try:
            # Here, not at the top: an optional dependency, looked for only
            # when a title is first set (a process that never sets one never
            # loads it).
            from setproctitle import setproctitle
        except ImportError:
            _available = False
            return
        _setter = setter = setproctitle
    setter(title)


def master_title(pools: list[str], config_path: str | None = None) -> str:
    """``fcgi master [pools www,api]``, then the configuration file if there is one."""
    title = f"fcgi master [pools {escape(','.join(pools))}]"
    if config_path:
        title += f" {escape(config_path)}"
    return title


def worker_starting_title(pool: str) -> str:
    """What a worker of ``pool`` shows from the fork until it serves."""
    return f"fcgi worker {escape(pool)} starting"


def worker_idle_title(pool: str) -> str:
    """What an idle worker of ``pool`` shows (made once per worker, then reused)."""
    return f"fcgi worker {escape(pool)} idle"


def worker_busy_prefix(pool: str) -> str:
    """The start of every busy title of ``pool``'s workers (made once per worker)."""
    return f"fcgi worker {escape(pool)} busy "


def worker_busy_title(prefix: str, method: str, uri: str) -> str:
    """``PREFIX METHOD URI`` (``fcgi worker www busy GET /path``): peer text, cut short and escaped.

    Cut before escaping, so the escape of a control character is never cut
    in half; the escapes make a CR, an LF or a terminal control sequence in
    the method or the URI show as ``\\xHH`` in ``ps`` and ``top``, never as
    themselves. One :func:`escape` for both: this runs for every request.
    """
    if len(uri) > URI_TITLE_LEN:
        uri = uri[:URI_TITLE_LEN] + "..."
    return prefix + escape(f"{method[:METHOD_TITLE_LEN]} {uri}")
