"""The exit statuses of ``fcgi serve`` and ``fcgi check-config``: one table for every mode.

A supervisor (systemd's ``RestartPreventExitStatus=``, a container runtime, a
deploy script) decides from the status alone whether a restart can help, so a
status means the same thing from a single process, a pool master and
``check-config``:

====  =====================================================================
0     clean stop (SIGTERM, SIGQUIT, SIGINT), or a valid configuration
1     failure at run time, after "ready" (an error the operator did not cause)
2     usage or configuration mistake: bad flag, bad key, bad value, missing file
3     the app cannot be imported (or its ASGI lifespan start-up failed)
4     workers cannot start although the app imports: found only once a worker
      starts (a user deleted, a directory gone); the same mistakes found by
      the start-up checks (user, group, chdir) exit 2
====  =====================================================================

2 and 3 are never worth an automatic restart: the same command fails the same
way until someone edits something. 1 and 4 may be.
"""

from __future__ import annotations

#: Stopped on request, or ``check-config`` found nothing wrong.
EXIT_OK = 0
#: Failed at run time, after start-up checks passed.
EXIT_FAILURE = 1
#: A usage or configuration mistake (argparse also exits 2).
EXIT_USAGE = 2
#: The app cannot be imported, or its lifespan start-up failed.
EXIT_APP_IMPORT = 3
#: The app imports, but no worker could start (a cause the start-up checks
#: could not see; what they see exits EXIT_USAGE).
EXIT_WORKERS = 4
