"""The status and ping pages, rendered from the scoreboard.

Field names are PHP-FPM's (``reference/fpm/status.xml``) so existing habits,
scripts and exporters carry over; the payload adds the configured limits so a
dashboard needs no second source. Formats, chosen by the query string as in
PHP-FPM: text (default), ``?json``, ``?xml``, ``?openmetrics``, ``?html``;
``&full`` adds one block per worker. The single-process server answers the
same page for its scoreboard of one, as ``process manager: single``.

Two things differ from PHP-FPM on purpose. A worker's request URI is shown
without its query string unless the pool sets ``status_full_query``: query
strings carry other users' search terms, tokens and session ids, and the page
is often reachable by more people than the logs are. And the method and URI,
text a client chose, go through :func:`fcgi.escape.escape` before any format
sees them, so a CR or LF in a URI cannot add a line (``idle processes: 999``)
to the text page; the other formats get the same escaped text, so that every
format shows the same thing.

Fields PHP-FPM does not have come after its own, so a parser that reads its
fields by position still works: ``terminated requests``, ``active requests``,
and ``start failures`` / ``start backoff``, which show a pool whose new
workers cannot start (code deployed under it, a user deleted) while its
surviving workers go on serving and the master retries.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from fcgi.escape import escape
from fcgi.listen_queue import ListenQueue
from fcgi.pool.config import PoolConfig
from fcgi.pool.scoreboard import STATE_NAMES, Header, Scoreboard, Slot, SlotState

#: What the page calls the single-process server's "process manager": a pool
#: of exactly one process that no master manages (``fcgi serve`` without pool
#: options). Its limits are the ones that act in that process only:
#: ``max_children`` is 1, the master's limits (spares, max_requests,
#: request_terminate_timeout...) are not shown.
SINGLE = "single"

NO_CACHE = [
    ("Expires", "Thu, 01 Jan 1970 00:00:00 GMT"),
    ("Cache-Control", "no-cache, no-store, must-revalidate, max-age=0"),
]


@dataclass(slots=True)
class PageAnswer:
    """A response made without the app (satisfies :class:`fcgi.hooks.Answer`)."""

    status: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(slots=True)
class WorkerStatus:
    pid: int
    state: str
    start_time: float
    requests: int
    request_duration_us: int
    request_method: str
    request_uri: str
    content_length: int
    last_request_cpu: float
    last_request_memory: int
    generation: int
    active_requests: int = 0


@dataclass(slots=True)
class PoolStatus:
    pool: str
    process_manager: str
    start_time: float
    now: float
    accepted_conn: int
    listen_queue: int
    max_listen_queue: int
    listen_queue_len: int
    idle_processes: int
    active_processes: int
    total_processes: int
    max_active_processes: int
    max_children_reached: int
    slow_requests: int
    #: Requests whose worker request_terminate_timeout killed.
    terminated_requests: int
    #: Requests running now over all workers (a trio worker runs several).
    active_requests: int
    limits: dict[str, int | float]
    #: Workers that exited before they were ready, since the pool started.
    start_failures: int = 0
    #: Seconds between the master's start attempts now; 0 while workers start.
    start_backoff: float = 0.0
    workers: list[WorkerStatus] = field(default_factory=list)

    @property
    def start_since(self) -> int:
        return int(self.now - self.start_time)


def collect(
    config: PoolConfig,
    header: Header,
    slots: Sequence[Slot],
    queue: ListenQueue | None,
    now: float | None = None,
    *,
    process_manager: str | None = None,
) -> PoolStatus:
    """Put together the pool's figures from one read of the scoreboard.

    ``process_manager``: what the page names the mode; None is the pool's
    ``pm``, :data:`SINGLE` the single-process server.
    """
    now = time.time() if now is None else now
    mono = time.monotonic()
    idle = sum(1 for s in slots if s.state == SlotState.IDLE)
    active = sum(1 for s in slots if s.state == SlotState.BUSY)
    lq = queue.queued if queue else header.listen_queue
    workers = []
    for s in slots:
        uri = s.uri
        if not config.status_full_query:
            uri = uri.split("?", 1)[0]
        if s.state == SlotState.BUSY:
            duration = max(0.0, mono - s.request_start_mono)
            cpu, memory = 0.0, 0
        else:
            duration, cpu, memory = s.last_duration, s.last_cpu, s.last_memory
        workers.append(
            WorkerStatus(
                pid=s.pid,
                state=STATE_NAMES.get(SlotState(s.state), "Unknown"),
                start_time=s.started,
                requests=s.requests,
                request_duration_us=int(duration * 1e6),
                request_method=escape(s.method) or "-",
                request_uri=escape(uri) or "-",
                content_length=s.content_length,
                last_request_cpu=s.last_cpu if s.state != SlotState.BUSY else cpu,
                last_request_memory=memory,
                generation=s.generation,
                active_requests=s.active,
            )
        )
    manager = process_manager or config.pm
    return PoolStatus(
        pool=config.name,
        process_manager=manager,
        start_time=header.start_time,
        now=now,
        accepted_conn=header.accepted_base + sum(s.accepted for s in slots),
        listen_queue=lq,
        max_listen_queue=max(header.max_listen_queue, lq),
        listen_queue_len=queue.backlog if queue else header.listen_queue_len,
        idle_processes=idle,
        active_processes=active,
        total_processes=len(slots),
        max_active_processes=max(header.max_active, active),
        max_children_reached=header.max_children_reached,
        slow_requests=header.slow_requests,
        terminated_requests=header.terminated_requests,
        active_requests=sum(s.active for s in slots),
        start_failures=header.start_failures,
        start_backoff=header.start_backoff,
        limits=_limits(config, manager),
        workers=workers,
    )


def _limits(config: PoolConfig, manager: str) -> dict[str, int | float]:
    if manager == SINGLE:
        return {"max_children": 1, "request_slowlog_timeout": config.request_slowlog_timeout}
    return {
        "max_children": config.max_children,
        "start_servers": config.effective_start_servers,
        "min_spare_servers": config.min_spare_servers,
        "max_spare_servers": config.max_spare_servers,
        "max_requests": config.max_requests,
        "process_idle_timeout": config.process_idle_timeout,
        "request_terminate_timeout": config.request_terminate_timeout,
        "request_slowlog_timeout": config.request_slowlog_timeout,
        "max_memory": config.max_memory,
    }


def collect_from_board(
    config: PoolConfig,
    board: Scoreboard,
    queue: ListenQueue | None,
    *,
    process_manager: str | None = None,
) -> PoolStatus:
    return collect(
        config,
        board.read_header(),
        [s for _, s in board.slots()],
        queue,
        process_manager=process_manager,
    )


# -- rendering ----------------------------------------------------------------


def _date(ts: float) -> str:
    return time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(ts))


def _pool_rows(st: PoolStatus) -> list[tuple[str, object]]:
    rows: list[tuple[str, object]] = [
        ("pool", st.pool),
        ("process manager", st.process_manager),
        ("start time", _date(st.start_time)),
        ("start since", st.start_since),
        ("accepted conn", st.accepted_conn),
        ("listen queue", st.listen_queue),
        ("max listen queue", st.max_listen_queue),
        ("listen queue len", st.listen_queue_len),
        ("idle processes", st.idle_processes),
        ("active processes", st.active_processes),
        ("total processes", st.total_processes),
        ("max active processes", st.max_active_processes),
        ("max children reached", st.max_children_reached),
        ("slow requests", st.slow_requests),
        ("terminated requests", st.terminated_requests),
        ("active requests", st.active_requests),
        ("start failures", st.start_failures),
        ("start backoff", _om_number(st.start_backoff)),
    ]
    rows += [(name.replace("_", " "), value) for name, value in st.limits.items()]
    return rows


def _worker_rows(w: WorkerStatus, now: float) -> list[tuple[str, object]]:
    return [
        ("pid", w.pid),
        ("state", w.state),
        ("start time", _date(w.start_time)),
        ("start since", int(now - w.start_time)),
        ("requests", w.requests),
        ("active requests", w.active_requests),
        ("request duration", w.request_duration_us),
        ("request method", w.request_method),
        ("request uri", w.request_uri),
        ("content length", w.content_length),
        ("user", "-"),
        ("script", "-"),
        ("last request cpu", f"{w.last_request_cpu:.2f}"),
        ("last request memory", w.last_request_memory),
    ]


def render_text(st: PoolStatus, full: bool) -> str:
    width = 27

    def block(rows: list[tuple[str, object]]) -> str:
        return "".join(f"{name + ':':<{width}}{value}\n" for name, value in rows)

    out = block(_pool_rows(st))
    if full:
        for w in st.workers:
            out += "\n************************\n" + block(_worker_rows(w, st.now))
    return out


def _document(st: PoolStatus, full: bool) -> dict[str, object]:
    """The JSON and XML pages' content (dates as unix time, as in PHP-FPM)."""
    doc: dict[str, object] = {
        "pool": st.pool,
        "process manager": st.process_manager,
        "start time": int(st.start_time),
        "start since": st.start_since,
        "accepted conn": st.accepted_conn,
        "listen queue": st.listen_queue,
        "max listen queue": st.max_listen_queue,
        "listen queue len": st.listen_queue_len,
        "idle processes": st.idle_processes,
        "active processes": st.active_processes,
        "total processes": st.total_processes,
        "max active processes": st.max_active_processes,
        "max children reached": st.max_children_reached,
        "slow requests": st.slow_requests,
        "terminated requests": st.terminated_requests,
        "active requests": st.active_requests,
        "start failures": st.start_failures,
        "start backoff": st.start_backoff,
        "limits": dict(st.limits),
    }
    if full:
        doc["processes"] = [
            {
                "pid": w.pid,
                "state": w.state,
                "start time": int(w.start_time),
                "start since": int(st.now - w.start_time),
                "requests": w.requests,
                "active requests": w.active_requests,
                "request duration": w.request_duration_us,
                "request method": w.request_method,
                "request uri": w.request_uri,
                "content length": w.content_length,
                "user": "-",
                "script": "-",
                "last request cpu": round(w.last_request_cpu, 2),
                "last request memory": w.last_request_memory,
                "generation": w.generation,
            }
            for w in st.workers
        ]
    return doc


