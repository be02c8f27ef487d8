"""Process-manager parts that need no master: config, scaling, scoreboard, kernel queue."""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fcgi.errors import ConfigError
from fcgi.listen_queue import listen_queue
from fcgi.pool import (
    add_pool_arguments,
    check_config_command,
    config_from_args,
    load_config,
    worker_hooks,
)
from fcgi.pool.access_log import AccessLog
from fcgi.pool.config import PoolConfig
from fcgi.pool.scaling import Census, dynamic_decision
from fcgi.pool.scoreboard import HEADER_SIZE, Header, Scoreboard, Slot, SlotState
from fcgi.pool.status import collect, render
from fcgi.systemd import notify

GOOD = """
[global]
log_level = "debug"
process_control_timeout = "10s"

[pool.www]
app = "poolapp:app"
listen = "unix:/tmp/www.sock"
pm = "dynamic"
max_children = 10
min_spare_servers = 2
max_spare_servers = 4
max_memory = "256M"
user = "root"

[pool.api]
app = "api:app"
listen = ["127.0.0.1:9001", "unix:/tmp/api.sock"]
pm = "static"
max_children = 3
user = "root"
env = { DJANGO_SETTINGS = "prod" }
"""


def test_config_file_with_two_pools(tmp_path: Path) -> None:
    path = tmp_path / "fcgi.toml"
    path.write_text(GOOD)
    config = load_config(str(path))
    www, api = config.pools
    assert config.log_level == "debug" and config.process_control_timeout == 10
    assert (www.name, www.effective_start_servers, www.max_memory) == ("www", 3, 256 << 20)
    assert api.listen == ("127.0.0.1:9001", "unix:/tmp/api.sock")
    assert api.env == {"DJANGO_SETTINGS": "prod"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_chlidren = 3", "max_chlidren: unknown setting"),
        ("max_children = 'many'", "max_children: expected an integer"),
        ("pm = 'sometimes'", "pm: expected one of static, dynamic, ondemand"),
        ("max_spare_servers = 20", "max_spare_servers"),
        ("status_path = 'status'", "status_path: must start with '/'"),
        ("max_memory = 'lots'", "max_memory: expected a size"),
    ],
)
def test_bad_settings_name_the_key_and_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        f'[pool.www]\napp = "a:app"\nlisten = "unix:/tmp/x.sock"\nuser = "root"\n{text}\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_check_config_prints_effective_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "fcgi.toml"
    # check-config imports each app as its workers would (#11): GOOD names
    # modules that do not exist, so it is valid only with apps that do.
    path.write_text(GOOD)
    assert check_config_command(str(path)) == 3
    err = capsys.readouterr().err
    assert "[pool.www] app:" in err and "[pool.api] app:" in err
    path.write_text(
        GOOD.replace('"poolapp:app"', '"fcgi.demo:app"').replace('"api:app"', '"fcgi.demo:app"')
    )
    assert check_config_command(str(path)) == 0
    out = capsys.readouterr().out
    assert "[pool.www]" in out and "start_servers = 3" in out and 'listen_mode = "0660"' in out
    path.write_text("[pool.www]\nbogus = 1\n")
    assert check_config_command(str(path)) == 2


def test_command_line_flags_and_workers_shorthand() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("app")
    parser.add_argument("--bind", action="append")
    add_pool_arguments(parser)
    args = parser.parse_args(
        ["m:app", "--bind", "unix:/tmp/s.sock", "--workers", "4", "--max-requests", "100",
         "--user", "root", "--catch-workers-output", "--env", "A=1"]
    )  # fmt: skip
    config = config_from_args(args)
    (pool,) = config.pools
    assert (pool.pm, pool.max_children, pool.max_requests) == ("static", 4, 100)
    assert pool.listen == ("unix:/tmp/s.sock",) and pool.catch_workers_output
    assert pool.env == {"A": "1"}


def test_dynamic_scaling_follows_php_fpm() -> None:
    cfg = PoolConfig(pm="dynamic", max_children=10, min_spare_servers=4, max_spare_servers=6)
    d = dynamic_decision(Census(idle=0, busy=2), cfg, rate=1)
    assert (d.spawn, d.next_rate) == (1, 2)
    d = dynamic_decision(Census(idle=0, busy=2), cfg, rate=2)
    assert (d.spawn, d.next_rate) == (2, 4)
    d = dynamic_decision(Census(idle=0, busy=10), cfg, rate=4)
    assert d.full and d.spawn == 0
    d = dynamic_decision(Census(idle=8, busy=0), cfg, rate=4)
    assert (d.retire_idle, d.next_rate) == (1, 1)


