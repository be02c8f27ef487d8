"""Sync workers pass idle kept connections to each other while a request is slow.

A real pool of two sync workers, and a raw FastCGI client that keeps its
connections open between requests as nginx does (FCGI_KEEP_CONN): a
connection parked in a worker that runs a slow request must not make its
next request wait for that one while the other worker is idle
(fcgi.handoff). The app answers with the pid of the worker that served it.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

from rawfcgi import RecordReader, get_params, request_bytes
from test_pool_support import PoolMaster, _children_of, wait_for, write_app
from webservers import Backend, Nginx, fcgi_serve_command

from fcgi.records import STDIN, encode_record

#: Seconds the slow request takes: far longer than any hand-off, so that an
#: answer seen while it runs came from the other worker.
SLOW = 5


class Kept:
    """One kept FastCGI connection: requests with FCGI_KEEP_CONN, answers read in order."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(address.removeprefix("unix:"))
        self.reader = RecordReader(self.sock)

    def send(self, target: str, extra: bytes = b"") -> None:
        path, _, query = target.partition("?")
        self.sock.sendall(request_bytes(1, get_params(path, query), keep_conn=True) + extra)

    def pid(self) -> int:
        """The pid in the next answer (the app says which worker served it)."""
        reply = self.reader.reply(1)
        assert reply.status == 200, reply
        return int(reply.body.split(b"pid=")[1].split()[0])

    def ask(self, target: str) -> int:
        self.send(target)
        return self.pid()

    def answered(self) -> bool:
        """True if an answer is waiting to be read (without waiting for one)."""
        return bool(self.reader.ready) or bool(select.select([self.sock], [], [], 0)[0])

    def close(self) -> None:
        self.sock.close()


def parked_in_one_worker(m: PoolMaster, count: int) -> tuple[list[Kept], int, list[Kept]]:
    """``count`` kept connections parked in the same worker, its pid, and every one opened."""
    opened = [Kept(m.address) for _ in range(2 * count - 1)]
    # 2 * count - 1 connections over two workers: one worker holds count of
    # them. Asked until two rounds agree: a worker's first requests may be
    # slow enough that it passes its connections on meanwhile.
    pids: list[int] = []
    for _ in range(10):
        previous, pids = pids, [kept.ask("/") for kept in opened]
        if pids == previous:
            break
    by_pid: dict[int, list[Kept]] = {}
    for kept, pid in zip(opened, pids, strict=True):
        by_pid.setdefault(pid, []).append(kept)
    pid, group = next((pid, group) for pid, group in by_pid.items() if len(group) >= count)
    return group[:count], pid, opened


def side_status(tmp_path: Path) -> list[str]:
    """Arguments for a status page the master answers itself, even with every worker busy."""
    return ["--status-listen", f"unix:{tmp_path / 'status.sock'}"]


def sleeping(m: PoolMaster) -> int:
    """How many workers run a /sleep request now (the master's status page)."""
    processes = m.status(f"unix:{m.dir / 'status.sock'}")["processes"]
    return sum(p["state"] == "Running" and p["request uri"] == "/sleep" for p in processes)


def handoffs_since(m: PoolMaster, start: int) -> int:
    """How many hand-offs the pool logged after the first ``start`` characters of its log."""
    return m.log()[start:].count("idle connections to the other workers")


def parked_pair(m: PoolMaster) -> tuple[Kept, Kept, int, list[Kept]]:
    """Two kept connections parked in the same worker, its pid, and every one opened."""
    (first, second), pid, opened = parked_in_one_worker(m, 2)
    return first, second, pid, opened


def test_a_kept_connection_of_a_busy_worker_is_served_by_the_idle_one(tmp_path: Path) -> None:
    with PoolMaster(tmp_path, ["--workers", "2"]) as m:
        m.wait_ready(2)
        slow, fast, busy_pid, opened = parked_pair(m)
        start = len(m.log())
        slow.send(f"/sleep?{SLOW}")
        wait_for(lambda: handoffs_since(m, start) >= 1, what="the hand-off")
        # The fast request goes out on a connection that was parked in the
        # busy worker: the other worker answers it, while the slow one runs.
        assert fast.ask("/") != busy_pid
        assert not slow.answered()
        # The connection lives on in its new worker, and the slow one ends well.
        assert fast.ask("/") != busy_pid
        assert slow.pid() == busy_pid
        for kept in opened:
            kept.close()


