"""`knrun report`: a job's runs looked back on, gathered from the store into time series (summed
in SQL by time bucket) and written as one self-contained HTML file."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from knrun.clock import utc_now
from knrun.context import Context
from knrun.errors import InputError
from knrun.store.base import SqlUnitStore
from knrun.store.reads import Row, Scope, Span, charge_buckets, charge_spans, failures_by_run
from knrun.store.types import Progress, RunRecord

# Bucket sizes a chart may use, in seconds: the smallest that keeps a span within MAX_BUCKETS.
BUCKET_SIZES = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400)
MAX_BUCKETS = 120
# The most recent runs with charges get a section each; every run counts in the corpus.
MAX_RUN_SECTIONS = 12
RUNS_LISTED = 200


@dataclass
class Series:
    """One scope's charges over time: each list has one entry per bucket that had any."""

    title: str
    bucket_s: int
    starts: list[datetime] = field(default_factory=list)
    requests: list[int] = field(default_factory=list)
    done: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    spent_ticks: list[int] = field(default_factory=list)
    input_tokens: list[int] = field(default_factory=list)
    cached_tokens: list[int] = field(default_factory=list)
    output_tokens: list[int] = field(default_factory=list)
    latency_mean_ms: list[float | None] = field(default_factory=list)
    latency_max_ms: list[int | None] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)

    @property
    def total_spent_ticks(self) -> int:
        return sum(self.spent_ticks)

    @property
    def cache_share(self) -> float | None:
        prompt = sum(self.input_tokens)
        return sum(self.cached_tokens) / prompt if prompt else None


@dataclass
class Report:
    job: str
    version: str
    model: str
    store: str
    generated_at: str
    progress: Progress
    runs: list[RunRecord]
    corpus: Series
    sections: list[tuple[RunRecord | None, Series]]  # newest run first
    runs_with_charges: int


def bucket_size(span_s: int) -> int:
    """The smallest listed bucket that fits `span_s` seconds in MAX_BUCKETS buckets."""
    for size in BUCKET_SIZES:
        if span_s / size <= MAX_BUCKETS:
            return size
    return span_s // MAX_BUCKETS + 1


def scope_for(run_id: str | None, first: int, last: int) -> Scope:
    size = bucket_size(last - first + 1)
    return Scope(run_id, first - first % size, size)


def series_from(title: str, scope: Scope, rows: list[Row], failures: dict[str, int]) -> Series:
    """The scope's buckets in order, those without a charge included as empty ones (no more
    than MAX_BUCKETS), so a pause in a run draws as one, not as a line across it."""
    series = Series(title=title, bucket_s=scope.bucket_s, failures=failures)
    by_bucket = {int(row["bucket"]): row for row in rows}
    for bucket in range(min(by_bucket, default=0), max(by_bucket, default=-1) + 1):
        start = scope.origin + bucket * scope.bucket_s
        series.starts.append(datetime.fromtimestamp(start, UTC))
        _append(series, by_bucket.get(bucket, _EMPTY))
    return series


_EMPTY: Row = {"latency_n": 0, "latency_max": None}


def _append(series: Series, row: Row) -> None:
    series.requests.append(int(row.get("requests", 0)))
    series.done.append(int(row.get("done", 0)))
    series.failed.append(int(row.get("failed", 0)))
    series.spent_ticks.append(int(row.get("spent_ticks") or 0))
    series.input_tokens.append(int(row.get("input_tokens", 0)))
    series.cached_tokens.append(int(row.get("cached_tokens", 0)))
    series.output_tokens.append(int(row.get("output_tokens", 0)))
    timed = int(row["latency_n"])
    series.latency_mean_ms.append(int(row["latency_ms_sum"]) / timed if timed else None)
    maximum = row["latency_max"]
    series.latency_max_ms.append(None if maximum is None else int(maximum))


def _sum_failures(by_run: dict[str, dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for reasons in by_run.values():
        for reason, n in reasons.items():
            total[reason] = total.get(reason, 0) + n
    return dict(sorted(total.items(), key=lambda item: -item[1]))


def run_title(run: RunRecord | None, run_id: str) -> str:
    if run is None:
        return f"run {run_id}"
    return f"{run.kind} {run.run_id} (v{run.version}, {run.model}, {run.state})"


async def gather(store: SqlUnitStore, job_label: str) -> Report:
    """Everything the report shows, read in a handful of requests: the spans of the runs'
    charges, then each scope's buckets (corpus, and the recent runs) and the failures."""
    job = store.job
    progress = await store.progress()
    runs = await store.runs(limit=RUNS_LISTED)
    spans: list[Span] = await charge_spans(store)
    by_id = {run.run_id: run for run in runs}
    recent = sorted(spans, key=lambda span: span.first, reverse=True)[:MAX_RUN_SECTIONS]
    scopes = [scope_for(span.run_id, span.first, span.last) for span in recent]
    if spans:
        scopes.insert(0, scope_for(None, min(s.first for s in spans), max(s.last for s in spans)))
    else:
        scopes.insert(0, Scope(None, 0, 1))
    buckets = await charge_buckets(store, scopes)
    failures = await failures_by_run(store)
    corpus = series_from(f"all runs of {job_label}", scopes[0], buckets[0], _sum_failures(failures))
    sections = [
        (
            by_id.get(span.run_id),
            series_from(
                run_title(by_id.get(span.run_id), span.run_id),
                scope,
                rows,
                failures.get(span.run_id, {}),
            ),
        )
        for span, scope, rows in zip(recent, scopes[1:], buckets[1:], strict=True)
    ]
    return Report(
        job=job.name,
        version=job.version,
        model=job.model,
        store=store.describe(),
        generated_at=utc_now(),
        progress=progress,
        runs=runs,
        corpus=corpus,
        sections=sections,
        runs_with_charges=len(spans),
    )


def default_path(job_name: str) -> Path:
    """`knrun-report-<job>.html` in the working folder, the name made safe for any filesystem."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", job_name).strip("-") or "job"
    return Path(f"knrun-report-{safe}.html")


async def write_report(
    ctx: Context, output: Path | None, render_report: Callable[[Report], str]
) -> Path:
    """Read the job's figures from the store and write the report `render_report` draws of
    them (the display's HTML); returns its path."""
    path = output or default_path(ctx.job.name)
    if not path.parent.is_dir():  # before reading anything
        raise InputError(f"cannot write the report: no folder {path.parent}")
    async with ctx.open_store() as store:
        report = await gather(store, ctx.job.name)
    try:
        path.write_text(render_report(report), encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write the report: {exc}") from None
    return path
