"""fcgi: a FastCGI responder and process manager for Python web apps.

The protocol core (:mod:`fcgi.records`, :mod:`fcgi.connection`) does no I/O;
the drivers around it serve WSGI and ASGI apps behind nginx, lighttpd and Apache.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from importlib.machinery import ModuleSpec

__version__ = "0.1.0"


class _SourceFirst:
    """Imports fcgi's modules from their source even where compiled twins sit beside them.

    setup.py compiles the request loop's modules with mypyc into extension
    modules next to the ``.py`` files they were made from, and Python's import
    prefers an extension. ``FCGI_PURE_PYTHON=1`` puts this finder first on
    ``sys.meta_path`` so that the reference runs instead: each ``fcgi.*``
    module found as an extension is loaded from its ``.py`` file when there
    is one. ``fcgi._speedups`` has no ``.py`` file and is still found;
    fcgi.records reads the same variable to leave it unused.
    """

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if path is None or not fullname.startswith("fcgi."):
            return None
        from importlib.machinery import ExtensionFileLoader, PathFinder
        from importlib.util import spec_from_file_location

        spec = PathFinder.find_spec(fullname, path)
        if spec is None or not isinstance(spec.loader, ExtensionFileLoader):
            return None
        assert spec.origin is not None  # an extension module is always a file
        source = os.path.join(os.path.dirname(spec.origin), fullname.rpartition(".")[2] + ".py")
        if not os.path.exists(source):
            return None
        return spec_from_file_location(fullname, source)


#: True when the compiled modules are bypassed (``FCGI_PURE_PYTHON=1``).
PURE_PYTHON = os.environ.get("FCGI_PURE_PYTHON") == "1"
if PURE_PYTHON and not any(isinstance(f, _SourceFirst) for f in sys.meta_path):
    sys.meta_path.insert(0, _SourceFirst())

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
