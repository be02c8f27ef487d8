"""Build configuration that pyproject.toml cannot express: the optional C extension.

All package metadata lives in pyproject.toml; setuptools reads both.

fcgi._speedups (fcgi/_speedups.c) is optional: where no C compiler or Python
headers exist, the build warns and goes on, and fcgi.records falls back to its
pure-Python code. Set FCGI_NO_EXTENSIONS=1 in the environment of the build
(``FCGI_NO_EXTENSIONS=1 pip install .``) to skip the extension altogether and
get a pure-Python install.
"""

import os

from setuptools import Extension, setup

ext_modules: list[Extension] = []
if os.environ.get("FCGI_NO_EXTENSIONS") != "1":
    ext_modules.append(Extension("fcgi._speedups", ["fcgi/_speedups.c"], optional=True))

setup(ext_modules=ext_modules)