def test_a_request_already_sent_travels_with_its_connection(tmp_path: Path) -> None:
    with PoolMaster(tmp_path, ["--workers", "2"]) as m:
        m.wait_ready(2)
        slow, fast, busy_pid, opened = parked_pair(m)
        # Both requests at once: the worker takes the slow one, and the fast
        # one's bytes are still in the kernel when its connection is passed on.
        slow.send(f"/sleep?{SLOW}")
        fast.send("/")
        fast.pid()
        assert not slow.answered()
        assert slow.pid() == busy_pid
        # Answered exactly once: the next answer on it is the next request's.
        fast.send("/?again")
        reply = fast.reader.reply(1)
        assert reply.status == 200 and len([r for r in reply.records if r[0] == 3]) == 1
        for kept in opened:
            kept.close()


def waiting_in_the_channel(m: PoolMaster) -> tuple[Kept, Kept, Kept, int, list[Kept]]:
    """Both workers busy with slow requests, and a kept connection in the channel.

    Returns the first slow request's connection, the one in the channel, the
    second slow request's, the pid of the first worker, and every one opened.
    """
    slow, fast, busy_pid, opened = parked_pair(m)
    start = len(m.log())
    slow.send(f"/sleep?{SLOW}")
    wait_for(lambda: sleeping(m) == 1, what="one worker busy")
    # The first worker passes the fast connection on; the idle one takes it.
    wait_for(lambda: handoffs_since(m, start) >= 1, what="the first hand-off")
    # The other worker gets a slow request too (a new connection: the busy
    # worker accepts none), and passes the fast connection on in turn: with
    # no worker free, it waits in the channel.
    other = Kept(m.address)
    other.send(f"/sleep?{SLOW * 2}")
    wait_for(lambda: sleeping(m) == 2, what="both workers busy")
    wait_for(lambda: handoffs_since(m, start) >= 2, what="the second hand-off")
    return slow, fast, other, busy_pid, [*opened, other]


def test_with_every_worker_busy_the_request_waits_for_the_first_free(tmp_path: Path) -> None:
    with PoolMaster(tmp_path, ["--workers", "2", *side_status(tmp_path)]) as m:
        m.wait_ready(2)
        slow, fast, other, busy_pid, opened = waiting_in_the_channel(m)
        fast.send("/")
        # Served once, by the first worker to be free: the first slow one's.
        assert fast.pid() == busy_pid
        assert slow.answered()
        assert slow.pid() == busy_pid
        assert other.pid() != busy_pid
        for kept in opened:
            kept.close()


def test_half_a_head_in_user_space_is_never_passed_on(tmp_path: Path) -> None:
    # The half head must outlive the slow request.
    args = ["--workers", "2", "--request-header-timeout", f"{SLOW * 4}"]
    with PoolMaster(tmp_path, args) as m:
        m.wait_ready(2)
        # The third one shows when the worker passes its movable connections on.
        (slow, half, witness), busy_pid, opened = parked_in_one_worker(m, 3)
        start = len(m.log())
        second = request_bytes(1, get_params("/", "second"), keep_conn=True)
        cut = len(second) // 2
        half.sock.sendall(second[:cut])
        # Their worker reads what is ready in the order it came: once it has
        # answered this, it holds the half head in user space.
        assert slow.ask("/") == busy_pid
        slow.send(f"/sleep?{SLOW}")
        wait_for(lambda: handoffs_since(m, start) >= 1, what="the witness passed on")
        assert witness.ask("/") != busy_pid
        # The half head stayed with its worker: the rest goes there, and the
        # answer comes once that worker is free.
        half.sock.sendall(second[cut:])
        assert half.pid() == busy_pid
        assert slow.pid() == busy_pid
        for kept in opened:
            kept.close()


def sleeping_behind(nginx: Nginx) -> bool:
    """True once a worker runs /sleep (the pool's status page, through nginx)."""
    response = nginx.request("GET", "/status?json&full")
    processes = json.loads(response.body)["processes"]
    return any(p["state"] == "Running" and p["request uri"] == "/sleep" for p in processes)


def _pool_backend(tmp_path: Path, *args: str) -> Backend:
    """A pool of the test app, started as nginx's backend (not yet started)."""
    write_app(tmp_path, "1")
    bind = f"unix:{tmp_path}/pool.sock"
    extra = ["--user", "root", "--chdir", str(tmp_path)]
    extra += ["--status-path", "/status", "--log-level", "debug", *args]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    return Backend(
        command=fcgi_serve_command("poolapp:app", bind, extra), bind=bind, workdir=tmp_path, env=env
    )


