"""Serving a simulator on a loopback port: in a background thread (tests, demo) or in the
foreground (`knrun sim serve`)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn


def _bind(host: str, port: int) -> socket.socket:
    # IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on sockets that say TCP, and
    # without it a reply's body (a second write after its headers) waits for the client's
    # delayed ACK, about 40 ms, on every request after the first on a connection.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _server(app: Any) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_keep_alive=30,
        timeout_graceful_shutdown=1,  # a simulator has nothing worth waiting for at exit
    )
    return uvicorn.Server(config)


@contextmanager
def serve_in_thread(app: Any, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve `app` until the block ends; yields its origin, e.g. http://127.0.0.1:51234."""
    sock = _bind(host, port)
    server = _server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("simulator server did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to `host:port` (0: any free port), for `serve_forever`: binding first
    lets a caller report a taken port before it announces anything."""
    return _bind(host, port)


def serve_forever(app: Any, host: str, port: int, *, sock: socket.socket | None = None) -> None:
    """Serve `app` in the foreground until Ctrl-C (on `sock` when given)."""
    sock = sock or _bind(host, port)
    _server(app).run(sockets=[sock])
