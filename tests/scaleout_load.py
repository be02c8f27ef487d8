"""Load generator for test_scaleout.py, run inside the nginx network namespace.

``python scaleout_load.py URL COUNT THREADS``: GETs URL (``frontend_app``'s
echo route) COUNT times from THREADS threads.  Prints ``progress N`` after each
completed request; when a line ``mark`` arrives on stdin it notes how many had
completed.  Finally prints one JSON line: every result in completion order
(pid of the app process that answered, or the error; ``late``: the request was
sent after the mark arrived) and the mark.
"""

from __future__ import annotations

import http.client
import itertools
import json
import sys
import threading
import urllib.parse


def main() -> None:
    url, count, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    parts = urllib.parse.urlsplit(url)
    lock = threading.Lock()
    tickets = itertools.count()
    results: list[dict[str, object]] = []
    mark: list[int] = []

    def watch_stdin() -> None:
        for line in sys.stdin:
            if line.strip() == "mark":
                with lock:
                    mark.append(len(results))

    def worker() -> None:
        while next(tickets) < count:
            result: dict[str, object]
            with lock:
                late = bool(mark)
            try:
                conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)
                conn.request("GET", f"{parts.path}?{parts.query}")
                resp = conn.getresponse()
                body = resp.read()
                conn.close()
                if resp.status == 200:
                    result = {"pid": json.loads(body)["pid"]}
                else:
                    result = {"error": f"HTTP {resp.status}: {body[:200]!r}"}
            except Exception as exc:
                result = {"error": repr(exc)}
            result["late"] = late
            with lock:
                results.append(result)
                print(f"progress {len(results)}", flush=True)

    threading.Thread(target=watch_stdin, daemon=True).start()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    with lock:
        print(json.dumps({"results": results, "mark": mark[0] if mark else None}), flush=True)


if __name__ == "__main__":
    main()