def test_through_nginx_with_kept_connections(
    tmp_path: Path, start_nginx: Callable[[str, Backend], Nginx]
) -> None:
    """deploy/nginx/fcgi.conf as shipped: fast requests never wait for a slow one."""
    backend = _pool_backend(tmp_path, "--workers", "2").start()
    nginx = start_nginx("fcgi.conf", backend)

    def get(target: str) -> int:
        response = nginx.request("GET", target)
        assert response.status == 200, nginx.explain(response)
        return int(response.body.split(b"pid=")[1].split()[0])

    def burst(count: int) -> list[int]:
        """``count`` requests at once: nginx takes that many of its kept connections."""
        pids: list[int] = []
        threads = [threading.Thread(target=lambda: pids.append(get("/"))) for _ in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        return pids

    try:
        # Both workers end up holding connections nginx keeps (keepalive 4).
        slow_ones = [threading.Thread(target=get, args=("/sleep?0.5",)) for _ in range(4)]
        for thread in slow_ones:
            thread.start()
        for thread in slow_ones:
            thread.join(60)
        slow_pid: list[int] = []
        slow = threading.Thread(target=lambda: slow_pid.append(get(f"/sleep?{SLOW}")))
        slow.start()
        # Once the slow request runs, whatever nginx sends on a connection
        # parked in its worker goes to the other one (with its request, if
        # sent before the hand-off).
        wait_for(lambda: sleeping_behind(nginx), what="the slow request running")
        # Every kept connection nginx may pick now: none waits for the slow request.
        pids = [pid for _ in range(5) for pid in burst(3)]
        assert slow.is_alive(), "the fast requests waited for the slow one"
        slow.join(60)
        assert slow_pid and slow_pid[0] not in pids, (slow_pid, pids)
    finally:
        backend.stop()


def test_a_graceful_stop_answers_what_waits_in_the_channel(tmp_path: Path) -> None:
    with PoolMaster(tmp_path, ["--workers", "2", *side_status(tmp_path)]) as m:
        m.wait_ready(2)
        slow, fast, other, busy_pid, opened = waiting_in_the_channel(m)
        fast.send("/")
        # Told to stop, the first worker to be free takes it from the channel
        # and answers it, rather than leave it to close with the master.
        m.signal(signal.SIGTERM)
        assert fast.pid() == busy_pid
        assert slow.pid() == busy_pid
        assert other.pid() != busy_pid
        assert m.proc.wait(30) == 0
        for kept in opened:
            kept.close()


def _still_open(kept: Kept) -> bool:
    """True unless the server closed the connection (nothing else is expected on it)."""
    kept.sock.setblocking(False)
    try:
        return kept.sock.recv(1) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def test_read_timeout_still_closes_idle_connections_that_keep_moving(tmp_path: Path) -> None:
    """A move does not restart read_timeout: slow requests elsewhere keep nothing alive forever."""
    with PoolMaster(tmp_path, ["--workers", "2", "--read-timeout", "1"]) as m:
        m.wait_ready(2)
        idle = [Kept(m.address) for _ in range(6)]
        for kept in idle:
            kept.ask("/")
        stop = threading.Event()

        def slow_traffic() -> None:
            # Requests over the hand-off threshold in both workers, all along:
            # every one of them moves the idle connections again.
            busy = [Kept(m.address) for _ in range(2)]
            while not stop.is_set():
                for kept in busy:
                    kept.send("/sleep?0.02")
                for kept in busy:
                    kept.pid()
            for kept in busy:
                kept.close()

        traffic = threading.Thread(target=slow_traffic, daemon=True)
        traffic.start()
        try:
            # read_timeout 1 s: closed by 2 s at the latest (an adopted one
            # may wait behind the idle ones parked before it), well within 6.
            wait_for(lambda: not any(_still_open(k) for k in idle), timeout=6,
                     what="the idle connections to reach read_timeout")  # fmt: skip
        finally:
            stop.set()
            traffic.join(30)
        assert m.log().count("closing idle connection") >= len(idle), m.log()


def test_an_ondemand_pool_starts_a_worker_for_a_connection_waiting_in_the_channel(
    tmp_path: Path,
) -> None:
    """The last worker leaves (max_requests) and passes its kept connections on: none strands.

    An ondemand master starts a worker for a connection waiting on a
    listener; it watches the channel the same way. Before, these pools had
    no channel, and a leaving worker closed its kept connections.
    """
    args = ["--pm", "ondemand", "--max-children", "1", "--max-requests", "3",
            "--max-requests-jitter", "0"]  # fmt: skip
    with PoolMaster(tmp_path, args, status=False) as m:
        socket_path = Path(m.address.removeprefix("unix:"))
        wait_for(socket_path.exists, what="the pool's socket")
        kept = [Kept(m.address) for _ in range(2)]
        first = {each.ask("/") for each in kept}
        slow = Kept(m.address)
        slow.send("/sleep?0.5")  # the third request: its worker leaves after it
        assert slow.pid() in first
        wait_for(lambda: not first & set(_children_of(m.pid)),
                 what="the worker to leave on max_requests")  # fmt: skip
        # Its kept connections went into the channel; the master starts a
        # worker for them as it would for a connection on the listener.
        assert kept[1].ask("/") not in first
        assert kept[0].ask("/") not in first
        for each in [*kept, slow]:
            each.close()


def test_a_worker_draining_an_unread_body_goes_on_serving_its_kept_connections(
    tmp_path: Path,
) -> None:
    """After an answer that left its body unread the worker drains it (up to 2 s): not a wait.

    The drain waits in epoll beside the parked connections (it used to block
    the worker, which passed them on as during a slow request), so the
    worker answers them itself, while the drain goes on.
    """
    with PoolMaster(tmp_path, ["--workers", "2"]) as m:
        m.wait_ready(2)
        drained, other, pid, opened = parked_pair(m)
        params = get_params("/", method="POST")
        params["CONTENT_LENGTH"] = str(100_000_000)
        # A body far longer than what is sent, and no end of STDIN (the last
        # 8 bytes are the empty record), and this request does not keep the
        # connection: the app answers without reading the body, then its
        # worker drains what keeps trickling in before it closes.
        drained.sock.sendall(request_bytes(1, params, b"x" * 1000, keep_conn=False)[:-8])
        assert drained.pid() == pid
        stop = threading.Event()
        piece = encode_record(STDIN, 1, b"x" * 100)

        def trickle() -> None:
            with contextlib.suppress(OSError):
                while not stop.wait(0.05):
                    drained.sock.send(piece)

        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        try:
            assert other.ask("/") == pid
        finally:
            stop.set()
            thread.join(30)
        # Still draining (on a unix socket a send to a closed peer fails at once).
        drained.sock.send(piece)
        for kept in opened:
            kept.close()


# -- workers that leave: their kept connections stay with the pool -------------


def _generations(m: PoolMaster) -> set[int]:
    return {p["generation"] for p in m.status()["processes"]}


def test_kept_connections_outlive_a_reload(tmp_path: Path) -> None:
    """SIGHUP replaces every worker; the web server's kept connections stay open and served.

    A retiring worker passes its idle kept connections to the new
    generation through the channel instead of closing them: closed, each
    one races the next request nginx writes on it (a reset, a 502).
    """
    with PoolMaster(tmp_path, ["--workers", "2"]) as m:
        m.wait_ready(2)
        kept = [Kept(m.address) for _ in range(6)]
        old = {k.ask("/") for k in kept}
        for generation in (1, 2):
            m.signal(signal.SIGHUP)
            wait_for(lambda g=generation: _generations(m) == {g} and len(m.worker_pids()) == 2,
                     what=f"generation {generation} alone")  # fmt: skip
        new = m.worker_pids()
        assert not old & new
        answered = {k.ask("/") for k in kept}
        assert answered <= new, (answered, new, m.log())
        for k in kept:
            k.close()


def test_kept_connections_outlive_workers_recycled_by_max_requests(tmp_path: Path) -> None:
    """A worker leaving on max_requests passes its kept connections on; none is dropped."""
    args = ["--workers", "1", "--max-requests", "5", "--max-requests-jitter", "0"]
    with PoolMaster(tmp_path, args, status=False) as m:
        socket_path = Path(m.address.removeprefix("unix:"))
        wait_for(socket_path.exists, what="the pool's socket")
        kept = [Kept(m.address) for _ in range(3)]
        pids = [k.ask("/") for _ in range(8) for k in kept]
        # 24 requests at 5 per worker: several workers came and went, and each
        # request was answered on the connection it was sent on.
        assert len(set(pids)) >= 4, pids
        for k in kept:
            k.close()


def test_through_nginx_a_reload_storm_fails_no_request(
    tmp_path: Path, start_nginx: Callable[[str, Backend], Nginx]
) -> None:
    """fcgi.conf as shipped, steady traffic, SIGHUP after SIGHUP: every request gets its 200.

    Each reload replaces both workers, and max_requests recycles them in
    between. nginx keeps its connections to the pool (keepalive 4); a worker
    that closed one as it left would fail the request nginx had just written
    on it. nginx sends a GET again on a new connection then, but not a POST
    (not idempotent): that client got a 502.
    """
    backend = _pool_backend(tmp_path, "--workers", "2", "--max-requests", "50").start()
    nginx = start_nginx("fcgi.conf", backend)
    statuses: list[int] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            statuses.append(nginx.request("POST", "/", body=b"form=1").status)

    clients = [threading.Thread(target=traffic) for _ in range(4)]
    try:
        for client in clients:
            client.start()
        for generation in range(1, 7):
            backend.proc.send_signal(signal.SIGHUP)

            def reloaded(g: int = generation) -> bool:
                response = nginx.request("GET", "/status?json&full")
                processes = json.loads(response.body)["processes"]
                return {p["generation"] for p in processes} == {g} and len(processes) == 2

            wait_for(reloaded, what=f"generation {generation} alone")
    finally:
        stop.set()
        for client in clients:
            client.join(60)
        backend.stop()
    failed = [status for status in statuses if status != 200]
    assert len(statuses) > 200 and not failed, (len(statuses), failed[:10], nginx.error_log())


def test_workers_that_live_one_request_each_serve_every_kept_connection(tmp_path: Path) -> None:
    """max_requests 1: kept connections ride the channel from worker to worker; none starves.

    A worker that took the channel before its listeners left the connections
    waiting in the listen queue unserved for as long as passed ones kept
    coming (8 connections: 1,190 answers on one, 1 on six others).
    """
    args = ["--workers", "1", "--max-requests", "1", "--max-requests-jitter", "0"]
    with PoolMaster(tmp_path, args, status=False) as m:
        m.wait_log(f"master {m.pid} ready")
        stop = threading.Event()
        answers = [0] * 8

        def client(i: int) -> None:
            kept = Kept(m.address)
            while not stop.is_set():
                kept.ask("/")
                answers[i] += 1
            kept.close()

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(8)]
        for thread in threads:
            thread.start()
        try:
            # A deadline against a hang, not a rate: every connection gets
            # a second answer while the others keep sending.
            wait_for(lambda: min(answers) >= 2, timeout=60, what=f"fair turns {answers}")
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)


