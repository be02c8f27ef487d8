"""Listening sockets as fcgi.listeners opens, inherits and removes them.

Real sockets and files; what the servers do with them end to end (a stop
that removes the socket file, a reload that keeps it, systemd's sockets, fd 0
from mod_fcgid) is driven in test_server.py, test_operator_single.py and
test_operator_master.py.
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from fcgi.errors import ConfigError
from fcgi.listeners import Listeners, address_of, open_single
from fcgi.sockets import parse_bind


def test_a_bound_unix_socket_has_its_mode_and_its_file_is_ours(tmp_path: Path) -> None:
    path = tmp_path / "app.sock"
    listeners = Listeners()
    sock = listeners.bind(f"unix:{path}", mode=0o600, backlog=8)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert listeners.sockets == [sock] and listeners.by_spec == {f"unix:{path}": sock}
    assert listeners.owned_paths == [str(path)]
    # A graceful stop removes the file at once and forgets it...
    listeners.remove_files()
    assert not path.exists() and listeners.owned_paths == []
    # ...so the exit cannot remove a successor's socket at the same path.
    successor = Listeners()
    successor.bind(str(path))
    listeners.close()
    assert path.exists() and sock.fileno() == -1
    successor.close()
    assert not path.exists()


def test_an_inherited_socket_is_claimed_by_its_spec_and_its_file_stays(tmp_path: Path) -> None:
    path = tmp_path / "given.sock"
    given = socket.socket(socket.AF_UNIX)
    given.bind(str(path))
    given.listen(4)
    # Handed over under one spelling, asked for under another: the same address.
    listeners = Listeners.inherit({str(path): given}, owned_paths=[])
    assert listeners.claim(f"unix:{path}") is given
    assert listeners.claim(f"unix:{path}") is None  # claimed once
    listeners.close()
    assert path.exists() and given.fileno() == -1


def test_a_previous_images_owned_paths_are_removed_by_the_last_image(tmp_path: Path) -> None:
    path = tmp_path / "kept.sock"
    first = Listeners()
    sock = first.bind(f"unix:{path}")
    # What a re-exec hands over: the sockets by spec, and the paths to remove.
    second = Listeners.inherit(dict(first.by_spec), first.owned_paths)
    assert second.claim(f"unix:{path}") is sock
    second.close()
    assert not path.exists()


def test_inherited_sockets_no_spec_claims_are_closed_and_named(tmp_path: Path) -> None:
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(4)
    port = tcp.getsockname()[1]
    listeners = Listeners.inherit({f"127.0.0.1:{port}": tcp}, owned_paths=[])
    assert listeners.close_unclaimed() == [f"127.0.0.1:{port}"]
    assert tcp.fileno() == -1 and listeners.unclaimed == {}


@pytest.mark.parametrize("spec", ["127.0.0.1:0", "[::1]:0"])
def test_a_sockets_address_is_written_as_its_spec_is(spec: str) -> None:
    try:
        listeners = open_single([spec])
    except ConfigError as exc:
        pytest.skip(f"no {spec} here: {exc}")
    (sock,) = listeners.sockets
    try:
        host, port = sock.getsockname()[:2]
        address = address_of(sock)
        assert address == str(parse_bind(spec.replace(":0", f":{port}")))
        assert host in address and listeners.owned_paths == []
    finally:
        listeners.close()


def test_a_failed_bind_closes_what_was_opened_and_removes_its_files(tmp_path: Path) -> None:
    first = tmp_path / "first.sock"
    (tmp_path / "taken").write_text("not a socket")
    with pytest.raises(ConfigError, match="a file that is not a socket is there"):
        open_single([f"unix:{first}", f"unix:{tmp_path / 'taken'}"])
    assert not first.exists()


def test_without_an_address_nor_inherited_sockets_there_is_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LISTEN_FDS", raising=False)
    monkeypatch.delenv("LISTEN_PID", raising=False)
    read, write = os.pipe()  # fd 0 a pipe, as for a CGI request body
    saved = os.dup(0)
    os.dup2(read, 0)
    try:
        assert open_single([]).sockets == []
    finally:
        os.dup2(saved, 0)
        for fd in (saved, read, write):
            os.close(fd)


def test_a_reload_that_changes_a_listeners_protocol_says_it_is_not_graceful(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The old workers go on answering the socket in the old protocol until replaced."""
    path = tmp_path / "x.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.listen()
    same = socket.socket(socket.AF_UNIX)
    same.bind(str(tmp_path / "y.sock"))
    same.listen()
    listeners = Listeners.inherit({f"unix:{path}": sock, f"uwsgi:unix:{tmp_path}/y.sock": same}, [])
    with caplog.at_level("WARNING", logger="fcgi.sockets"):
        assert listeners.claim(f"uwsgi:unix:{path}") is sock
        assert listeners.claim(f"uwsgi:unix:{tmp_path}/y.sock") is same
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert "speaks uwsgi now and spoke fastcgi before this reload" in warnings[0]
    assert listeners.protocols[sock.fileno()] == "uwsgi"
    sock.close()
    same.close()
