"""The servers the suite is run against in this repository: every kind of ``fcgi serve``
and flup. Shared by ``python -m conformance.report`` and tests/test_conformance.py so the
report and the tests judge the same commands."""

from __future__ import annotations

import sys

PY = sys.executable
_FCGI = f"{PY} -m fcgi serve conformance.app:app --bind unix:{{sock}}"
_POOL = "--workers 2 --user root"

#: label -> command template; the fcgi kinds first, flup (the comparison) last.
FCGI_SERVERS: dict[str, str] = {
    "fcgi (sync)": _FCGI,
    "fcgi (trio)": f"{_FCGI} --worker trio",
    "fcgi pool": f"{_FCGI} {_POOL}",
    "fcgi pool (trio)": f"{_FCGI} {_POOL} --worker trio",
}
FLUP = f"{PY} -m conformance.flup_server {{sock}}"
SERVERS: dict[str, str] = {**FCGI_SERVERS, "flup": FLUP}
