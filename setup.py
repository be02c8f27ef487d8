"""Build configuration that pyproject.toml cannot express: the optional compiled code.

All package metadata lives in pyproject.toml; setuptools reads both.

Two kinds of compiled code, both optional, both with the pure-Python code
as the reference that ``FCGI_PURE_PYTHON=1`` runs instead:

* ``fcgi._speedups`` (fcgi/_speedups.c): hand-written C for the byte-level
  work of the protocol (name-value pairs, a whole request head, a response
  head). Each function has a Python twin that tests hold it to.
* The modules of the sync worker's request loop, compiled from their own
  Python source by mypyc (:data:`COMPILED`). There is no second copy of
  them: the C is generated from the very files that run when they are not
  compiled, so the rules cannot drift apart.

Where no C compiler, Python headers or mypyc exist, the build warns and goes
on, and fcgi runs as plain Python. ``FCGI_NO_EXTENSIONS=1`` in the build's
environment (``FCGI_NO_EXTENSIONS=1 pip install .``) skips all of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

#: The modules mypyc compiles: those a kept-connection request of the sync
#: worker runs through (the profile of bench's hello route), what they import
#: on that path, the ASGI request path the asyncio and trio workers share
#: (``asgi``, ``multiplex``, ``spool``), and the asyncio worker (the default
#: for ASGI apps; the trio worker stays plain Python). A module here must type-check under ``mypy --strict``
#: and keep to what mypyc compiles (no interpreted subclass of its classes
#: unless the class allows it; no monkeypatching of its functions), and
#: declares its module constants ``Final`` (tests/test_compiled.py checks it).
COMPILED = [
    "fcgi/events.py",
    "fcgi/records.py",
    "fcgi/connection.py",
    "fcgi/one_request.py",
    "fcgi/uwsgi.py",
    "fcgi/scgi.py",
    "fcgi/wsgi.py",
    "fcgi/spool.py",
    "fcgi/asgi.py",
    "fcgi/multiplex.py",
    "fcgi/asyncio_worker.py",
    "fcgi/driver.py",
    "fcgi/sync_worker.py",
    "fcgi/forkguard.py",
    "fcgi/pool/worker_hooks.py",
    "fcgi/pool/scoreboard.py",
]

#: The name of the library mypyc puts the compiled code of all of them in
#: (``fcgi/_native__mypyc...so``); each module gets a small shim of its own.
NATIVE_GROUP = "fcgi._native"

#: The names of the extensions mypyc made: its library and a shim per module.
NATIVE_MODULES: set[str] = set()

#: What the compiled code was made from: tests/test_compiled.py compares it
#: with the source, so that an edit left unbuilt fails there instead of the
#: old compiled code running unnoticed.
SOURCES_RECORD = "fcgi/_native__mypyc.sources"

HERE = os.path.dirname(os.path.abspath(__file__))


def remove_native_in_place() -> None:
    """Delete the compiled modules (and their record) that sit beside the source.

    Called when this build leaves them out (FCGI_NO_EXTENSIONS=1, no mypyc, a
    failed compile): one left from an earlier in-place build would still be
    imported in place of the ``.py`` file.
    """
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    names = [path.removesuffix(".py") for path in COMPILED] + ["fcgi/_native__mypyc"]
    for path in [*(name + suffix for name in names), SOURCES_RECORD]:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(HERE, path))


class OptionalBuild(build_ext):
    """build_ext where compiled code may fail to build without failing the install.

    ``fcgi._speedups`` is an optional Extension already. mypyc's modules
    stand or fall together, since every one of them loads the one library
    that holds their code: if any fails, the files of those already built
    are removed, the rest are skipped, and those modules stay plain Python.
    """

    native_failed = False

    def build_extension(self, ext: Extension) -> None:
        native = ext.name in NATIVE_MODULES
        if native and self.native_failed:
            return
        try:
            super().build_extension(ext)
        except Exception as exc:
            if not native:
                raise
            self.native_failed = True
            self.warn(f"mypyc's build of {ext.name} failed ({exc}): fcgi runs as plain Python")
            # Not copied into place, and none left from before in either place.
            self.extensions = [e for e in self.extensions if e.name not in NATIVE_MODULES]
            for name in NATIVE_MODULES:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.get_ext_fullpath(name))
            remove_native_in_place()


def native_extensions() -> list[Extension]:
    """mypyc's extensions for :data:`COMPILED`, or none if mypyc cannot run here."""
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("fcgi: mypyc is not installed; fcgi runs as plain Python", file=sys.stderr)
        return []
    try:
        extensions: list[Extension] = mypycify(COMPILED, group_name=NATIVE_GROUP, opt_level="3")
    except (Exception, SystemExit) as exc:  # mypyc exits on a type error
        print(f"fcgi: mypyc failed ({exc!r}); fcgi runs as plain Python", file=sys.stderr)
        return []
    NATIVE_MODULES.update(ext.name for ext in extensions)
    with open(os.path.join(HERE, SOURCES_RECORD), "w") as record:
        for path in COMPILED:
            with open(os.path.join(HERE, path), "rb") as source:
                record.write(f"{hashlib.sha256(source.read()).hexdigest()}  {path}\n")
    return extensions


ext_modules: list[Extension] = []
if os.environ.get("FCGI_NO_EXTENSIONS") != "1":
    ext_modules.append(Extension("fcgi._speedups", ["fcgi/_speedups.c"], optional=True))
    ext_modules.extend(native_extensions())
if not NATIVE_MODULES:
    remove_native_in_place()

setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuild})
