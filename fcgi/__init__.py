"""fcgi: a FastCGI responder and process manager for Python web apps.

The protocol core (:mod:`fcgi.records`, :mod:`fcgi.connection`) does no I/O;
the drivers around it serve WSGI and ASGI apps behind nginx, lighttpd and Apache.
"""

from __future__ import annotations

__version__ = "0.1.0"

from fcgi.server import serve

__all__ = ["__version__", "serve"]
