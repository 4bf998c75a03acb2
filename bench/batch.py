"""`go --batch` at the seed corpus's size: what it asks of the store and of xAI's Batch API.

The real Runner with the batch engine, against the simulator's Batch API (each request done
300-900 s after it is added) and D1 behind its 3 requests/s limiter, all time-scaled. Target
(issue 13): store requests per unit <= 0.1. Also shown: add calls, result pages read (each poll
reads only pages not yet read in full), billed against tracked at the batch price, and the
run's length (the simulated Batch API's own delay, 300-900 s a request, dominates it).

    python bench/batch.py [--units 16300] [--scale 0.01]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from _common import PRICING, job, scaled_d1, table, units_db, xai_client, xai_sim
from knrun.pricing import format_usd, load_pricing
from knrun.run.batch import BatchHandle
from knrun.run.coordinator import RunConfig, Runner
from knrun.spool import Spool
from knrun.xai.batch import BatchApi


async def measure(db: Path, units: int, scale: float) -> list[tuple[str, str]]:
    spec = job()
    sim = xai_sim(scale)
    d1, store = scaled_d1(db, spec, scale, scale_window=True)
    client = xai_client(sim, 2)
    spool = Spool(db.with_suffix(".spool"))
    info = await BatchApi(client).create("bench")
    config = RunConfig(
        batch=True,
        write_interval_s=2.0 * scale,
        time_scale=scale,
        store_retry_base_s=1.0 * scale,
    )
    runner = Runner(
        job=spec,
        price=load_pricing(PRICING).price_for(spec.model).for_batch(),
        store=store,
        xai=client,
        spool=spool,
        config=config,
        run_id="bench",
        owner="bench:batch",
        total=units,
        batch=BatchHandle(info.batch_id, spec.version),
    )
    started, cpu = time.perf_counter(), time.process_time()
    result = await runner.run()
    wall, cpu_used = time.perf_counter() - started, time.process_time() - cpu
    await client.aclose()
    await spool.close()
    await store.close()
    assert result.exit_code == 0, result.reason
    state, stats = result.state, sim.batch.stats
    return [
        ("units done", f"{state.done:,} of {units:,}"),
        ("store requests", f"{d1.stats.requests:,} ({d1.stats.write_requests:,} writes)"),
        ("store requests per unit", f"{d1.stats.requests / units:.3f}   (target <= 0.1)"),
        ("add calls", f"{stats.add_calls} ({stats.added:,} requests, {stats.duplicates} twice)"),
        ("result pages read", f"{state.batch_pages:,} ({stats.get_calls} counter reads)"),
        (
            "billed / tracked",
            f"{format_usd(state.billed_ticks)} / {format_usd(state.tracked_ticks)}",
        ),
        ("batch vs live price", f"{stats.billed_ticks / stats.live_ticks:.3f}"),
        ("first add to last result", f"{wall / scale:,.0f} s simulated ({wall:.1f} s real)"),
        ("runner CPU", f"{cpu_used / units * 1e3:.2f} ms/unit, simulators included"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=16_300)  # about 15,119 eligible
    parser.add_argument("--scale", type=float, default=0.01)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "units.sqlite"
        eligible = units_db(db, args.units)
        rows = asyncio.run(measure(db, eligible, args.scale))
    table(f"go --batch: {eligible:,} units, time scale {args.scale}", rows)


if __name__ == "__main__":
    main()
