"""Request latency of a run, for its summary: a histogram with fixed log-spaced buckets, so
memory stays flat and each reply costs one logarithm and one increment however long the run."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# Bucket k holds latencies up to RATIO**k ms: quantiles come back within 5% of the truth,
# which is finer than latency varies between two requests.
RATIO = 1.1
_LOG_RATIO = math.log(RATIO)
MAX_BUCKET = 200  # 1.1**200 ms is about 6 hours: everything longer lands here


@dataclass
class LatencyHistogram:
    """Milliseconds from sending a request to its reply, counted in buckets."""

    count: int = 0
    buckets: dict[int, int] = field(default_factory=dict)

    def add(self, latency_ms: int) -> None:
        index = 0 if latency_ms <= 1 else math.ceil(math.log(latency_ms) / _LOG_RATIO)
        index = min(index, MAX_BUCKET)
        self.buckets[index] = self.buckets.get(index, 0) + 1
        self.count += 1

    def quantile(self, share: float) -> int | None:
        """The latency (ms, the bucket's upper bound) under which `share` of the replies came;
        None before any reply."""
        if not self.count:
            return None
        rank = max(1, math.ceil(share * self.count))
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                return round(RATIO**index)
        raise AssertionError("unreachable: the counts add up to count")
