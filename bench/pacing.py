"""Adaptive pacing against the simulator's rolling windows: how close to the account's limit,
at what share of 429s, from a fast model to the seed's 79 s one.

Every case runs the real Runner (auto concurrency) against the xAI simulator, time-scaled: the
simulator's latency and windows, and the pacing's own clock, by the same factor. Figures are
in simulated seconds.

- limit-bound: a requests/s or tokens/min limit, latency 0.5 s to 79 s. Target: accepted
  requests/s in steady state >= 0.9 of the limit, <= 5% of requests answered 429.
- random 429s: 30% of requests refused at random (no Retry-After), no limit. Target: >= 0.5 of
  the same run's rate without them.
- far above demand: a 30 requests/s limit, 15,119 units at 79 s. Target: done within 1.2x of
  the limit-bound time (units / limit + one latency).
- two runners sharing one limit. Target: together >= 0.9 of it, <= 5% 429s.

    python bench/pacing.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from _common import Measured, reset, run_scaled, table, units_db
from _pacing_cases import REAL_RPS, Case, share_429, simulator, steady_rps
from knrun.run.coordinator import Runner
from knrun.sim.xai import XaiSimulator


async def one(db: Path, case: Case, scale: float, eligible: int) -> tuple[Measured, XaiSimulator]:
    reset(db)
    sim = simulator(case, scale)
    measured = await run_scaled(
        db, eligible, scale=scale, max_concurrency=case.max_concurrency, store="sqlite", xai=sim
    )
    assert measured.result.exit_code == 0, measured.result.reason
    return measured, sim


def binding_rps(case: Case, measured: Measured) -> float:
    state = measured.result.state
    tokens = (state.input_tokens + state.output_tokens) / max(state.replies, 1)
    limits = [case.rps or float("inf"), (case.tpm or float("inf")) / 60 / tokens]
    return min(limits)


def limit_bound(folder: Path, quick: bool) -> None:
    cases = [
        Case("20 requests/s, 0.5 s", 0.5, 4000, rps=20),
        Case("20 requests/s, 5 s", 5.0, 4000, rps=20),
        Case("10 requests/s, 79 s", 79.0, 3000, rps=10),
        Case("600k tokens/min, 5 s", 5.0, 1500, tpm=600_000),
    ]
    if quick:
        cases = cases[1:2]
    rows = []
    for case in cases:
        db = folder / f"limit-{case.name[:2]}-{case.median_s}.sqlite"
        eligible = units_db(db, case.units)
        scale = min(1.0, (case.rps or 10) / REAL_RPS)
        measured, sim = asyncio.run(one(db, case, scale, eligible))
        limit = binding_rps(case, measured)
        achieved = steady_rps(sim.stats.admitted, scale)
        state = measured.result.state
        rows.append(
            (
                case.name,
                f"{achieved:.2f} accepted/s of {limit:.2f} = {achieved / limit:.3f} of the limit; "
                f"429s {share_429(sim):.1%}; peak in flight {state.peak_in_flight}; "
                f"final pace {state.rate_rps:.1f}/s",
            )
        )
    table("limit-bound (target >= 0.9 of the limit, <= 5% 429s)", rows)


def random_429s(folder: Path, quick: bool) -> None:
    units = 1000 if quick else 2000
    db = folder / f"noise-{units}.sqlite"
    eligible = units_db(db, units)
    rows = []
    for median_s, fixed, rps in ((5.0, None, None), (0.5, 50, None), (0.5, None, 20.0)):
        rates = {}
        for share in (0.0, 0.3):
            case = Case(
                f"{share:.0%}", median_s, units, rps=rps, random_429=share, max_concurrency=100
            )
            reset(db)
            sim = simulator(case, 20 / REAL_RPS)
            measured = asyncio.run(
                run_scaled(
                    db,
                    eligible,
                    scale=20 / REAL_RPS,
                    concurrency=fixed or 100,
                    max_concurrency=None if fixed else 100,
                    store="sqlite",
                    xai=sim,
                    known_limits=None if rps is None else {"requests": rps},
                )
            )
            rates[share] = measured.units / (measured.wall_s / (20 / REAL_RPS))
        pool = f"--concurrency {fixed}" if fixed else "auto, 100 at most"
        if rps:
            pool += f", a {rps:.0f}/s limit (known)"
        rows.append(
            (
                f"{median_s} s latency, {pool}",
                f"{rates[0.3]:.2f} units/s with 30% against {rates[0.0]:.2f} without: "
                f"{rates[0.3] / rates[0.0]:.2f} of it, first request to last write",
            )
        )
    table("30% random 429s, no Retry-After (target >= 0.6)", rows)


def far_above(folder: Path, quick: bool) -> None:
    units = 3000 if quick else 16_780  # about 15,119 of them eligible, the seed's corpus
    case = Case("far above", 79.0, units, rps=30)
    db = folder / f"far-{units}.sqlite"
    eligible = units_db(db, units)
    scale = 30 / REAL_RPS
    measured, sim = asyncio.run(one(db, case, scale, eligible))
    state = measured.result.state
    admitted = sorted(sim.stats.admitted)
    sending = (admitted[-1] - admitted[0]) / scale
    took = measured.wall_s / scale
    slowest = max(sim.stats.latencies)
    table(
        f"{eligible:,} units, 79 s median latency, a 30 requests/s limit (target within 1.2x)",
        [
            (
                "sending",
                f"{sending:.0f} s simulated, first request to last; limit-bound "
                f"{eligible / 30:.0f} s: {sending / (eligible / 30):.2f}x",
            ),
            (
                "end to end",
                f"{took:.0f} s; limit-bound plus the slowest reply ({slowest:.0f} s): "
                f"{took / (eligible / 30 + slowest):.2f}x",
            ),
            ("in flight", f"peak {state.peak_in_flight}; 429s {share_429(sim):.1%}"),
        ],
    )


def two_runners(folder: Path, quick: bool) -> None:
    units = 1500 if quick else 3000
    db = folder / f"two-{units}.sqlite"
    eligible = units_db(db, units)
    scale = 20 / REAL_RPS
    sim = simulator(Case("two", 5.0, units, rps=20), scale)
    runners: list[Runner] = []

    async def run(run_id: str) -> Measured:
        measured = await run_scaled(
            db,
            eligible,
            scale=scale,
            max_concurrency=1000,
            store="sqlite",
            xai=sim,
            runners=2,
            run_id=run_id,
            on_runner=runners.append,
        )
        for runner in runners:  # launch's heartbeat would see one live run left
            runner.pacing.share(1)
        return measured

    async def both() -> list[Measured]:
        return list(await asyncio.gather(run("r1"), run("r2")))

    first, second = asyncio.run(both())
    together = first.units + second.units
    # Steady state while both run: up to the first one's end (admission times are real).
    both_until = min(sim.stats.admitted) + min(first.wall_s, second.wall_s)
    while_both = [at for at in sim.stats.admitted if at <= both_until]
    achieved = steady_rps(while_both, scale)
    table(
        "two runners, one 20 requests/s limit (target together >= 0.9 of it, <= 5% 429s)",
        [
            ("together", f"{achieved:.2f} accepted/s while both ran = {achieved / 20:.3f} of it"),
            ("429s", f"{share_429(sim):.1%}"),
            ("units", f"{first.units} + {second.units} = {together} of {eligible}"),
            ("exits", f"{first.result.exit_code}, {second.result.exit_code}"),
        ],
    )


def whole_runs(folder: Path, quick: bool) -> None:
    """Issue 18's figures, over the whole run (first request to last write, ramp and tail
    included), at auto concurrency: a first run (nothing known), one after preflight's canary
    has named the limit (`known_limits`, as `.knrun/limits.json` carries it), and a run bound by
    tokens per minute with a reasoning model."""
    rows = [*whole_request_bound(folder), whole_token_bound(folder, quick)]
    table("whole runs (targets: >= 0.9 of the limit, <= 5% 429s)", rows)


def whole_request_bound(folder: Path) -> list[tuple[str, str]]:
    rows = []
    db = folder / "whole-600.sqlite"
    eligible = units_db(db, 660)  # about 600 eligible
    scale = 20 / REAL_RPS
    for known, label in ((None, "first run, nothing known"), ({"requests": 20.0}, "limit known")):
        case = Case("whole", 0.5, eligible, rps=20, max_concurrency=1000)
        reset(db)
        sim = simulator(case, scale)
        measured = asyncio.run(
            run_scaled(
                db,
                eligible,
                scale=scale,
                max_concurrency=1000,
                store="sqlite",
                xai=sim,
                known_limits=known,
            )
        )
        whole = measured.units / (measured.wall_s / scale)
        rows.append(
            (
                f"600 units, 20/s, 0.5 s: {label}",
                f"{whole:.2f} units/s = {whole / 20:.3f} of the limit, first request to last "
                f"write; 429s {share_429(sim):.1%}",
            )
        )
    return rows


def whole_token_bound(folder: Path, quick: bool) -> tuple[str, str]:
    tokens_db = folder / "whole-tpm.sqlite"
    eligible = units_db(tokens_db, 330 if quick else 660)
    tpm = 600_000
    scale = 2 / REAL_RPS * 10
    case = Case("tpm", 5.0, eligible, tpm=tpm, max_concurrency=1000)
    sim = simulator(case, scale)
    reset(tokens_db)
    measured = asyncio.run(
        run_scaled(
            tokens_db,
            eligible,
            scale=scale,
            max_concurrency=1000,
            store="sqlite",
            xai=sim,
            known_limits={"tokens": tpm / 60},
            tokens_per_request=3400,
        )
    )
    state = measured.result.state
    tokens = state.input_tokens + state.output_tokens
    per_minute = tokens / (measured.wall_s / scale) * 60
    return (
        "tokens/min bound (600k/min, reasoning model, 5 s)",
        f"{per_minute:,.0f} tokens/min = {per_minute / tpm:.3f} of the limit, first request "
        f"to last write; 429s {share_429(sim):.1%}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller cases, for a smoke run")
    parser.add_argument(
        "--only", choices=["whole", "limit", "noise", "far", "two"], help="one group of cases"
    )
    args = parser.parse_args()
    groups = {
        "whole": whole_runs,
        "limit": limit_bound,
        "noise": random_429s,
        "far": far_above,
        "two": two_runners,
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, group in groups.items():
            if args.only in (None, name):
                group(Path(tmp), args.quick)


if __name__ == "__main__":
    main()