SLOW_IMPORT_APP = """
import os, time
time.sleep(1.0)  # workers take a while to start: a reload stays under way

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"pid={os.getpid()}\\n".encode()]
"""


def test_a_stop_during_a_reload_starts_no_more_workers(tmp_path: Path) -> None:
    """SIGHUP, SIGHUP, SIGTERM: the master exits at once, not after process_control_timeout.

    The reload asked second used to start a generation after the stop (no
    one told it to stop, and once the channel refused more it spun on its
    end of stream) until process_control_timeout killed it.
    """
    args = ["--workers", "3", "--process-control-timeout", "60"]
    with PoolMaster(tmp_path, args) as m:
        m.wait_ready(3)
        kept = [Kept(m.address) for _ in range(4)]
        for k in kept:
            k.ask("/")
        (tmp_path / "poolapp.py").write_text(textwrap.dedent(SLOW_IMPORT_APP))
        m.signal(signal.SIGHUP)
        wait_for(lambda: m.log().count("(generation 1)") >= 3, what="the new generation forked")
        m.signal(signal.SIGHUP)
        m.signal(signal.SIGTERM)
        assert m.proc.wait(30) == 0, m.log()
        assert "(generation 2)" not in m.log(), m.log()
        for k in kept:
            k.close()


def test_a_reexec_reload_passes_kept_connections_to_the_new_workers(tmp_path: Path) -> None:
    """--preload-app reloads by re-executing the master; the pool keeps its channel across.

    The old workers pass their idle kept connections on as they finish, to
    the new master's workers, which answer with the new code. Before, the
    new master made a channel of its own: the old one had no reader, and a
    connection passed into it waited for the slowest old request, then got
    the old code's answer (later: was closed, a POST's 502 through nginx).
    """
    args = ["--workers", "2", "--preload-app", "--read-timeout", "60"]
    with PoolMaster(tmp_path, args) as m:
        m.wait_ready(2)
        old = set(_children_of(m.pid))
        kept = [Kept(m.address) for _ in range(6)]
        for k in kept:
            k.ask("/")
        slow = Kept(m.address)
        slow.send(f"/sleep?{SLOW * 2}")
        wait_for(lambda: sleeping_workers(m) == 1, what="the slow request running")
        write_app(tmp_path, "2")
        m.signal(signal.SIGUSR2)
        wait_for(lambda: len(old & set(_children_of(m.pid))) == 1, what="the idle old worker gone")
        for k in kept:
            k.send("/")
        for k in kept:
            reply = k.reader.reply(1)
            assert b"version=2" in reply.body, reply
        # All of that while the old worker's slow request still ran.
        assert not slow.answered()
        for k in [*kept, slow]:
            k.close()


