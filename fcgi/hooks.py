"""How a worker tells its supervisor what it is doing.

The sync and trio drivers call these at the few points a process manager cares
about; the single-process server passes :class:`NoHooks`. Keeping this a narrow
protocol is what lets the master know processes and not FastCGI.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol


class Answer(Protocol):
    """A response produced without calling the app (status page, ping)."""

    status: str
    headers: list[tuple[str, str]]
    body: bytes


def render_answer(answer: Answer, method: str = "GET") -> bytes:
    """The CGI response for an :class:`Answer` (no body for HEAD)."""
    head = f"Status: {answer.status}\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in answer.headers
    )
    body = b"" if method == "HEAD" else answer.body
    return head.encode("latin-1") + b"\r\n" + body


class WorkerHooks(Protocol):
    def connection_accepted(self) -> None:
        """A transport connection was accepted (counts PHP-FPM's "accepted conn")."""

    def request_started(self, params: Mapping[str, str]) -> object:
        """PARAMS are complete and the app is about to run.

        Returns a token for :meth:`request_finished`: a concurrent worker has
        several requests running, and their starts and ends interleave.
        """

    def request_finished(self, token: object, status: int, head: bytes | None = None) -> None:
        """The response is fully written; ``status`` is the HTTP status (0 if none).

        ``head`` is the response's CGI header block as sent to the web server
        (``b"Status: 200 OK\\r\\nContent-Type: text/plain\\r\\n\\r\\n"``), for
        the access log's ``%{NAME}o``; None when no header was sent (the web
        server went away first). What follows its empty line, if anything, is
        not part of it: a whole small response made in one piece (an
        :class:`Answer` as :func:`render_answer` made it, fcgi's own 500) is
        passed as it is rather than have its head copied out. A driver
        passes what it already holds, so hooks that never read it cost
        nothing.
        """

    def intercept(self, params: Mapping[str, str]) -> Answer | None:
        """Answer this request here instead of calling the app, or return None."""

    def should_stop(self) -> bool:
        """Checked between requests: True ends the worker after the current one."""

    def waiting(self) -> None:
        """The worker has nothing to do and is about to block until it has.

        Optional for a driver: what a supervisor shows of an idle worker (its
        process title) can wait until here, instead of changing at the end of
        every request of a worker that goes straight on to the next one.
        """


class NoHooks:
    """Hooks of a server that has no master."""

    def connection_accepted(self) -> None:
        pass

    def request_started(self, params: Mapping[str, str]) -> object:
        return None

    def request_finished(self, token: object, status: int, head: bytes | None = None) -> None:
        pass

    def intercept(self, params: Mapping[str, str]) -> Answer | None:
        return None

    def should_stop(self) -> bool:
        return False

    def waiting(self) -> None:
        pass
