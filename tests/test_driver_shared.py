"""The pieces the trio and asyncio workers share (fcgi.multiplex, fcgi.asgi, fcgi.spool).

Both workers now run one ASGIResponder, one request bookkeeping and one
SpooledBody, each with its own waits. Driven as an operator would (``fcgi
serve`` and a FastCGI client): the same app gives the web server the same
bytes under either worker, and the asyncio worker serves (a spilled body
included) without trio ever being loaded.
"""

from __future__ import annotations

import hashlib
import os
import textwrap
from contextlib import AbstractContextManager
from pathlib import Path

from rawfcgi import Reply, Server, get_params, roundtrip, running_server

#: Larger than the default spool_threshold (1 MiB): the body goes through the
#: temporary file, where a reader has to wait for the writer.
BIG_BODY = os.urandom(3 * 1024 * 1024 // 2)

APP = """
    import hashlib
    import sys


    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        path = scope["path"]
        if path == "/boom":
            raise RuntimeError("kaboom")
        if path == "/silent":
            return  # no http.response.start at all
        digest = hashlib.sha256()
        while True:
            message = await receive()
            digest.update(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        if path == "/stream":
            for piece in (b"one ", b"two ", b""):
                await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body",
                    "body": f"{digest.hexdigest()} trio={int('trio' in sys.modules)}".encode()})
"""


def serve(tmp_path: Path, worker: str) -> AbstractContextManager[Server]:
    (tmp_path / "shared_app.py").write_text(textwrap.dedent(APP))
    return running_server("shared_app:app", "--worker", worker, "--chdir", str(tmp_path))


def post(path: str, body: bytes) -> dict[str, str]:
    params = get_params(path, method="POST")
    params["CONTENT_LENGTH"] = str(len(body))
    return params


def test_the_asyncio_worker_serves_a_spilled_body_without_loading_trio(tmp_path: Path) -> None:
    with serve(tmp_path, "asyncio") as server:
        reply = roundtrip(server.address, post("/", BIG_BODY), BIG_BODY)
    assert reply.status == 200
    assert reply.body == f"{hashlib.sha256(BIG_BODY).hexdigest()} trio=0".encode()


CASES = [
    ("GET", "/", b""),
    ("POST", "/", b"x" * 70_000),
    ("GET", "/stream", b""),
    ("HEAD", "/", b""),
    ("GET", "/boom", b""),
    ("GET", "/silent", b""),
]


def answers(tmp_path: Path, worker: str) -> list[Reply]:
    replies = []
    with serve(tmp_path, worker) as server:
        for method, path, body in CASES:
            params = get_params(path, method=method)
            if body:
                params["CONTENT_LENGTH"] = str(len(body))
            replies.append(roundtrip(server.address, params, body))
    return replies


def test_an_asgi_app_gives_the_web_server_the_same_bytes_under_both_workers(
    tmp_path: Path,
) -> None:
    """One ASGIResponder: the same stdout, stderr and app status from trio and asyncio."""
    trio_replies = answers(tmp_path, "trio")
    asyncio_replies = answers(tmp_path, "asyncio")
    for (method, path, _), under_trio, under_asyncio in zip(
        CASES, trio_replies, asyncio_replies, strict=True
    ):
        what = f"{method} {path}"
        # The one difference the app itself makes: whether trio is loaded.
        assert under_trio.stdout.replace(b"trio=1", b"trio=0") == under_asyncio.stdout, what
        assert under_trio.stderr == under_asyncio.stderr, what
        assert under_trio.app_status == under_asyncio.app_status, what
    ok, posted, streamed, head, boom, silent = asyncio_replies
    assert ok.status == posted.status == streamed.status == head.status == 200
    assert posted.body.startswith(hashlib.sha256(b"x" * 70_000).hexdigest().encode())
    assert streamed.body.startswith(b"one two ")
    # Only an answer sent whole at once gets the Content-Length fcgi adds.
    assert b"Content-Length:" in ok.stdout.split(b"\r\n\r\n")[0]
    assert b"Content-Length:" not in streamed.stdout.split(b"\r\n\r\n")[0]
    assert b"Content-Length:" not in head.stdout.split(b"\r\n\r\n")[0]
    assert boom.status == silent.status == 500
    assert boom.app_status == silent.app_status == 1
