"""HTTP/1.1 connection lanes against HTTP/2 multiplexing, at hundreds to thousands in flight: the
client's CPU per request, its memory and its connections.

A hypercorn server in a child process answers a chat-sized POST (2 KB up, 3 KB back) after a
fixed delay, so `--in-flight` requests are always outstanding. The client (this process) runs
each way of sending, and only its own CPU is measured:

- `lanes`: knrun's way, one single-connection httpx client per worker (HTTP/1.1);
- `pool`: one httpx client with a pool as big as the concurrency (HTTP/1.1), for comparison
  (httpcore scans the whole pool on each request: slow past a hundred, so `--kinds` it out);
- `http2`: one httpx client speaking HTTP/2 with prior knowledge (h2c), streams multiplexed.

Needs `pip install 'httpx[http2]' hypercorn` (neither is a knrun dependency).

    python bench/http_versions.py [--in-flight 100 1000 3000] [--delay 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import resource
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

REPLY = json.dumps({"choices": [{"message": {"content": "x" * 3000}}]}).encode()
BODY = {"model": "grok-4.3", "messages": [{"role": "user", "content": "y" * 2000}]}


def serve(port: int, delay_s: float) -> None:
    """The child process: an ASGI app behind hypercorn, HTTP/1.1 and h2c on one port."""
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await asyncio.sleep(delay_s)
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": REPLY})

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.backlog = 4096
    config.keep_alive_timeout = 600
    config.keep_alive_max_requests = 10**9  # hypercorn closes a connection after 1,000
    config.h2_max_concurrent_streams = 1000
    config.loglevel = "ERROR"
    asyncio.run(hypercorn_serve(app, config))  # type: ignore[arg-type]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def open_sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed since it was listed
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


Send = Callable[[int], Awaitable[None]]


async def drive(send: Send, in_flight: int, total: int) -> tuple[float, float, int]:
    """`total` requests, `in_flight` at a time; returns (CPU s, wall s, peak sockets)."""
    done = 0
    peak_sockets = 0

    async def worker(index: int) -> None:
        nonlocal done, peak_sockets
        while done < total:
            done += 1
            await send(index)
            if index == 0:
                peak_sockets = max(peak_sockets, open_sockets())

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(in_flight)))
    return time.process_time() - cpu, time.perf_counter() - wall, peak_sockets


async def measure(kind: str, url: str, in_flight: int, total: int) -> dict[str, float]:
    timeout = httpx.Timeout(120.0)
    if kind == "lanes":
        # As knrun's XaiClient: one TLS context for every lane (each would load the CA bundle).
        one = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        tls = httpx.create_ssl_context()
        clients = [
            httpx.AsyncClient(limits=one, timeout=timeout, verify=tls) for _ in range(in_flight)
        ]
    elif kind == "pool":
        limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
        clients = [httpx.AsyncClient(limits=limits, timeout=timeout)]
    else:
        # Streams per connection are the server's to grant (1,000 here; xAI's is not
        # published); the pool opens another connection when one is full.
        limits = httpx.Limits(max_connections=max(1, in_flight // 100))
        clients = [httpx.AsyncClient(http1=False, http2=True, limits=limits, timeout=timeout)]

    async def send(index: int) -> None:
        response = await clients[index % len(clients)].post(url, json=BODY)
        response.raise_for_status()
        response.read()

    await drive(send, min(in_flight, 50), min(total, 200))  # warm: connections up
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cpu, wall, sockets = await drive(send, in_flight, total)
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for client in clients:
        await client.aclose()
    return {
        "cpu_ms": cpu / total * 1000,
        "rps": total / wall,
        "sockets": sockets,
        "rss_mb": rss_after / 1024,
        "rss_growth_mb": (rss_after - rss_before) / 1024,
    }


def run_kind(kind: str, url: str, in_flight: int, total: int) -> dict[str, float]:
    """Each measurement in a fresh process, so memory figures do not carry over."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_run_kind, (kind, url, in_flight, total))


def _run_kind(kind: str, url: str, in_flight: int, total: int) -> dict[str, float]:
    return asyncio.run(measure(kind, url, in_flight, total))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-flight", type=int, nargs="+", default=[100, 1000, 3000])
    parser.add_argument("--delay", type=float, default=0.5, help="server seconds per reply")
    parser.add_argument("--kinds", nargs="+", default=["lanes", "pool", "http2"])
    args = parser.parse_args()
    port = free_port()
    server = multiprocessing.get_context("spawn").Process(
        target=serve, args=(port, args.delay), daemon=True
    )
    server.start()
    time.sleep(2.0)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    try:
        print(
            f"{'in flight':>9}  {'kind':<6} {'CPU ms/req':>10} {'req/s':>7} {'sockets':>7} "
            f"{'RSS MB':>7}"
        )
        for in_flight in args.in_flight:
            total = max(3 * in_flight, 3000)
            for kind in args.kinds:
                m = run_kind(kind, url, in_flight, total)
                print(
                    f"{in_flight:>9}  {kind:<6} {m['cpu_ms']:>10.2f} {m['rps']:>7.0f} "
                    f"{m['sockets']:>7.0f} {m['rss_mb']:>7.0f}",
                    flush=True,
                )
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
