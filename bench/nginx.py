"""The one nginx in front of every backend: 1 worker, access log off, a temp prefix directory.

Each target gets its own ``server`` on a 127.0.0.1 port.  A ``keepalive`` target goes through
an ``upstream`` with ``keepalive 16`` and ``fastcgi_keep_conn on``; the others use a plain
``fastcgi_pass unix:...`` (a new backend connection per request, nginx's default).

An HTTP peer (``protocol="http"``) is reached the way uvicorn's, granian's, gunicorn's and
hypercorn's docs put nginx in front: ``proxy_pass`` to an ``upstream { keepalive 16; }`` over
HTTP/1.1 with the ``Connection`` header cleared (without both, nginx opens a new connection
per request), passing the client's Host, address and scheme as the FastCGI rows pass them in
their params.

A uwsgi or SCGI target (``protocol="uwsgi"`` / ``"scgi"``, issue 14) gets what a uWSGI site
has: ``include uwsgi_params; uwsgi_pass unix:...;`` (or ``scgi_params`` / ``scgi_pass``),
with the stock params files that sit beside nginx's compiled-in nginx.conf copied into the
prefix, where a relative ``include`` looks.  Both protocols carry one request per connection,
so there is no keepalive form of them.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

NGINX = "nginx"

# CGI parameters: like Debian's fastcgi_params, with SCRIPT_NAME empty and PATH_INFO = $uri
# so that every WSGI server routes on the same PATH_INFO.
_PARAMS = """
        fastcgi_param QUERY_STRING      $query_string;
        fastcgi_param REQUEST_METHOD    $request_method;
        fastcgi_param CONTENT_TYPE      $content_type;
        fastcgi_param CONTENT_LENGTH    $content_length;
        fastcgi_param SCRIPT_NAME       "";
        fastcgi_param PATH_INFO         $uri;
        fastcgi_param REQUEST_URI       $request_uri;
        fastcgi_param DOCUMENT_URI      $document_uri;
        fastcgi_param SERVER_PROTOCOL   $server_protocol;
        fastcgi_param REQUEST_SCHEME    $scheme;
        fastcgi_param GATEWAY_INTERFACE CGI/1.1;
        fastcgi_param SERVER_SOFTWARE   nginx/$nginx_version;
        fastcgi_param REMOTE_ADDR       $remote_addr;
        fastcgi_param REMOTE_PORT       $remote_port;
        fastcgi_param SERVER_ADDR       $server_addr;
        fastcgi_param SERVER_PORT       $server_port;
        fastcgi_param SERVER_NAME       $server_name;
