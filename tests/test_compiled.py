"""The mypyc-compiled request loop against its own source, and its build.

setup.py compiles the modules the sync worker's requests run through
(``setup.COMPILED``) with mypyc. The C is generated from the same ``.py``
files, so the rules cannot drift apart; what can differ is how mypyc runs
them. These tests hold the two to identical output, and check that the build
and ``FCGI_PURE_PYTHON=1`` select what they say:

* in this process the compiled modules run; a child started with
  ``FCGI_PURE_PYTHON=1`` runs the source (tests/core_trace.py). Hypothesis
  feeds both the same generated FastCGI streams (tests/test_fastpath.py's
  strategies: well-formed heads, bent ones, bit flips, truncations, any
  split into reads) and the same generated WSGI apps, and the traces (events,
  bytes for the web server, errors) must be equal;
* the compiled modules are really in use where they were built, and
  ``FCGI_PURE_PYTHON=1`` really bypasses them;
* a pattern that mypyc compiles differently from Python (below) stays out
  of the compiled modules.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import core_trace
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fastpath import limits, streams

import fcgi
from fcgi.connection import Limits

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


def compiled_sources() -> list[str]:
    """setup.py's COMPILED list, read from the file (importing setup.py would build)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "COMPILED":
            value = ast.literal_eval(node.value)
            assert isinstance(value, list)
            return [str(path) for path in value]
    raise AssertionError("setup.py declares no COMPILED list")