def test_dynamic_scaling_counts_trio_workers_with_room_as_spare() -> None:
    cfg = PoolConfig(pm="dynamic", max_children=10, min_spare_servers=2, max_spare_servers=4)
    # Two busy trio workers that can still take requests: nothing to spawn.
    assert dynamic_decision(Census(busy=2, partly_busy=2), cfg, rate=1).spawn == 0
    # Once they are full (partly_busy 0), the pool grows as a sync pool would.
    assert dynamic_decision(Census(busy=2), cfg, rate=1).spawn == 1


def test_scoreboard_is_shared_with_a_forked_child() -> None:
    board = Scoreboard(4)
    pid = os.fork()
    if pid == 0:
        board.write_slot(2, Slot(state=SlotState.BUSY, pid=os.getpid(), requests=7,
                                 method="POST", uri="/x?y=" + "z" * 1000))  # fmt: skip
        os._exit(0)
    os.waitpid(pid, 0)
    slot = board.read_slot(2)
    assert (slot.state, slot.pid, slot.requests, slot.method) == (SlotState.BUSY, pid, 7, "POST")
    assert slot.uri.startswith("/x?y=zzz") and len(slot.uri) == 480  # truncated, fixed size
    assert [i for i, _ in board.slots()] == [2]
    header = Header(start_time=1.0, slow_requests=3)
    board.write_header(header)
    assert board.read_header() == header


def test_slot_writer_updates_only_its_groups_and_keeps_the_rest() -> None:
    board = Scoreboard(2)
    board.write_slot(1, Slot(state=SlotState.IDLE, pid=42, generation=3, started=5.0))
    writer = board.writer(1)
    writer.request_started(7, SlotState.BUSY, 1, 9, 10.0, 11.0, 12, (b"POST", b"/up?x=1"))
    slot = board.read_slot(1)
    assert (slot.pid, slot.generation, slot.started) == (42, 3, 5.0)
    assert (slot.accepted, slot.state, slot.active, slot.request_seq) == (7, SlotState.BUSY, 1, 9)
    assert (slot.request_start, slot.request_start_mono, slot.content_length) == (10.0, 11.0, 12)
    assert (slot.method, slot.uri, slot.requests) == ("POST", "/up?x=1", 0)
    writer.request_finished(1, 8, 0.5, 25.0, 4096, 201, SlotState.IDLE, 0)
    slot = board.read_slot(1)
    assert (slot.requests, slot.accepted, slot.last_duration, slot.last_cpu) == (1, 8, 0.5, 25.0)
    assert (slot.last_memory, slot.last_status, slot.state, slot.active) == (4096, 201, 2, 0)
    # The start group is untouched by the end write: the status page still
    # shows the last request's method and URI, as PHP-FPM does.
    assert (slot.method, slot.uri, slot.request_seq, slot.pid) == ("POST", "/up?x=1", 9, 42)
    assert board.free_index() == 0
    # A start without a route (the one shown already) keeps the route's bytes.
    writer.request_started(9, SlotState.BUSY, 1, 10, 20.0, 21.0, 0, None)
    slot = board.read_slot(1)
    assert (slot.method, slot.uri, slot.request_seq, slot.accepted) == ("POST", "/up?x=1", 10, 9)
    # The sequence counter is even (no write in progress) after each write.
    writer.sync()
    assert board.read_slot(1).state == SlotState.BUSY


