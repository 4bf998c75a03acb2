"""A run's latency histogram: quantiles within its bucket width, memory flat however long."""

from __future__ import annotations

import random

from knrun.run.latency import RATIO, LatencyHistogram


def test_p50_and_p95_come_back_within_the_bucket_width() -> None:
    histogram = LatencyHistogram()
    rng = random.Random(7)
    seen = sorted(rng.randint(50, 20_000) for _ in range(5_000))
    for latency in seen:
        histogram.add(latency)
    for share in (0.5, 0.95):
        truth = seen[int(share * len(seen)) - 1]
        found = histogram.quantile(share)
        assert found is not None and truth <= found <= truth * RATIO + 1


def test_a_million_replies_keep_a_few_hundred_buckets_at_most() -> None:
    histogram = LatencyHistogram()
    for latency in range(0, 10**6, 1):
        histogram.add(latency)
    assert histogram.count == 10**6 and len(histogram.buckets) < 200
    assert histogram.quantile(0.0001) is not None


def test_no_reply_no_quantile_and_one_reply_is_its_own_quantile() -> None:
    histogram = LatencyHistogram()
    assert histogram.quantile(0.5) is None
    histogram.add(1_000)
    assert 1_000 <= (histogram.quantile(0.95) or 0) <= 1_100