"""


#: The stock params files a uwsgi or SCGI target includes, by protocol.
STOCK_PARAMS = {"uwsgi": "uwsgi_params", "scgi": "scgi_params"}

_PROXY = """
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $http_host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
"""


@dataclass(frozen=True)
class Front:
    """One nginx server block: a port in front of a backend socket."""

    name: str
    port: int
    sock: str
    keepalive: bool
    # or "http": proxy_pass (always through a keepalive upstream); "uwsgi", "scgi": the
    # stock params and uwsgi_pass / scgi_pass (never kept: one request per connection)
    protocol: str = "fastcgi"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def render(prefix: Path, fronts: list[Front]) -> str:
    user = "user root;\n" if os.geteuid() == 0 else ""
    blocks: list[str] = []
    for i, front in enumerate(fronts):
        http = front.protocol == "http"
        upstream = f"up{i}"
        if (front.keepalive or http) and front.protocol not in STOCK_PARAMS:
            blocks.append(
                f"    upstream {upstream} {{\n        server unix:{front.sock};\n"
                "        keepalive 16;\n    }\n"
            )
        if front.protocol in STOCK_PARAMS:
            passing = (
                f"include {STOCK_PARAMS[front.protocol]};\n"
                f"        {front.protocol}_pass unix:{front.sock};\n"
            )
        elif http:
            passing = f"proxy_pass http://{upstream};\n{_PROXY}"
        elif front.keepalive:
            passing = f"fastcgi_pass {upstream};\n        fastcgi_keep_conn on;\n{_PARAMS}"
        else:
            passing = f"fastcgi_pass unix:{front.sock};\n{_PARAMS}"
        blocks.append(
            f"    server {{  # {front.name}\n"
            f"        listen 127.0.0.1:{front.port};\n"
            "        location / {\n"
            f"        {passing}"
            "        }\n    }\n"
        )
    return (
        f"{user}worker_processes 1;\ndaemon off;\npid {prefix}/nginx.pid;\n"
        f"error_log {prefix}/error.log warn;\n"
        "events {\n    worker_connections 4096;\n}\n"
        "http {\n"
        "    access_log off;\n"
        "    keepalive_requests 1000000;\n"
        "    keepalive_timeout 120s;\n"
        "    client_max_body_size 8m;\n"
        "    client_body_buffer_size 2m;\n"  # keep a 1 MiB upload in memory, not a temp file
        "    fastcgi_buffer_size 16k;\n"
        "    fastcgi_buffers 16 16k;\n"  # a 64 KiB answer fits in memory
        "    proxy_buffer_size 16k;\n"  # the same for the HTTP peers
        "    proxy_buffers 16 16k;\n"
        "    uwsgi_buffer_size 16k;\n"  # and for the uwsgi and SCGI rows
        "    uwsgi_buffers 16 16k;\n"
        "    scgi_buffer_size 16k;\n"
        "    scgi_buffers 16 16k;\n"
        f"    client_body_temp_path {prefix}/client_body;\n"
        f"    fastcgi_temp_path {prefix}/fastcgi;\n"
        f"    proxy_temp_path {prefix}/proxy;\n"
        f"    uwsgi_temp_path {prefix}/uwsgi;\n"
        f"    scgi_temp_path {prefix}/scgi;\n" + "".join(blocks) + "}\n"
    )


def conf_dir(nginx: str) -> Path:
    """The directory of nginx's compiled-in nginx.conf: where its stock params files are."""
    try:
        out = subprocess.run([nginx, "-V"], capture_output=True, text=True)
    except OSError:
        return Path("/etc/nginx")
    match = re.search(r"--conf-path=(\S+)", out.stdout + out.stderr)
    return Path(match.group(1)).parent if match else Path("/etc/nginx")


def copy_stock_params(nginx: str, prefix: Path) -> None:
    """Put the stock uwsgi_params and scgi_params beside our nginx.conf.

    A relative ``include`` is looked up in the directory of the file given with ``-c``,
    so the server blocks read ``include uwsgi_params;`` exactly as a uWSGI site's do.  A
    file this nginx lacks is left out, and ``nginx -t`` then names it.
    """
    source = conf_dir(nginx)
    for name in STOCK_PARAMS.values():
        if (source / name).exists():
            shutil.copyfile(source / name, prefix / name)


class Nginx:
    """A private nginx master + 1 worker, stopped by :meth:`stop`."""

    def __init__(self, prefix: Path, fronts: list[Front]) -> None:
        self.prefix = prefix
        self.fronts = fronts
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        self.prefix.mkdir(parents=True, exist_ok=True)
        conf = self.prefix / "nginx.conf"
        conf.write_text(render(self.prefix, self.fronts))
        exe = shutil.which(NGINX) or "/usr/sbin/nginx"
        copy_stock_params(exe, self.prefix)
        base = [exe, "-p", str(self.prefix), "-c", str(conf), "-e", str(self.prefix / "error.log")]
        check = subprocess.run([*base, "-t"], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t failed: {check.stderr.strip()}")
        with open(self.prefix / "nginx.out", "ab") as out:
            self.proc = subprocess.Popen(
                base,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        pending = {f.port for f in self.fronts}
        while pending and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited; see {self.prefix / 'error.log'}")
            for port in list(pending):
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                        pending.discard(port)
                except OSError:
                    pass
            time.sleep(0.05)
        if pending:
            raise RuntimeError(f"nginx is not listening on {sorted(pending)}")

    def stop(self) -> None:
        if self.proc is None:
            return
        import signal

        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=5)
                break
            except subprocess.TimeoutExpired:
                continue
        self.proc = None


def version() -> str:
    try:
        out = subprocess.run([NGINX, "-v"], capture_output=True, text=True).stderr
    except OSError:
        return "?"
    return out.strip().split("/")[-1] if "/" in out else out.strip()
