"""fcgi: a FastCGI responder and process manager for Python web apps.

The protocol core (:mod:`fcgi.records`, :mod:`fcgi.connection`) does no I/O;
the drivers around it serve WSGI and ASGI apps behind nginx, lighttpd and Apache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "serve"]

if TYPE_CHECKING:
    from fcgi.server import serve


def __getattr__(name: str) -> Any:
    """``fcgi.serve``, imported on first use (PEP 562).

    Importing the protocol core (``import fcgi.records``) runs this package's
    ``__init__`` first; a plain import of the server there would load every
    driver, adapter and the pool with it. The core stays light this way.
    """
    if name == "serve":
        from fcgi.server import serve

        return serve
    raise AttributeError(f"module 'fcgi' has no attribute {name!r}")
