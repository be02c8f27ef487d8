"""Side-by-side FastCGI benchmark: fcgi against flup, uWSGI, fcgisgi and C responders.

Run everything with ``python -m bench`` (or ``bash bench/run.sh``); see ``bench/README.md``.
"""