def render_json(st: PoolStatus, full: bool) -> str:
    return json.dumps(_document(st, full))


def render_xml(st: PoolStatus, full: bool) -> str:
    """PHP-FPM's ``?xml``: one element per field, spaces in names as hyphens.

    Values are text XML escapes; no value holds a control character (XML 1.0
    allows none, not even as a reference) because the only text a client
    chose, method and URI, is escaped by :func:`collect` already.
    """

    def element(name: str, value: object) -> str:
        tag = name.replace(" ", "-").replace("_", "-")
        if isinstance(value, dict):
            inner = "".join(element(k, v) for k, v in value.items())
        elif isinstance(value, list):
            inner = "".join(element("process", item) for item in value)
        else:
            # &, < and > as XML text wants them (xml.sax.saxutils.escape does
            # the same, but importing it loads urllib.request into every worker).
            inner = html.escape(str(value), quote=False)
        return f"<{tag}>{inner}</{tag}>"

    body = "".join(element(name, value) for name, value in _document(st, full).items())
    return f'<?xml version="1.0" ?>\n<status>{body}</status>\n'


def _om_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _om_number(value: float) -> str:
    """A sample value: integers without a fraction, others as Python's shortest repr."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


#: Limits published as ``fcgi_config_*``: setting -> (unit, pm modes it acts
#: in, whether 0 turns it off). A limit that does nothing in the pool's mode
#: (spare servers outside dynamic, the idle timeout outside ondemand) or is off
#: is left out: a dashboard comparing a worker with "its" limit would otherwise
#: compare it with a number that limits nothing.
_OM_LIMITS: dict[str, tuple[str, tuple[str, ...], bool]] = {
    "max_children": ("", ("static", "dynamic", "ondemand", SINGLE), False),
    "start_servers": ("", ("dynamic",), False),
    "min_spare_servers": ("", ("dynamic",), False),
    "max_spare_servers": ("", ("dynamic",), False),
    "max_requests": ("", ("static", "dynamic", "ondemand"), True),
    "process_idle_timeout": ("seconds", ("ondemand",), False),
    "request_terminate_timeout": ("seconds", ("static", "dynamic", "ondemand"), True),
    "request_slowlog_timeout": ("seconds", ("static", "dynamic", "ondemand", SINGLE), True),
    "max_memory": ("bytes", ("static", "dynamic", "ondemand"), True),
}

#: The states a worker's ``fcgi_process_state`` stateset always lists, so
#: that each worker has the same series whatever it is doing.
_OM_STATES = tuple(STATE_NAMES.values())


def render_openmetrics(st: PoolStatus, full: bool) -> str:
    """OpenMetrics 1.0 text (what Prometheus scrapes), metric names ``fcgi_*``.

    Names follow PHP-FPM's ``phpfpm_*`` where it has one, with the OpenMetrics
    unit rules on top: a figure in seconds or bytes says so in its name and in
    a ``# UNIT`` line. Per-worker series (``&full``) are labelled by pool and
    pid only; a worker's state is the ``fcgi_process_state`` stateset, one
    series per state, 1 for the current one. A state label on the counters
    would give a worker a new series each time it went from idle to busy,
    and ``rate()`` over such series is meaningless.
    """
    pool = f'pool="{_om_label(st.pool)}"'
    lines: list[str] = []

    def family(name: str, kind: str, help_: str, unit: str = "") -> str:
        """Write a family's metadata; return the sample name (``_total`` for counters)."""
        full_name = f"fcgi_{name}_{unit}" if unit else f"fcgi_{name}"
        lines.append(f"# TYPE {full_name} {kind}")
        if unit:
            lines.append(f"# UNIT {full_name} {unit}")
        lines.append(f"# HELP {full_name} {help_}")
        return full_name + "_total" if kind == "counter" else full_name

    def metric(name: str, kind: str, help_: str, value: float, unit: str = "") -> None:
        sample = family(name, kind, help_, unit)
        lines.append(f"{sample}{{{pool}}} {_om_number(value)}")

    metric("up", "gauge", "Whether the pool answers.", 1)
    metric("start_time", "gauge", "Unix time the pool started.", int(st.start_time), "seconds")
    metric("start_since", "counter", "Seconds since the pool started.", st.start_since, "seconds")
    metric("accepted_connections", "counter", "Connections accepted.", st.accepted_conn)
    metric("listen_queue", "gauge", "Connections waiting in the kernel queue.", st.listen_queue)
    metric("max_listen_queue", "counter", "Largest listen queue seen.", st.max_listen_queue)
    metric("listen_queue_length", "gauge", "Size of the listen backlog.", st.listen_queue_len)
    metric("idle_processes", "gauge", "Idle workers.", st.idle_processes)
    metric("active_processes", "gauge", "Workers running a request.", st.active_processes)
    metric("total_processes", "gauge", "Workers.", st.total_processes)
    metric("max_active_processes", "counter", "Most busy workers at once.", st.max_active_processes)
    metric("max_children_reached", "counter", "Times the pool was full.", st.max_children_reached)
    metric("slow_requests", "counter", "Requests over request_slowlog_timeout.", st.slow_requests)
    metric(
        "terminated_requests",
        "counter",
        "Requests killed by request_terminate_timeout.",
        st.terminated_requests,
    )
    metric("active_requests", "gauge", "Requests running now.", st.active_requests)
    metric(
        "start_failures",
        "counter",
        "Workers that exited before they were ready.",
        st.start_failures,
    )
    metric(
        "start_backoff",
        "gauge",
        "Delay between the master's attempts to start a worker; 0 while workers start.",
        st.start_backoff,
        "seconds",
    )
    for name, value in st.limits.items():
        unit, modes, zero_is_off = _OM_LIMITS.get(name, ("", (st.process_manager,), False))
        if st.process_manager not in modes or (zero_is_off and not value):
            continue
        metric(f"config_{name}", "gauge", f"Configured {name}.", value, unit)
    if full:
        _worker_metrics(st, pool, lines, family)
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


