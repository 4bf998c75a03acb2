"""What a run knows of the account's limits, as plain arithmetic: the rate they allow it, a
window someone else fills, and whether a 429's "(actual/limit)" claim can be believed.
`x-ratelimit-limit-*` headers are facts; a 429's text is a claim about some limit somewhere."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from knrun.run.live.ticks import Limit
from knrun.xai import LimitClaim

# The share of a known limit a run paces at: headroom for jitter in the provider's windows. A 1 s
# request window of a few dozen requests needs more of it than a 60 s token window, which
# averages hundreds of requests (at 95% a tokens-bound run reached only 0.90 of the limit).
REQUEST_SHARE, TOKEN_SHARE = 0.95, 0.97
NEAR = 0.8  # a claim is believable when this run sent at least this share of it
OVER_CLAIM = 1.2  # and had no more than this share of it accepted in its window


def cap(
    limits: Mapping[str, Limit], runners: int, tokens_per_request: float, min_rps: float
) -> float:
    """The highest rate the known limits allow one of `runners` runs sharing them."""
    rate = math.inf
    if (requests := limits.get("requests")) is not None:
        rate = min(rate, REQUEST_SHARE * requests.per_s / runners)
    if (tokens := limits.get("tokens")) is not None:
        rate = min(rate, TOKEN_SHARE * tokens.per_s / tokens_per_request / runners)
    return max(rate, min_rps)


def near(limits: Mapping[str, Limit], requests_1s: int, tokens_60s: int, runners: int) -> bool:
    """This run's sends in a known limit's window (requests in 1 s, tokens in 60 s) fill 90%
    or more of its share of it."""
    requests, tokens = limits.get("requests"), limits.get("tokens")
    if requests is not None and requests_1s >= 0.9 * requests.per_s / runners:
        return True
    per_minute = math.inf if tokens is None else tokens.per_s * 60.0 / runners
    return tokens_60s >= 0.9 * per_minute


def others_fill(limit: int | None, remaining: int | None, ours: int) -> bool:
    """A window under 5% from full, and not by this run's own sends alone: someone else
    (a run this one cannot see) spends the same limit."""
    if not limit or remaining is None or remaining >= 0.05 * limit:
        return False
    return limit - remaining > 1.2 * ours + 0.02 * limit


def believable(
    claim: LimitClaim,
    sends: Sequence[tuple[float, int]],
    accepted_in_window: float,
    now: float,
    runners: int,
) -> bool:
    """This run sent near what the claim says the limit is, in the claim's window (`sends`:
    (time, tokens) of its recent sends), and had no more than that accepted in it: a limit of
    30 a second cannot have let 70 through (a 429 somewhere else in the provider, with a stock
    text)."""
    horizon = now - claim.window_s
    recent = [tokens for at, tokens in sends if at >= horizon]
    ours = len(recent) if claim.kind == "requests" else sum(recent)
    if accepted_in_window > OVER_CLAIM * claim.limit:
        return False
    return ours >= NEAR * claim.limit / runners
