#!/usr/bin/env bash
# Build and run the whole comparison (FastCGI peers and HTTP peers behind one nginx);
# writes bench/RESULTS.md and bench/results.png.
#   bash bench/run.sh            # full run (3 alternating rounds x 5 s)
#   bash bench/run.sh --quick    # smoke run (1 round x 2 s)
# Any option of `python -m bench --help` is passed through; installs what is missing
# (apt: nginx wrk gcc libfcgi-dev; pip: flup==1.0.3 uwsgi fcgisgi matplotlib
#  uvicorn[standard] granian gunicorn hypercorn trio).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -m bench "$@"