def _worker_metrics(
    st: PoolStatus,
    pool: str,
    lines: list[str],
    family: Callable[[str, str, str, str], str],
) -> None:
    """The ``&full`` per-worker families, each labelled by pool and pid only."""
    labels = [f'{pool},pid="{w.pid}"' for w in st.workers]

    def per_worker(name: str, kind: str, help_: str, values: list[float], unit: str = "") -> None:
        sample = family(name, kind, help_, unit)
        for label, value in zip(labels, values, strict=True):
            lines.append(f"{sample}{{{label}}} {_om_number(value)}")

    per_worker(
        "process_requests",
        "counter",
        "Requests served by the worker.",
        [w.requests for w in st.workers],
    )
    name = family("process_state", "stateset", "What the worker is doing.", "")
    for label, w in zip(labels, st.workers, strict=True):
        states = _OM_STATES if w.state in _OM_STATES else (*_OM_STATES, w.state)
        for state in states:
            on = 1 if state == w.state else 0
            lines.append(f'{name}{{{label},{name}="{_om_label(state)}"}} {on}')
    per_worker(
        "process_active_requests",
        "gauge",
        "Requests the worker is running now.",
        [w.active_requests for w in st.workers],
    )
    per_worker(
        "process_request_duration",
        "gauge",
        "Running time of the current request, or duration of the last one when idle.",
        [w.request_duration_us / 1e6 for w in st.workers],
        "seconds",
    )
    per_worker(
        "process_start_time",
        "gauge",
        "Unix time the worker started.",
        [int(w.start_time) for w in st.workers],
        "seconds",
    )
    per_worker(
        "process_last_request_memory",
        "gauge",
        "Peak memory of the worker after its last request (0 while one runs).",
        [w.last_request_memory for w in st.workers],
        "bytes",
    )