def test_slot_writer_counter_stays_even_and_wraps_around() -> None:
    """A worker's counter (and the header's) is even between writes, and wraps past 2**32 - 1."""
    board = Scoreboard(1)
    board.write_slot(0, Slot(state=SlotState.IDLE, pid=42))
    seq_of = lambda: struct.unpack_from("=I", board._map, HEADER_SIZE)[0]  # noqa: E731
    writer = board.writer(0)
    before = seq_of()
    writer.request_started(1, SlotState.BUSY, 1, 1, 1.0, 1.0, 0, (b"GET", b"/"))
    writer.request_finished(1, 1, 0.1, 0.0, 0, 200, SlotState.IDLE, 0)
    assert seq_of() == before + 4 and seq_of() % 2 == 0
    # Nearly four billion writes later (a long-lived worker), the counter wraps to 0.
    board.write_slot(0, Slot(state=SlotState.IDLE, pid=42))
    struct.pack_into("=I", board._map, HEADER_SIZE, 0xFFFFFFFE)
    writer.sync()
    writer.request_started(2, SlotState.BUSY, 1, 2, 2.0, 2.0, 0, None)
    assert seq_of() == 0
    assert board.read_slot(0).request_seq == 2
    writer.request_finished(2, 2, 0.1, 0.0, 0, 200, SlotState.IDLE, 0)
    assert seq_of() == 2 and board.read_slot(0).requests == 2
    # The master's header counter wraps the same way.
    struct.pack_into("=I", board._map, 8, 0xFFFFFFFE)
    board.write_header(Header(start_time=3.0))
    assert struct.unpack_from("=I", board._map, 8)[0] == 0
    assert board.read_header().start_time == 3.0
    # The view the writer writes through does not keep the mapping from closing.
    board.close()


