"""What `knrun report` reads and computes: charges summed in SQL into a bounded number of time
buckets on every store backend, with totals that are the store's own, and empty buckets kept."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import Backend, plain_units
from knrun.commands.export import csv_cell
from knrun.commands.report import MAX_BUCKETS, bucket_size, gather, series_from
from knrun.commands.show import decode
from knrun.store.reads import Scope

pytestmark = pytest.mark.anyio

CHARGES = 3000
DAY_S = 86_400


def synthetic_charges(run_id: str, first: int, offset: int) -> str:
    """3,000 charges of one run spread over a day from unix second `first`: every 7th failed,
    every 11th without a bill, every 13th possibly billed (a timeout), in SQL (one request)."""
    return f"""
        WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {CHARGES - 1})
        INSERT INTO knrun_charges (attempt_id, run_id, job, version, unit_id, outcome,
            billed_ticks, tracked_ticks, possible_ticks, expected_ticks, at, input_tokens,
            cached_tokens, output_tokens, reasoning_tokens, latency_ms)
        SELECT '{run_id}:' || i, '{run_id}', 'kn', '1.6', CAST(i % 50 AS TEXT),
            CASE WHEN i % 13 = 0 THEN 'timeout' WHEN i % 7 = 0 THEN 'invalid_json'
                 ELSE 'done' END,
            CASE WHEN i % 13 = 0 OR i % 11 = 0 THEN NULL ELSE 1000003 + i END,
            CASE WHEN i % 13 = 0 THEN 0 ELSE 1000000 + i END,
            CASE WHEN i % 13 = 0 THEN 9000000 ELSE 0 END,
            CASE WHEN i % 13 = 0 THEN 4000000 ELSE 0 END,
            strftime('%Y-%m-%dT%H:%M:%SZ', {first} + (i * {DAY_S} / {CHARGES}) + {offset},
                     'unixepoch'),
            CASE WHEN i % 13 = 0 THEN NULL ELSE 500 END,
            CASE WHEN i % 13 = 0 THEN NULL ELSE 100 * (i % 3) END,
            CASE WHEN i % 13 = 0 THEN NULL ELSE 3000 END,
            CASE WHEN i % 13 = 0 THEN NULL ELSE 2000 END,
            CASE WHEN i % 13 = 0 THEN NULL ELSE 1000 + i % 500 END
        FROM n
    """


async def test_two_days_of_charges_come_back_in_bounded_buckets_with_the_store_s_totals(
    backend: Backend,
) -> None:
    backend.seed(plain_units(50))
    store = backend.open()
    await store.migrate()
    start = 1_795_000_000
    backend.conn.execute(synthetic_charges("run-a", start, 0))
    backend.conn.execute(synthetic_charges("run-b", start + DAY_S, 17))
    report = await gather(store, "kn")
    money = await store.money()
    corpus = report.corpus
    assert money.requests == sum(corpus.requests) == 2 * CHARGES
    assert corpus.total_spent_ticks == money.spent_ticks  # exact, in integer ticks
    assert sum(corpus.input_tokens) == money.input_tokens
    assert sum(corpus.cached_tokens) == money.cached_tokens
    assert len(corpus.starts) <= MAX_BUCKETS and corpus.bucket_s == 1800
    failed = sum(1 for i in range(CHARGES) if i % 13 == 0 or i % 7 == 0)
    assert corpus.failures == {
        "invalid_json": 2 * sum(1 for i in range(CHARGES) if i % 7 == 0 and i % 13),
        "timeout": 2 * sum(1 for i in range(CHARGES) if i % 13 == 0),
    }
    assert sum(corpus.failed) == 2 * failed
    assert report.runs_with_charges == 2
    [(_, newest), (_, oldest)] = report.sections
    assert newest.title == "run run-b" and oldest.title == "run run-a"  # no runs-table record
    for series in (newest, oldest):
        assert len(series.starts) <= MAX_BUCKETS and sum(series.requests) == CHARGES
    assert newest.total_spent_ticks + oldest.total_spent_ticks == money.spent_ticks
    latencies = [v for v in corpus.latency_max_ms if v is not None]
    assert max(latencies) == 1499


def test_buckets_without_charges_are_kept_empty_so_a_pause_draws_as_one() -> None:
    row: dict[str, Any] = {
        "requests": 2,
        "done": 2,
        "failed": 0,
        "spent_ticks": 10,
        "input_tokens": 100,
        "cached_tokens": 50,
        "output_tokens": 9,
        "latency_ms_sum": 3000,
        "latency_n": 2,
        "latency_max": 2000,
    }
    series = series_from("s", Scope(None, 1000, 60), [row | {"bucket": 0}, row | {"bucket": 3}], {})
    assert [s.timestamp() for s in series.starts] == [1000, 1060, 1120, 1180]
    assert series.requests == [2, 0, 0, 2]
    assert series.latency_mean_ms == [1500.0, None, None, 1500.0]
    assert series.cache_share == 0.5


@pytest.mark.parametrize(
    ("span_s", "size"),
    [(1, 1), (120, 1), (121, 2), (3600, 30), (DAY_S, 900), (30 * DAY_S, 21600)],
)
def test_bucket_size_keeps_a_span_within_the_bucket_limit(span_s: int, size: int) -> None:
    assert bucket_size(span_s) == size
    assert span_s / bucket_size(span_s) <= MAX_BUCKETS


def test_exported_values_keep_their_type_in_jsonl_and_become_text_in_csv() -> None:
    assert decode("string_list", '["a", "b"]') == ["a", "b"]
    assert decode("boolean", 0) is False and decode("string", None) is None
    assert csv_cell(["a", "b"]) == '["a", "b"]'
    assert csv_cell(True) == "true" and csv_cell(None) == "" and csv_cell(3) == 3
