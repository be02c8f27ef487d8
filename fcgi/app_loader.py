"""Find the app a user named on the command line: ``module:app`` or ``module:factory()``."""

from __future__ import annotations

import importlib
import sys
import traceback
from typing import Any

from fcgi.errors import FastCGIError


class AppImportError(FastCGIError):
    """The app spec could not be turned into a callable; the message says why.

    ``usage`` is True when the spec itself is malformed (a command-line
    mistake, exit status 2) rather than naming code that does not import or
    does not exist (exit status 3).
    """

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


#: What a bare ``MODULE`` serves, first found first: ``application`` is what
#: Django's generated wsgi.py/asgi.py and gunicorn look for, ``app`` the
#: usual name elsewhere (Flask, Starlette, FastAPI).
DEFAULT_NAMES = ("application", "app")


def load_app(spec: str) -> Any:
    """Import ``module:attr`` (dotted attrs allowed) and call it if it ends in ``()``.

    A bare ``module`` serves its ``application``, else its ``app``.

    The current directory is put on sys.path first, as ``python -m`` would, so
    ``fcgi serve app:app`` works from the project folder.
    """
    module_name, sep, attr = spec.partition(":")
    if not module_name or (sep and not attr):
        raise AppImportError(
            f"app {spec!r}: expected MODULE, MODULE:NAME or MODULE:FACTORY()", usage=True
        )
    call = attr.endswith("()")
    if call:
        attr = attr[:-2]
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise AppImportError(f"app {spec!r}: no module named {exc.name!r}") from None
        raise AppImportError(
            f"app {spec!r}: importing {module_name} failed:\n{traceback.format_exc()}"
        ) from None
    except Exception:
        raise AppImportError(
            f"app {spec!r}: importing {module_name} failed:\n{traceback.format_exc()}"
        ) from None
    if not sep:
        # A bare module: Django's and gunicorn's convention first.
        for name in DEFAULT_NAMES:
            if hasattr(module, name):
                attr = name
                break
        else:
            names = " nor ".join(repr(n) for n in DEFAULT_NAMES)
            raise AppImportError(
                f"app {spec!r}: {module_name} has neither {names}; name it as MODULE:NAME"
            )
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppImportError(f"app {spec!r}: {module_name} has no attribute {attr!r}") from None
    if call:
        try:
            obj = obj()
        except Exception:
            raise AppImportError(
                f"app {spec!r}: calling the factory failed:\n{traceback.format_exc()}"
            ) from None
    if not callable(obj):
        raise AppImportError(f"app {spec!r}: {type(obj).__name__} object is not callable")
    return obj
