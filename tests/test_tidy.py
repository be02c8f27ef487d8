"""What the structure clean-up (issue 13) promises that no other test holds.

* Every error fcgi raises on purpose is a :class:`fcgi.errors.FastCGIError`
  (but the two that must be built-in types, named in errors.py), and the tree
  in errors.py's docstring names each of them: a new error class that forgets
  its base, or the docstring, fails here.
* The pool builds a worker's options without loading ``fcgi.server``: the
  option building lives in :mod:`fcgi.options`, below both.
* The sans-IO connection cores (FastCGI, SCGI, uwsgi) take their output queue
  from one base, :class:`fcgi.connection.OutputQueue`, and stay ``__slots__``
  classes all the way down: a class in the chain without ``__slots__`` would
  give every connection a ``__dict__``, a slot declared twice a wasted field
  that hides the base's.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys

from rawfcgi import ROOT

import fcgi
from fcgi import errors
from fcgi.connection import OutputQueue, ServerConnection
from fcgi.scgi import ScgiConnection
from fcgi.uwsgi import UwsgiConnection

#: Errors that derive from a built-in type instead, each for a reason errors.py gives.
OUTSIDERS = {"fcgi.asgi.ClientDisconnected", "fcgi.sync_worker.SendTimeout"}


def error_classes() -> dict[str, type[BaseException]]:
    """Every public exception class defined in a module of the fcgi package, by full name."""
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(fcgi.__path__, "fcgi."):
        if info.name.endswith("__main__"):
            continue  # running it is what importing it does
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                isinstance(value, type)
                and issubclass(value, BaseException)
                and value.__module__ == info.name
                and not name.startswith("_")
            ):
                found[f"{info.name}.{name}"] = value
    return found


def test_every_error_raised_on_purpose_derives_from_FastCGIError() -> None:
    classes = error_classes()
    assert set(classes) >= OUTSIDERS, "an outsider moved or was renamed: update errors.py"
    strays = sorted(
        name
        for name, cls in classes.items()
        if name not in OUTSIDERS and not issubclass(cls, errors.FastCGIError)
    )
    assert not strays, f"not under FastCGIError (nor named in errors.py as outside): {strays}"
    for name in OUTSIDERS:
        assert not issubclass(classes[name], errors.FastCGIError), name


def test_the_tree_in_errors_py_names_every_error() -> None:
    doc = errors.__doc__ or ""
    missing = sorted(name for name in error_classes() if name.rsplit(".", 1)[1] not in doc)
    assert not missing, f"fcgi/errors.py's docstring does not name {missing}"


def test_a_pool_builds_worker_options_without_the_server() -> None:
    code = (
        "import sys\n"
        "from fcgi.pool.config import PoolConfig\n"
        "options = PoolConfig(read_timeout=7.0).server_options()\n"
        "assert options.read_timeout == 7.0 and options.multiprocess\n"
        "print('fcgi.server' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "False", out.stdout + out.stderr


def test_the_connection_cores_share_one_slotted_output_queue() -> None:
    for cls in (ServerConnection, ScgiConnection, UwsgiConnection):
        assert issubclass(cls, OutputQueue), cls
        assert not hasattr(cls(), "__dict__"), f"a class above {cls.__name__} has no __slots__"
        if not inspect.getfile(cls).endswith(".py"):
            # Compiled by mypyc (setup.py): a native class is a C struct, with
            # no __dict__ by construction and no __slots__ left to read. The
            # declarations are checked on the source, in the FCGI_PURE_PYTHON
            # pass of the suite.
            continue
        declared: set[str] = set()
        for klass in cls.__mro__[:-1]:  # object has no __slots__ to declare
            own = set(vars(klass)["__slots__"])
            assert not own & declared, f"{klass.__name__} declares {own & declared} again"
            declared |= own