def render_html(st: PoolStatus, full: bool) -> str:
    def table(rows: list[tuple[str, object]]) -> str:
        cells = "".join(
            f"<tr><th>{html.escape(name)}</th><td>{html.escape(str(value))}</td></tr>"
            for name, value in rows
        )
        return f"<table>{cells}</table>\n"

    body = table(_pool_rows(st))
    if full:
        names = [name for name, _ in _worker_rows(st.workers[0], st.now)] if st.workers else []
        head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
        rows = "".join(
            "<tr>"
            + "".join(f"<td>{html.escape(str(v))}</td>" for _, v in _worker_rows(w, st.now))
            + "</tr>"
            for w in st.workers
        )
        body += f"<table><tr>{head}</tr>{rows}</table>\n"
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>pool {html.escape(st.pool)}</title></head><body>\n{body}</body></html>\n"
    )


def render(st: PoolStatus, query: str) -> PageAnswer:
    """The status page for ``query`` (``json``, ``xml``, ``html``, ``openmetrics``, ``full``...)."""
    words = {part.split("=", 1)[0] for part in query.split("&") if part}
    full = "full" in words
    if "json" in words:
        ctype, text = "application/json", render_json(st, full)
    elif "openmetrics" in words:
        ctype = "application/openmetrics-text; version=1.0.0; charset=utf-8"
        text = render_openmetrics(st, full)
    elif "xml" in words:
        ctype, text = "text/xml; charset=utf-8", render_xml(st, full)
    elif "html" in words:
        ctype, text = "text/html; charset=utf-8", render_html(st, full)
    else:
        ctype, text = "text/plain; charset=utf-8", render_text(st, full)
    body = text.encode()
    return PageAnswer("200 OK", [("Content-Type", ctype), *NO_CACHE], body)


def ping_answer(response: str) -> PageAnswer:
    return PageAnswer(
        "200 OK", [("Content-Type", "text/plain; charset=utf-8"), *NO_CACHE], response.encode()
    )
