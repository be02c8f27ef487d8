"""Side-by-side benchmark: fcgi against flup, uWSGI, fcgisgi, C responders and HTTP servers.

The HTTP peers (uvicorn, granian, gunicorn, hypercorn) sit behind the same nginx's proxy_pass.

Run everything with ``python -m bench`` (or ``bash bench/run.sh``); see ``bench/README.md``.
"""
