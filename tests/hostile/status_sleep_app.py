"""A WSGI app whose requests outlast any request_terminate_timeout.

``/sleep-forever`` hangs before its response starts, ``/start-then-sleep``
after its header and a first piece of body.

Served by ``fcgi serve --chdir tests/hostile status_sleep_app:app`` in
test_status_exposure.py; every other path answers at once.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

#: Longer than any test waits: the worker is killed long before.
FOREVER = 600.0


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path == "/sleep-forever":
        time.sleep(FOREVER)
    start_response("200 OK", [("Content-Type", "text/plain")])
    if path == "/start-then-sleep":
        return _start_then_sleep()
    return [b"ok\n"]


def _start_then_sleep() -> Iterator[bytes]:
    """The header and a first piece go out, then the request hangs."""
    yield b"first piece\n"
    time.sleep(FOREVER)
    yield b"never sent\n"
