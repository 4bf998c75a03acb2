"""`go --batch` at the seed corpus's size and beyond: what it asks of the store and of xAI's Batch
API, and how soon each result reaches the run, when xAI lists results in no order and its reads
disagree.

The real Runner with the batch engine, against the simulator's Batch API as hostile as the
public record allows (results `shuffled` by default, or `completion` / `newest_first` order; each
read sees a request's end up to 20 s late, independently; 2% of calls refused 429; counters
sometimes left out), each request done 300-900 s after it is added, D1 behind its 3 requests/s
limiter, all time-scaled. Targets (issue 17): store requests per unit <= 0.1; every result
recorded (ledger, guards, spool) within two polls of its completion; billed = tracked.

    python bench/batch.py [--units 16300] [--order shuffled] [--scale 0.01]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _common import PRICING, job, scaled_d1, table, units_db, xai_client, xai_sim
from knrun.pricing import format_usd, load_pricing
from knrun.run.batch.collect import Collector
from knrun.run.batch.handle import BatchPlan
from knrun.run.coordinator import RunConfig, Runner
from knrun.spool import Spool


class PollClock:
    """When each poll began (the simulator's clock), and in which poll each result came in."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.taken_in: dict[str, int] = {}

    def watch(self, sim: Any) -> None:
        poll, take = Collector.poll, Collector._take

        async def timed_poll(collector: Collector, *, submitting: bool) -> None:
            self.starts.append(sim.now())
            await poll(collector, submitting=submitting)

        async def noted_take(collector: Collector, result: Any) -> None:
            self.taken_in[result.request_id] = len(self.starts)
            await take(collector, result)

        Collector.poll = timed_poll  # type: ignore[method-assign]
        Collector._take = noted_take  # type: ignore[method-assign]

    def polls_after(self, ended_at: float, taken_in: int) -> int:
        """Polls begun after the request ended, up to the one that took its result."""
        return taken_in - bisect.bisect_right(self.starts, ended_at)


async def measure(db: Path, units: int, scale: float, order: str) -> list[tuple[str, str]]:
    spec = job()
    sim = xai_sim(scale)
    sim.scenario.batch.results_order = order  # type: ignore[assignment]
    d1, store = scaled_d1(db, spec, scale, scale_window=True)
    client = xai_client(sim, 2)
    spool = Spool(db.with_suffix(".spool"))
    config = RunConfig(
        batch=True,
        write_interval_s=2.0 * scale,
        time_scale=scale,
        store_retry_base_s=1.0 * scale,
    )
    polls = PollClock()
    polls.watch(sim)
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
        batch=BatchPlan(name="bench"),
    )
    started, cpu = time.perf_counter(), time.process_time()
    result = await runner.run()
    wall, cpu_used = time.perf_counter() - started, time.process_time() - cpu
    await client.aclose()
    await spool.close()
    await store.close()
    assert result.exit_code == 0, result.reason
    state, stats = result.state, sim.batch.stats
    [batch] = sim.batch.batches.values()
    lags = Counter(
        polls.polls_after(entry.ended_at, polls.taken_in[entry.request_id])
        for entry in batch.added
        if entry.request_id in polls.taken_in
    )
    n_polls = len(polls.starts)
    xai_calls = stats.get_calls + stats.result_pages + stats.id_pages
    return [
        ("units done", f"{state.done:,} of {units:,}"),
        ("store requests", f"{d1.stats.requests:,} ({d1.stats.write_requests:,} writes)"),
        ("store requests per unit", f"{d1.stats.requests / units:.3f}   (target <= 0.1)"),
        ("add calls", f"{stats.add_calls} ({stats.added:,} requests, {stats.duplicates} twice)"),
        ("polls", f"{n_polls} ({stats.rate_limited} calls refused 429 and waited out)"),
        (
            "xAI reads per poll",
            f"{xai_calls / n_polls:.1f} (counters {stats.get_calls}, result pages "
            f"{stats.result_pages:,}, request-list pages {stats.id_pages:,})",
        ),
        ("results bytes per poll", f"{stats.result_bytes / n_polls / 1e6:.2f} MB"),
        (
            "polls from completion to record",
            ", ".join(f"{k}: {v:,}" for k, v in sorted(lags.items()))
            + f"   (target <= 2; max {max(lags)})",
        ),
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
    parser.add_argument(
        "--order", choices=["shuffled", "completion", "newest_first"], default="shuffled"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "units.sqlite"
        eligible = units_db(db, args.units)
        rows = asyncio.run(measure(db, eligible, args.scale, args.order))
    table(f"go --batch: {eligible:,} units, results {args.order}, time scale {args.scale}", rows)


if __name__ == "__main__":
    main()
