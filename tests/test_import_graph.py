"""The import graph is a strict stack: core → adapters → drivers → pool → server → cli.

Each layer is imported alone in a fresh interpreter, and no module of a layer
above it may have been loaded: the protocol core can be used (by a client, a
test, another driver) without dragging in sockets, drivers or the pool, and
the pool stays out of a driver's way. A new import that breaks the stack fails
here, not in a review.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from rawfcgi import ROOT

#: The layers, bottom first; a module may import only from its own layer and below.
CORE = {
    "fcgi",
    # The mypyc-compiled code of these same modules (setup.py), when built.
    "fcgi._native__mypyc",
    "fcgi.records",
    "fcgi.connection",
    "fcgi.client_connection",
    "fcgi.one_request",
    "fcgi.uwsgi",
    "fcgi.scgi",
    "fcgi.events",
    "fcgi.errors",
    "fcgi._speedups",
}
ADAPTERS = {"fcgi.wsgi", "fcgi.asgi", "fcgi.spool", "fcgi.escape"}
DRIVERS = {
    "fcgi.sync_worker",
    "fcgi.trio_worker",
    "fcgi.asyncio_worker",
    "fcgi.sockets",
    "fcgi.listeners",
}
POOL_PREFIX = "fcgi.pool"
TOP = {"fcgi.server", "fcgi.cli", "fcgi.client", "fcgi.one_request_client"}


def loaded_after(*modules: str) -> set[str]:
    """The fcgi modules a fresh interpreter holds after importing ``modules``."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {list(modules)!r}:\n"
        "    importlib.import_module(name)\n"
        "names = [m for m in sys.modules if m == 'fcgi' or m.startswith('fcgi.')]\n"
        "print(json.dumps(sorted(names)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return set(json.loads(out.stdout))


def test_the_protocol_core_loads_nothing_else() -> None:
    assert loaded_after("fcgi.records", "fcgi.connection") <= CORE


def test_the_uwsgi_and_scgi_cores_stand_beside_the_fastcgi_one() -> None:
    assert loaded_after("fcgi.uwsgi", "fcgi.scgi") <= CORE


def test_the_client_side_of_the_core_needs_only_the_record_layer() -> None:
    """ClientConnection stands beside ServerConnection on records, not on it."""
    allowed = {"fcgi", "fcgi.records", "fcgi.errors", "fcgi._speedups", "fcgi.client_connection"}
    allowed.add("fcgi._native__mypyc")  # compiled fcgi.records (setup.py)
    assert loaded_after("fcgi.client_connection") <= allowed


def test_importing_the_package_loads_no_server() -> None:
    """``fcgi.serve`` is there on first use; ``import fcgi`` alone stays light."""
    assert loaded_after("fcgi") <= CORE


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_an_adapter_loads_no_driver_socket_or_pool(adapter: str) -> None:
    loaded = loaded_after(adapter)
    assert not loaded & (DRIVERS | TOP), loaded
    assert not any(m.startswith(POOL_PREFIX) for m in loaded), loaded


@pytest.mark.parametrize("driver", ["fcgi.sync_worker", "fcgi.trio_worker", "fcgi.asyncio_worker"])
def test_a_driver_loads_no_other_driver_and_no_pool(driver: str) -> None:
    loaded = loaded_after(driver)
    others = DRIVERS - {driver, "fcgi.sockets"}
    assert not loaded & (others | TOP), loaded
    assert not any(m.startswith(POOL_PREFIX) for m in loaded), loaded


def test_the_pool_loads_neither_server_nor_cli() -> None:
    loaded = loaded_after("fcgi.pool.master")
    assert not loaded & {"fcgi.server", "fcgi.cli"}, loaded
