"""Shared set-up for the benchmarks: a corpus database and a time-scaled world.

Every time constant is multiplied by one factor SCALE: xAI latency, D1 latency, D1's request
limiter and the writer's flush interval. Ratios (efficiency, store requests per unit, requests
per real second) then come out as a real run would see them, in a hundredth of the time.
"""

from __future__ import annotations

import asyncio
import sqlite3
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from pydantic import SecretStr

from knrun.job import JobSpec, load_job
from knrun.pricing import load_pricing
from knrun.run.coordinator import RunConfig, Runner, RunResult
from knrun.run.events import Event
from knrun.sim.corpus import write_jsonl
from knrun.sim.d1 import D1Simulator
from knrun.sim.scenario import Scenario
from knrun.sim.xai import XaiSimulator
from knrun.spool import Spool
from knrun.store import D1Store, SqliteStore
from knrun.store.importer import import_units
from knrun.store.limiter import RequestLimiter
from knrun.xai import XaiClient

ROOT = Path(__file__).resolve().parent.parent
JOB = ROOT / "prompts" / "kn-1.6.toml"  # the repository root is an operator's folder
PRICING = ROOT / "pricing.toml"
D1_LATENCY_S = 0.15  # a Cloudflare API round trip from Australia, per the field report
D1_RATE_PER_S = 3.0


def job() -> JobSpec:
    return load_job(JOB)


def units_db(path: Path, count: int) -> int:
    """A migrated SQLite file with `count` synthetic units; returns how many are eligible."""
    spec = job()
    source = path.with_suffix(".jsonl")
    write_jsonl(source, count)
    import_units(source, path, spec)
    source.unlink()

    async def migrate() -> int:
        store = SqliteStore(spec, path)
        await store.migrate()
        remaining = await store.count_remaining()
        await store.close()
        return remaining

    return asyncio.run(migrate())


def xai_sim(scale: float, *, median_s: float = 5.0, sigma: float = 0.35) -> XaiSimulator:
    return XaiSimulator(
        Scenario(
            latency={"median_s": median_s, "sigma": sigma, "time_scale": scale},
            balance_usd=Decimal(100_000),
        )
    )


def xai_client(sim: XaiSimulator, concurrency: int) -> XaiClient:
    return XaiClient(
        api_key=SecretStr(sim.scenario.api_key),
        base_url="http://xai.sim/v1",
        transport=sim.transport(),
        max_connections=concurrency,
    )


@dataclass
class Measured:
    result: RunResult
    wall_s: float
    cpu_s: float
    xai: XaiSimulator
    d1: D1Simulator | None
    finished_at: list[float]  # perf_counter of each unit's completion

    def steady_rate(self, low: float = 0.1, high: float = 0.9) -> float:
        """Units per second between the low and high fractions of completions: the run's
        rate without its ramp-up and its tail."""
        times = sorted(self.finished_at)
        a, b = int(len(times) * low), int(len(times) * high) - 1
        return (b - a) / (times[b] - times[a])

    @property
    def units(self) -> int:
        return self.result.state.processed

    def mean_latency_s(self, scale: float) -> float:
        return statistics.fmean(self.xai.stats.latencies) * scale


def scaled_d1(
    db: Path, spec: JobSpec, scale: float, *, scale_window: bool = False
) -> tuple[D1Simulator, D1Store]:
    """D1 over REST in the scaled world: its latency and knrun's limiter scaled; with
    `scale_window`, Cloudflare's 5-minute window too (its `Ratelimit` header paces the
    limiter, at real-world speed when the window is not scaled)."""
    window = {"limit_window_s": 300 * scale, "block_s": 300 * scale} if scale_window else {}
    d1 = D1Simulator(db, latency_s=D1_LATENCY_S * scale, **window)
    store = D1Store(
        spec,
        account_id=d1.account_id,
        database_id=d1.database_id,
        api_token=SecretStr(d1.api_token),
        base_url=d1.base_url(),
        transport=d1.transport(),
        limiter=RequestLimiter(D1_RATE_PER_S / scale),
    )
    return d1, store


async def run_scaled(
    db: Path,
    units: int,
    *,
    scale: float,
    concurrency: int = 50,
    max_concurrency: int | None = None,
    store: str = "d1",
    xai: XaiSimulator | None = None,
    runners: int = 1,
    run_id: str = "bench",
    on_runner: Callable[[Runner], None] | None = None,
    known_limits: dict[str, float] | None = None,
    tokens_per_request: int | None = None,
) -> Measured:
    """One run of the real Runner over `db` in a world scaled by `scale`: `concurrency`
    fixed, or auto up to `max_concurrency`; `runners` live runs share the account's limits."""
    spec = job()
    sim = xai or xai_sim(scale)
    d1 = None
    if store == "d1":
        d1, unit_store = scaled_d1(db, spec, scale)
    else:
        unit_store = SqliteStore(spec, db)
    workers = max_concurrency or concurrency
    client = xai_client(sim, workers)
    spool_path = db.with_suffix(f".{run_id}.spool")
    spool = Spool(spool_path)
    config = RunConfig(
        concurrency=workers,
        max_concurrency=max_concurrency,
        write_interval_s=2.0 * scale,
        time_scale=scale,
        store_retry_base_s=1.0 * scale,
        known_limits=known_limits,
        tokens_per_request_estimate=tokens_per_request,
    )
    finished: list[float] = []

    def events(event: Event) -> None:
        if event.kind in ("unit_done", "unit_failed"):
            finished.append(time.perf_counter())

    runner = Runner(
        job=spec,
        price=load_pricing(PRICING).price_for(spec.model),
        store=unit_store,
        xai=client,
        spool=spool,
        config=config,
        run_id=run_id,
        owner=f"bench:{run_id}",
        total=units,
        events=events,
    )
    runner.pacing.share(runners)  # what launch learns from the runs table
    if on_runner is not None:
        on_runner(runner)
    started, cpu = time.perf_counter(), time.process_time()
    result = await runner.run()
    wall, cpu_used = time.perf_counter() - started, time.process_time() - cpu
    await client.aclose()
    await spool.close()
    await unit_store.close()
    spool_path.unlink(missing_ok=True)
    return Measured(result, wall, cpu_used, sim, d1, finished)


def table(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(name) for name, _ in rows)
    print(f"\n{title}")
    print("-" * len(title))
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


def reset(db: Path) -> None:
    """Undo a run's results so the next measurement starts from the same corpus."""
    conn = sqlite3.connect(db)
    conn.execute(
        "UPDATE units SET kn_prompt_version = NULL, kn_status = NULL, "
        "kn_status_version = NULL, kn_lease_owner = NULL, kn_lease_expires = NULL"
    )
    conn.commit()
    conn.close()
