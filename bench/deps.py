"""Install what the benchmark needs (idempotent: skipped when present) and compile the C parts."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.backends import BUILD, ROOT, uwsgi_path

C_DIR = ROOT / "bench" / "c"

#: program or header -> Debian package
APT = {
    "nginx": "nginx",
    "wrk": "wrk",
    "gcc": "gcc",
    "/usr/include/fcgiapp.h": "libfcgi-dev",
}
#: importable module (or program) -> pip requirement
PIP = {
    "flup": "flup==1.0.3",
    "fcgisgi": "fcgisgi",
    "matplotlib": "matplotlib",
    "uwsgi": "uwsgi",  # a program: compiled by pip, takes a minute or two
    # the HTTP peers (issue 12): what a team picks instead of a FastCGI server
    "uvicorn": "uvicorn[standard]",  # [standard] brings uvloop and httptools
    "uvloop": "uvicorn[standard]",
    "httptools": "uvicorn[standard]",
    "granian": "granian",
    "gunicorn": "gunicorn",
    "hypercorn": "hypercorn",
    "trio": "trio",  # hypercorn's trio worker class
}

#: binary -> (source, extra gcc arguments)
PROGRAMS = {
    "responder": ("responder.c", []),
    "libfcgi_responder": ("libfcgi_responder.c", ["-lfcgi"]),
    "fcgiload": ("fcgiload.c", []),
    "httpload": ("httpload.c", []),
}


def _present(thing: str) -> bool:
    if thing.startswith("/"):
        return os.path.exists(thing)
    return shutil.which(thing) is not None or os.path.exists(f"/usr/sbin/{thing}")


def _log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


def ensure_apt() -> None:
    missing = sorted({pkg for thing, pkg in APT.items() if not _present(thing)})
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise RuntimeError(f"missing {missing} and no apt-get to install them")
    _log(f"apt-get install {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True, env=env)


def _project_requirements_missing() -> list[str]:
    """fcgi's own runtime dependencies (pyproject.toml) that are not installed."""
    import re
    import tomllib
    from importlib import metadata

    try:
        project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return []
    missing = []
    for req in project.get("dependencies", []):
        name = re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0]
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            missing.append(req)
    return missing


def ensure_pip() -> None:
    missing = []
    for name, req in PIP.items():
        if name == "uwsgi":
            found = os.path.exists(uwsgi_path())
        else:
            found = importlib.util.find_spec(name) is not None
        if not found:
            missing.append(req)
    missing += _project_requirements_missing()
    missing = list(dict.fromkeys(missing))  # one requirement may stand for several modules
    if missing:
        _log(f"pip install {' '.join(missing)}")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)


def compile_c(force: bool = False, names: list[str] | None = None) -> dict[str, Path]:
    """Compile bench/c/*.c into bench/build/ when the binary is missing or older."""
    BUILD.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for name, (src, extra) in PROGRAMS.items():
        if names is not None and name not in names:
            continue
        source, binary = C_DIR / src, BUILD / name
        stale = not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime
        if force or stale:
            _log(f"gcc {src} -> bench/build/{name}")
            subprocess.run(
                ["gcc", "-O2", "-Wall", "-o", str(binary), str(source), *extra], check=True
            )
        out[name] = binary
    return out


def ensure_all(install: bool = True) -> dict[str, Path]:
    if install:
        ensure_apt()
        ensure_pip()
    return compile_c()