def sleeping_workers(m: PoolMaster) -> int:
    processes = m.status()["processes"]
    return sum(p["state"] == "Running" and p["request uri"] == "/sleep" for p in processes)


def test_an_idle_ondemand_worker_that_is_stopped_closes_its_kept_connections(
    tmp_path: Path,
) -> None:
    """process_idle_timeout: the pool goes down to no worker, kept connections included.

    Passed on, they would start a worker that is stopped idle in its turn,
    and so on: a worker stopped by the master in an ondemand pool closes
    them, as before the channel (one leaving on max_requests passes them on).
    """
    args = ["--pm", "ondemand", "--max-children", "2", "--process-idle-timeout", "1s"]
    with PoolMaster(tmp_path, args, status=False) as m:
        socket_path = Path(m.address.removeprefix("unix:"))
        wait_for(socket_path.exists, what="the pool's socket")
        kept = Kept(m.address)
        kept.ask("/")
        wait_for(lambda: not _children_of(m.pid), what="the idle worker stopped")
        wait_for(lambda: not _still_open(kept), what="the kept connection closed")
        assert m.log().count("spawned child") == 1, m.log()
        kept.close()


def test_an_ondemand_pool_at_max_children_does_not_count_passed_connections_as_waiting(
    tmp_path: Path,
) -> None:
    """What a busy worker passes on holds no request yet: no "max_children" warning for it.

    Its worker takes it back once its request ends; before, the master took
    the channel's readiness for a connection waiting, and logged (and
    counted) max_children reached on every slow request.
    """
    args = ["--pm", "ondemand", "--max-children", "1"]
    with PoolMaster(tmp_path, args, status=False) as m:
        socket_path = Path(m.address.removeprefix("unix:"))
        wait_for(socket_path.exists, what="the pool's socket")
        idle = [Kept(m.address) for _ in range(3)]
        pid = idle[0].ask("/")
        for kept in idle[1:]:
            assert kept.ask("/") == pid
        start = len(m.log())
        slow = Kept(m.address)
        slow.send("/sleep?0.5")
        wait_for(lambda: handoffs_since(m, start) >= 1, what="the hand-off")
        assert slow.pid() == pid
        # The passed connections come back to the one worker, and nothing was "full".
        assert all(kept.ask("/") == pid for kept in idle)
        assert "max_children" not in m.log()[start:], m.log()[start:]
        for kept in [*idle, slow]:
            kept.close()


def test_an_ondemand_pool_passes_kept_connections_on_at_a_reload(tmp_path: Path) -> None:
    """SIGHUP in an ondemand pool: as in the others, kept connections reach the new workers.

    Only a worker stopped for being idle (the master's SIGQUIT) closes them.
    """
    args = ["--pm", "ondemand", "--max-children", "2", "--process-idle-timeout", "60s"]
    with PoolMaster(tmp_path, args, status=False) as m:
        socket_path = Path(m.address.removeprefix("unix:"))
        wait_for(socket_path.exists, what="the pool's socket")
        kept = [Kept(m.address) for _ in range(4)]
        old = {k.ask("/") for k in kept}
        write_app(tmp_path, "2")
        m.signal(signal.SIGHUP)
        m.wait_log("generation 1 serving")
        wait_for(lambda: not old & set(_children_of(m.pid)), what="the old workers gone")
        for k in kept:
            k.send("/")
        for k in kept:
            reply = k.reader.reply(1)
            assert b"version=2" in reply.body, reply
        for k in kept:
            k.close()
