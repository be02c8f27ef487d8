"""``python -m fcgi`` is the ``fcgi`` command."""

from fcgi.cli import main

raise SystemExit(main())
