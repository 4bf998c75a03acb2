"""Worker pool against wave batching, on the same latency distribution.

Waves send N requests, wait for all N, then send the next N, so every wave lasts as long as its
slowest request. knrun's pool hands each worker its next unit the moment it is free. The field
report measured about 1.8x for the pool at the same concurrency.

    python bench/pool_vs_waves.py [--units 1500] [--scale 0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from _common import job, run_scaled, table, units_db, xai_client, xai_sim


async def waves(units: int, concurrency: int, scale: float) -> float:
    """The field report's first approach: gather a wave of calls, then the next. Units/s."""
    spec = job()
    sim = xai_sim(scale)
    client = xai_client(sim, concurrency)
    messages = [{"role": "user", "content": "unit"}]

    async def call(lane: int) -> None:
        await client.chat(
            model=spec.model,
            messages=messages,
            temperature=0.3,
            max_completion_tokens=8000,
            response_schema=spec.response_schema,
            schema_name="kn_output",
            lane=lane,
        )

    started = time.perf_counter()
    for first in range(0, units, concurrency):
        await asyncio.gather(*(call(i) for i in range(min(concurrency, units - first))))
    elapsed = time.perf_counter() - started
    await client.aclose()
    return units / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=1650)
    parser.add_argument("--scale", type=float, default=0.05)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "units.sqlite"
        eligible = units_db(db, args.units)
        pool = asyncio.run(
            run_scaled(db, eligible, scale=args.scale, concurrency=args.concurrency, store="sqlite")
        )
    pool_rate = pool.units / pool.wall_s
    wave_rate = asyncio.run(waves(eligible, args.concurrency, args.scale))
    scale = args.scale
    table(
        f"pool vs waves: {eligible} units, {args.concurrency} in flight, latency lognormal ~5 s",
        [
            ("waves (gather N, then next N)", f"{wave_rate * scale * 60:.0f} units/min real"),
            ("knrun worker pool", f"{pool_rate * scale * 60:.0f} units/min real"),
            ("pool / waves", f"{pool_rate / wave_rate:.2f}x   (field report: ~1.8x)"),
        ],
    )


if __name__ == "__main__":
    main()