def module_name(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


NO_EXTENSIONS = os.environ.get("FCGI_NO_EXTENSIONS") == "1"


def is_compiled(name: str) -> bool:
    module = sys.modules.get(name) or __import__(name, fromlist=["_"])
    return not str(module.__file__).endswith(".py")


# -- which code runs ------------------------------------------------------------------------


def test_the_compiled_modules_are_in_use_where_built() -> None:
    names = [module_name(path) for path in compiled_sources()]
    if fcgi.PURE_PYTHON or NO_EXTENSIONS:
        assert not any(is_compiled(name) for name in names)
        return
    missing = [name for name in names if not is_compiled(name)]
    assert not missing, (
        f"{missing} run from source: `pip install -e .` compiles them with mypyc "
        "(it needs gcc and the Python headers)"
    )


def test_the_compiled_code_was_made_from_the_source_here() -> None:
    """An edited module runs compiled only once rebuilt: a stale build fails here.

    In a work tree (``pip install -e .``) the compiled modules sit beside the
    ``.py`` files; after an edit, the old compiled code still runs until
    ``pip install -e .`` (or ``python setup.py build_ext --inplace``) again.
    setup.py records a hash of each source it compiled.
    """
    record = ROOT / "fcgi" / "_native__mypyc.sources"
    if fcgi.PURE_PYTHON or NO_EXTENSIONS or not is_compiled("fcgi.connection"):
        return  # nothing compiled runs here (the test above says whether it should)
    assert record.exists(), "no record of the compiled sources: run `pip install -e .` again"
    built = dict(reversed(line.split("  ", 1)) for line in record.read_text().splitlines())
    changed = [
        path
        for path in compiled_sources()
        if built.get(path) != hashlib.sha256((ROOT / path).read_bytes()).hexdigest()
    ]
    assert not changed, f"{changed} changed since the build: run `pip install -e .` again"


def test_pure_python_runs_every_module_from_source() -> None:
    names = [module_name(path) for path in compiled_sources()]
    code = (
        "import importlib, json, sys\n"
        f"files = [importlib.import_module(n).__file__ for n in {names!r}]\n"
        "print(json.dumps([files, 'fcgi._native__mypyc' in sys.modules]))\n"
    )
    env = {**os.environ, "FCGI_PURE_PYTHON": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, cwd="/"
    )
    files, native_loaded = json.loads(out.stdout)
    assert all(f.endswith(".py") for f in files), files
    assert not native_loaded


# -- a pattern mypyc compiles differently -----------------------------------------------------


def test_no_except_name_is_bound_to_two_exception_types() -> None:
    """``except A as exc`` and ``except B as exc`` in one function: a TypeError when compiled.

    mypyc gives a local one type for the whole function, so the second clause
    fails to bind a B where an A was expected, and the handler never runs.
    """
    clashes = []
    for path in compiled_sources():
        tree = ast.parse((ROOT / path).read_text())
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            bound: dict[str, set[str]] = {}
            for node in ast.walk(func):
                if isinstance(node, ast.ExceptHandler) and node.name and node.type is not None:
                    bound.setdefault(node.name, set()).add(ast.unparse(node.type))
            clashes += [
                f"{path}:{func.lineno} {func.name}: {name} {sorted(types)}"
                for name, types in bound.items()
                if len(types) > 1
            ]
    assert not clashes, clashes


def test_no_compiled_module_reads_its_frame() -> None:
    """locals(), vars(), globals() and sys._getframe() see other things when compiled.

    A compiled function has no frame of its own: ``dict(locals())`` of a
    keyword-only function, for one, misses arguments under mypyc.
    """
    found = []
    for path in compiled_sources():
        for node in ast.walk(ast.parse((ROOT / path).read_text())):
            if isinstance(node, ast.Call):
                name = ast.unparse(node.func)
                if name in ("locals", "vars", "globals", "sys._getframe"):
                    found.append(f"{path}:{node.lineno} {name}()")
    assert not found, found


def test_module_constants_of_compiled_modules_are_final() -> None:
    """A module constant read by compiled code is a dict lookup unless it is ``Final``.

    mypyc reads a module-level name from the module's dict at every use, since
    it could be rebound; a ``Final`` one it reads as a constant (a literal is
    inlined, even in the modules that import it). A request reads dozens of
    them: declaring them Final took 6% off a kept hello request's instructions.
    Constants here are names in capitals bound once at the top level (one
    chosen by a try/except at import is bound twice, and cannot be Final);
    a line that says ``# not Final: <why>`` is left alone.
    """
    missing = []
    for path in compiled_sources():
        source = (ROOT / path).read_text()
        tree, lines = ast.parse(source), source.splitlines()
        rebound = {n for node in ast.walk(tree) if isinstance(node, ast.Global) for n in node.names}
        stores: dict[str, int] = {}
        for statement in tree.body:
            for node in ast.walk(statement):
                if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                    stores[node.id] = stores.get(node.id, 0) + 1
        for node in tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, annotation = node.targets[0], None
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                target, annotation = node.target, node.annotation
            else:
                continue
            if not isinstance(target, ast.Name):
                continue
            name = target.id
            constant = name.lstrip("_")[:1].isupper() and name.upper() == name
            if not constant or name in rebound or stores[name] > 1:
                continue
            if isinstance(node.value, ast.Call) and ast.unparse(node.value.func) == "TypeVar":
                continue
            final = annotation is not None and "Final" in ast.unparse(annotation)
            if not final and "# not Final:" not in lines[node.lineno - 1]:
                missing.append(f"{path}:{node.lineno} {name}")
    assert not missing, missing


# -- the same output from both ------------------------------------------------------------------

SETTINGS = settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def oracle() -> Iterator[subprocess.Popen[str]]:
    """tests/core_trace.py in a child that runs fcgi from source."""
    if fcgi.PURE_PYTHON or not is_compiled("fcgi.connection"):
        if not (fcgi.PURE_PYTHON or NO_EXTENSIONS):
            pytest.fail("fcgi.connection is not compiled: see the test above")
        pytest.skip("this process runs the source too: there is no compiled twin to compare")
    env = {**os.environ, "FCGI_PURE_PYTHON": "1"}
    child = subprocess.Popen(
        [sys.executable, str(TESTS / "core_trace.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=TESTS,
    )
    try:
        yield child
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)


def both(oracle: subprocess.Popen[str], kind: str, case: dict[str, Any]) -> tuple[str, str]:
    """(compiled trace, source trace) of ``case``."""
    assert oracle.stdin is not None and oracle.stdout is not None
    oracle.stdin.write(json.dumps([kind, case]) + "\n")
    oracle.stdin.flush()
    line = oracle.stdout.readline()
    assert line, "the pure-Python child died"
    return core_trace.TRACES[kind](case), json.loads(line)


def limits_case(lim: Limits) -> dict[str, Any]:
    fields = dataclasses.asdict(lim)
    fields["roles"] = sorted(fields["roles"])
    return fields


@SETTINGS
@given(
    streams(),
    limits,
    st.sampled_from([b"", b"hello", b"x" * 65535, b"y" * 70001]),
    st.sampled_from([0, 1, 255, 2**31]),
)
def test_the_core_gives_the_same_bytes_compiled_or_not(
    oracle: subprocess.Popen[str],
    stream: tuple[bytes, list[int]],
    lim: Limits,
    body: bytes,
    app_status: int,
) -> None:
    data, splits = stream
    case = {
        "data": data.hex(),
        "splits": splits,
        "limits": limits_case(lim),
        "body": body.hex(),
        "app_status": app_status,
    }
    compiled, source = both(oracle, "connection", case)
    assert compiled == source


header_names = st.sampled_from(["Content-Type", "Content-Length", "X-A", "", "Bad Name", "Status"])
header_values = st.sampled_from(["text/plain", "5", "0", "", "a\r\nb", "é", "x" * 300])
apps = st.fixed_dictionaries(
    {
        "status": st.sampled_from(
            ["200 OK", "404 Not Found", "204 No Content", "200", "99 Low", "abc", "200 OK\r\nX: y"]
        ),
        "headers": st.lists(st.tuples(header_names, header_values), max_size=4),
        "chunks": st.lists(
            st.sampled_from([b"", b"hi", b"z" * 9000, b"w" * 70000]).map(bytes.hex), max_size=4
        ),
        "shape": st.sampled_from(["list", "generator"]),
        "chunk_type": st.sampled_from(["bytes", "bytes", "bytearray", "memoryview"]),
        "write": st.booleans(),
        "fail": st.sampled_from([None, None, "before", "after", "streaming", "handled"]),
    }
)


@SETTINGS
@given(apps)
def test_respond_gives_the_same_answer_compiled_or_not(
    oracle: subprocess.Popen[str], app: dict[str, Any]
) -> None:
    compiled, source = both(oracle, "respond", app)
    assert compiled == source


cgi_names = st.sampled_from(
    [
        "REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "REQUEST_URI", "QUERY_STRING",
        "HTTPS", "REQUEST_SCHEME", "SERVER_NAME", "SERVER_PORT", "REMOTE_ADDR", "REMOTE_PORT",
        "SERVER_PROTOCOL", "CONTENT_LENGTH", "CONTENT_TYPE", "HTTP_HOST", "HTTP_X_A",
    ]
)  # fmt: skip
cgi_values = st.one_of(
    st.sampled_from(["", "/", "/app", "/app/x", "a=1&b=%20", "on", "https", "80", "HTTP/1.0"]),
    st.text(st.characters(min_codepoint=0, max_codepoint=255), max_size=20),
)


@SETTINGS
@given(st.dictionaries(cgi_names, cgi_values, max_size=10), st.sampled_from([None, "", "/app"]))
def test_the_asgi_scope_is_the_same_compiled_or_not(
    oracle: subprocess.Popen[str], params: dict[str, str], mount: str | None
) -> None:
    compiled, source = both(oracle, "scope", {"params": params, "mount": mount})
    assert compiled == source


def test_the_traces_are_not_vacuous(oracle: subprocess.Popen[str]) -> None:
    """An ordinary request really goes through both and answers."""
    from fcgi import records as r

    data = (
        r.encode_begin_request(1, r.Role.RESPONDER, True)
        + r.encode_params(1, {b"REQUEST_METHOD": b"GET"})
        + r.encode_record(r.STDIN, 1)
    )
    case = {
        "data": data.hex(),
        "splits": [],
        "limits": limits_case(Limits()),
        "body": b"hello".hex(),
        "app_status": 0,
    }
    compiled, source = both(oracle, "connection", case)
    assert compiled == source
    assert "Params(" in compiled and "hello" in compiled
    app = {"status": "200 OK", "headers": [], "chunks": [b"hi".hex()], "shape": "list"}
    app = {**app, "chunk_type": "bytes", "write": False, "fail": None}
    compiled, source = both(oracle, "respond", app)
    assert compiled == source
    assert "Content-Length: 2" in compiled