def _count_cpu_readings(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = worker_hooks.resource.getrusage

    def counting(who: int) -> object:
        calls.append(who)
        return real(who)

    monkeypatch.setattr(worker_hooks.resource, "getrusage", counting)
    return calls


def test_cpu_is_read_at_most_once_a_millisecond_without_an_access_log(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    board = Scoreboard(1)
    hooks = worker_hooks.ScoreboardHooks(PoolConfig(app="x:app"), board, 0, 1, [])
    calls = _count_cpu_readings(monkeypatch)
    params = {"REQUEST_METHOD": "GET", "REQUEST_URI": "/fast"}
    time.sleep(2 * worker_hooks.CPU_READ_INTERVAL)
    hooks.request_finished(hooks.request_started(params), 200)
    assert len(calls) == 1  # a request after an idle interval is always read
    for _ in range(200):
        hooks.request_finished(hooks.request_started(params), 200)
    # 200 requests of a few microseconds each span a few milliseconds at most.
    assert len(calls) < 100
    # A request longer than the interval is always read, and its CPU is its own.
    token = hooks.request_started({"REQUEST_METHOD": "GET", "REQUEST_URI": "/slow"})
    before = len(calls)
    spin_until = time.process_time() + 0.02
    while time.process_time() < spin_until:
        pass
    hooks.request_finished(token, 200)
    assert len(calls) == before + 1
    slot = board.read_slot(0)
    assert slot.requests == 202 and slot.uri == "/slow"
    assert slot.last_cpu > 0 and slot.last_memory > 0


def test_the_slot_shows_the_route_of_the_oldest_request_running() -> None:
    # The route's bytes are packed only when the route shown changes: each
    # change (a new route, a route again after another, the oldest of two
    # finishing first) must still reach the slot, titles included.
    board = Scoreboard(1)
    hooks = worker_hooks.ScoreboardHooks(PoolConfig(app="x:app"), board, 0, 1, [])
    titles: list[str] = []
    hooks._set_title = titles.append  # type: ignore[method-assign]

    def shown() -> tuple[str, str, int]:
        slot = board.read_slot(0)
        return slot.method, slot.uri, slot.content_length

    a = {"REQUEST_METHOD": "GET", "REQUEST_URI": "/a"}
    b = {"REQUEST_METHOD": "POST", "REQUEST_URI": "/b", "CONTENT_LENGTH": "5"}
    hooks.request_finished(hooks.request_started(a), 200)
    assert shown() == ("GET", "/a", 0)
    hooks.request_finished(hooks.request_started(b), 200)
    assert shown() == ("POST", "/b", 5)
    token_a = hooks.request_started(a)
    assert shown() == ("GET", "/a", 0)
    token_b = hooks.request_started(b)
    assert shown() == ("GET", "/a", 0)  # the oldest running stays shown
    hooks.request_finished(token_a, 200)
    assert shown() == ("POST", "/b", 5)  # now the other one is the oldest
    hooks.request_finished(token_b, 200)
    token = hooks.request_started({"REQUEST_METHOD": "GET", "REQUEST_URI": "/b"})
    assert shown() == ("GET", "/b", 0)  # same URI, another method: a route of its own
    hooks.request_finished(token, 200)
    assert shown() == ("GET", "/b", 0)  # an idle worker shows its last request
    assert [t.split()[-1] for t in titles if "idle" not in t] == ["/a", "/b", "/a", "/b", "/b"]
    bogus = {"REQUEST_METHOD": "GET", "REQUEST_URI": "/b", "CONTENT_LENGTH": "-" + "9" * 20}
    hooks.request_finished(hooks.request_started(bogus), 200)
    assert shown() == ("GET", "/b", 0)


def test_cpu_is_read_for_every_request_with_an_access_log(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    log = AccessLog(str(tmp_path / "access.log"), "%C %m %r")
    hooks = worker_hooks.ScoreboardHooks(
        PoolConfig(app="x:app"), Scoreboard(1), 0, 1, [], access_log=log
    )
    calls = _count_cpu_readings(monkeypatch)
    for _ in range(50):
        hooks.request_finished(hooks.request_started({"REQUEST_METHOD": "GET"}), 200)
    assert len(calls) == 50


def test_listen_queue_of_unix_and_tcp_sockets_from_the_kernel(tmp_path: Path) -> None:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "q.sock"))
    server.listen(7)
    clients = [socket.socket(socket.AF_UNIX) for _ in range(3)]
    for c in clients:
        c.connect(str(tmp_path / "q.sock"))
    q = listen_queue(server)
    assert (q.queued, q.backlog) == (3, 7)
    tcp = socket.create_server(("127.0.0.1", 0), backlog=9)
    conns = [socket.create_connection(tcp.getsockname()) for _ in range(2)]
    q = listen_queue(tcp)
    assert (q.queued, q.backlog) == (2, 9)
    for s in [server, tcp, *clients, *conns]:
        s.close()


def test_status_renderings_agree() -> None:
    cfg = PoolConfig(name="www", pm="static", max_children=2)
    slots = [Slot(state=SlotState.IDLE, pid=11, requests=3), Slot(state=SlotState.BUSY, pid=12)]
    st = collect(cfg, Header(start_time=100.0, accepted_base=5), slots, None, now=160.0)
    doc = json.loads(render(st, "json&full").body)
    assert doc["idle processes"] == 1 and doc["active processes"] == 1
    assert doc["accepted conn"] == 5 and doc["start since"] == 60
    assert [p["pid"] for p in doc["processes"]] == [11, 12]
    om = render(st, "openmetrics").body.decode()
    assert 'fcgi_idle_processes{pool="www"} 1' in om and om.endswith("# EOF\n")
    assert "idle processes:            1" in render(st, "").body.decode()


def test_sd_notify_sends_one_datagram(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "notify")
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert notify("READY=1\nSTATUS=ok")
    assert sink.recv(100) == b"READY=1\nSTATUS=ok"
    sink.close()


def test_socket_activation_with_listen_fds(tmp_path: Path) -> None:
    """A master given LISTEN_FDS/LISTEN_PID serves the passed socket and says READY."""
    sock_path = str(tmp_path / "act.sock")
    (tmp_path / "poolapp.py").write_text(
        "def app(e, s):\n    s('200 OK', [])\n    return [b'activated']\n"
    )
    notify_path = str(tmp_path / "notify")
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(notify_path)
    sink.settimeout(30)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(sock_path)
    listener.listen(16)
    launcher = (
        "import os, sys\n"
        "os.dup2(int(sys.argv[1]), 3)\n"
        "os.environ['LISTEN_FDS'] = '1'\n"
        "os.environ['LISTEN_PID'] = str(os.getpid())\n"
        "from fcgi.cli import main\n"
        "raise SystemExit(main(['serve', *sys.argv[2:]]))\n"
    )
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=f"{root}:{tmp_path}", NOTIFY_SOCKET=notify_path)
    proc = subprocess.Popen(
        [sys.executable, "-c", launcher, str(listener.fileno()), "poolapp:app",
         "--bind", f"unix:{sock_path}", "--workers", "1", "--user", "root"],
        pass_fds=[listener.fileno()], cwd=tmp_path, env=env,
    )  # fmt: skip
    try:
        assert sink.recv(200).startswith(b"READY=1")
        from fcgi.client import FastCGIClient, build_params

        with FastCGIClient(f"unix:{sock_path}") as client:
            assert client.request(build_params("/")).body == b"activated"
        proc.terminate()
        assert proc.wait(30) == 0
        assert sink.recv(200) == b"STOPPING=1"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        listener.close()
        sink.close()
