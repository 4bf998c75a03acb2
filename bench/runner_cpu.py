"""The runner's own cost: CPU per unit and units/s against a zero-latency xAI simulator served
from another process over loopback HTTP, with the embedded SQLite store. Peak memory is measured
for a small and a large corpus in fresh processes: it must not grow with the corpus.

Target: at least 1,000 units/s on one core for the runner itself (CPU per unit <= 1 ms).

    python bench/runner_cpu.py [--units 5000] [--memory-sizes 10000,100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from _common import PRICING, job, reset, table, units_db
from knrun.pricing import Usage, load_pricing
from knrun.run.coordinator import RunConfig, Runner
from knrun.sim.replies import content
from knrun.spool import Spool
from knrun.store import SqliteStore
from knrun.xai import ChatReply, XaiClient

HERE = Path(__file__).resolve().parent


class CannedXai:
    """Answers instantly with prepared replies: what is left is the runner's own cost (claims,
    rendering, judging, spool, writer, store), without any HTTP."""

    def __init__(self, spec: Any) -> None:
        rng = random.Random(1)
        self._replies = [
            ChatReply(
                content=content(spec.response_schema, 900, rng),
                finish_reason="stop",
                refusal=None,
                usage=Usage(
                    prompt_tokens=450,
                    completion_tokens=900,
                    reasoning_tokens=2000,
                    billed_ticks=450 * 12_500 + 2900 * 25_000,
                ),
                model=spec.model,
            )
            for _ in range(64)
        ]
        self._next = 0

    async def chat(self, **_: Any) -> ChatReply:
        await asyncio.sleep(0)
        self._next += 1
        return self._replies[self._next % len(self._replies)]

    async def aclose(self) -> None:
        pass


def serve_simulator() -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, str(HERE / "_serve_sim.py")], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    port = process.stdout.readline().strip()
    return process, f"http://127.0.0.1:{port}/v1"


async def run_once(db: Path, units: int, base_url: str, concurrency: int) -> dict[str, float]:
    spec = job()
    store = SqliteStore(spec, db)
    xai: Any = (
        CannedXai(spec)
        if base_url == "canned"
        else XaiClient(
            api_key=SecretStr("xai-sim-api-key-0001"),
            base_url=base_url,
            max_connections=concurrency,
        )
    )
    spool = Spool(db.with_suffix(".spool"))
    runner = Runner(
        job=spec,
        price=load_pricing(PRICING).price_for(spec.model),
        store=store,
        xai=xai,
        spool=spool,
        run_id="bench",
        owner="bench:run",
        total=units,
        config=RunConfig(concurrency=concurrency, write_interval_s=0.5),
    )
    wall, cpu = time.perf_counter(), time.process_time()
    result = await runner.run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    await xai.aclose()
    await spool.close()
    await store.close()
    assert result.exit_code == 0, result.reason
    return {
        "units": result.state.processed,
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def child(db: str, units: int, base_url: str, concurrency: int) -> None:
    print(json.dumps(asyncio.run(run_once(Path(db), units, base_url, concurrency))))


def measure_in_child(db: Path, units: int, base_url: str, concurrency: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(db), str(units), base_url, str(concurrency)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=5500)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--memory-sizes", default="10000,100000")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.child[2], int(args.child[3]))
        return
    server, base_url = serve_simulator()
    try:
        with tempfile.TemporaryDirectory() as folder:
            db = Path(folder) / "cpu.sqlite"
            eligible = units_db(db, args.units)
            rows = []
            for label, target in (
                ("runner alone (canned replies)", "canned"),
                ("runner + HTTP client (loopback)", base_url),
            ):
                reset(db)
                cpu = measure_in_child(db, eligible, target, args.concurrency)
                rows.append(
                    (
                        label,
                        f"{cpu['units']:.0f} units in {cpu['wall_s']:.2f} s = "
                        f"{cpu['units'] / cpu['wall_s']:.0f} units/s; CPU "
                        f"{cpu['cpu_s'] / cpu['units'] * 1e3:.3f} ms/unit = "
                        f"{cpu['units'] / cpu['cpu_s']:.0f} units/s per core",
                    )
                )
            for size in (int(n) for n in args.memory_sizes.split(",")):
                big = Path(folder) / f"mem{size}.sqlite"
                n = units_db(big, size)
                mem = measure_in_child(big, n, base_url, args.concurrency)
                rows.append(
                    (
                        f"peak RSS, {n:,} units",
                        f"{mem['peak_rss_mb']:.0f} MB ({n / mem['wall_s']:.0f} units/s)",
                    )
                )
        table(
            "runner CPU and memory (simulator in another process, loopback HTTP, SQLite store)",
            rows,
        )
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
