"""What the xAI simulator pretends: models and prices, the team's credit, latency, rate limits and
faults. Written from the public record (design section 6), not from what knrun expects.

A scenario is plain data (loadable from TOML for `knrun sim serve --scenario FILE`), so a test,
the demo and a person at a terminal can all describe the world they want to rehearse against.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from knrun.tomlfile import problems, read_toml

PRICE_KINDS = ("input", "cached_input", "output", "input_long", "cached_input_long", "output_long")


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SimModel(_Data):
    id: str
    aliases: list[str] = []
    input: Decimal  # USD per million tokens, as on a models page
    cached_input: Decimal
    output: Decimal
    # A prompt of at least this many tokens is billed at the *_long prices for all its tokens;
    # 0: the model has no long-context tier.
    long_context_threshold: int = Field(default=0, ge=0)
    input_long: Decimal = Decimal(0)
    cached_input_long: Decimal = Decimal(0)
    output_long: Decimal = Decimal(0)
    # False: gone from the live list. `served` says whether requests still work: grok-3-fast was
    # still answered at legacy prices in the April 2026 incident; the grok-4-1-fast family was
    # switched off on 2026-05-15 ("requests will no longer work").
    listed: bool = True
    served: bool = True
    reasoning: bool = True  # spends reasoning tokens (billed as output) on every reply
    # reasoning_effort values the model accepts; empty: it rejects the parameter (400).
    efforts: list[str] = []
    default_effort: str | None = None
    max_prompt_tokens: int = Field(default=256_000, gt=0)
    version: str = "1.0"
    fingerprint: str = "fp_sim0001"
    # The Batch API's discount on this model (0.20: 20% off everything); None: the Batch API
    # refuses the model ("Model X is not supported for batch processing.").
    batch_discount: Decimal | None = None

    @field_validator(*PRICE_KINDS)
    @classmethod
    def _whole_ticks(cls, value: Decimal) -> Decimal:
        if value < 0 or (value * 10_000) % 1:
            raise ValueError("prices need at most 4 decimals (whole ticks per token)")
        return value

    def ticks_per_token(self, kind: str) -> int:
        return int(getattr(self, kind) * 10_000)


class Latency(_Data):
    median_s: float = Field(default=5.0, ge=0)  # lognormal around this median
    sigma: float = Field(default=0.35, ge=0)
    # Every simulated duration (latency, billing lag, Retry-After, rate-limit windows) is
    # multiplied by this: 0.01 runs a 5 s call in 50 ms with the same shape.
    time_scale: float = Field(default=1.0, gt=0)


class Output(_Data):
    visible_tokens_mean: int = Field(default=900, ge=0)
    visible_tokens_sd: int = Field(default=250, ge=0)
    reasoning_tokens_mean: int = Field(default=2000, ge=0)  # at the model's default effort
    reasoning_tokens_sd: int = Field(default=500, ge=0)


class RateLimits(_Data):
    """Per model, rolling windows, as xAI enforces them (tier 0 for grok-4.3: 30 requests/s,
    10M tokens/min). None: no limit. Prompt, completion and reasoning tokens all count."""

    requests_per_s: float | None = Field(default=None, gt=0)
    tokens_per_min: int | None = Field(default=None, gt=0)


class Faults(_Data):
    """Rates per chat request, 0 to 1."""

    malformed_json: float = Field(default=0.0, ge=0, le=1)
    truncated: float = Field(default=0.0, ge=0, le=1)  # finish_reason "length"
    refusal: float = Field(default=0.0, ge=0, le=1)
    server_error: float = Field(default=0.0, ge=0, le=1)
    rate_limited: float = Field(default=0.0, ge=0, le=1)  # 429s beyond the real windows
    # Seconds of Retry-After on 429s. None (the default): none is sent, as live.
    retry_after_s: float | None = Field(default=None, ge=0)
    # Replies whose usage carries no cost_in_usd_ticks (a proxy that drops fields, say).
    missing_cost: float = Field(default=0.0, ge=0, le=1)


class BatchBehaviour(_Data):
    """How the simulated Batch API treats requests (durations in simulated seconds, scaled by
    `latency.time_scale`). The defaults are the hostile ones the public record allows: results
    in no order, reads that disagree, a cancel that takes time, random 429s."""

    # A request is done this long after it was added, give or take half (results come early,
    # and unordered).
    delay_s: float = Field(default=600.0, ge=0)
    error_rate: float = Field(default=0.0, ge=0, le=1)  # per-request errors in the results
    add_latency_s: float = Field(default=0.2, ge=0)  # what one add-requests call takes
    # This many add calls are applied, then answered 503 (the client cannot tell they landed).
    adds_applied_then_503: int = Field(default=0, ge=0)
    # This many add calls are answered 503 without being applied.
    adds_refused_503: int = Field(default=0, ge=0)
    # xAI cancels the batch itself once this many of its requests are done (None: never).
    xai_cancels_after: int | None = Field(default=None, ge=0)
    xai_cancel_message: str = "Batch cancelled by xAI: the team's batch quota was exceeded."
    # How the results list is ordered: completion (appended as they end), newest_first, or
    # shuffled (by a hash: a new result lands anywhere, and shifts every page after it).
    results_order: Literal["completion", "newest_first", "shuffled"] = "shuffled"
    trailing_empty_page: bool = True  # the last page carries a token to an empty page
    # The counters, the results list and the request list each learn of a request's end up to
    # this late, independently: any two reads can disagree, either way.
    view_lag_s: float = Field(default=20.0, ge=0)
    ids_lag_s: float = Field(default=10.0, ge=0)  # a new request joins the request list late
    # A cancel reaches every request only after this: those due meanwhile run, and are billed.
    cancel_spread_s: float = Field(default=5.0, ge=0)
    rate_limited_rate: float = Field(default=0.02, ge=0, le=1)  # any call, answered 429
    # A batch read whose `state` (the counters) is left out ("Not always populated").
    counters_missing_rate: float = Field(default=0.05, ge=0, le=1)
    # Cancelled requests listed among the results as errors (gRPC code 1, CANCELLED).
    cancelled_in_results: bool = True
    creates_per_s: float = Field(default=2.0, gt=0)
    add_calls_per_30s: int = Field(default=1000, gt=0)


class OtherSpender(_Data):
    """Someone else on the same team (another script, a colleague's run): after
    `after_requests` chat requests, they have spent all but `leaves_usd` of the prepaid credit."""

    after_requests: int = Field(ge=0)
    leaves_usd: Decimal = Field(ge=0)


def _model(name: str, prices: tuple[str, str, str], **kwargs: object) -> SimModel:
    input_, cached, output = prices
    fields = {"id": name, "input": input_, "cached_input": cached, "output": output, **kwargs}
    return SimModel.model_validate(fields)


def default_models() -> list[SimModel]:
    """The late-2026 live list, the models retired on 2026-05-15, and the incident's model."""
    grok_43 = ("1.25", "0.20", "2.50")
    # Prompts of 200k tokens or more: every token at the long-context rate (docs.x.ai).
    long_43 = {
        "long_context_threshold": 200_000,
        "input_long": "2.50",
        "cached_input_long": "0.40",
        "output_long": "5.00",
    }
    gone = {"listed": False, "served": False}
    return [
        _model(
            "grok-4.3",
            grok_43,
            aliases=["grok-4.3-latest"],
            efforts=["none", "low", "medium", "high"],
            default_effort="low",
            batch_discount="0.20",
            **long_43,
        ),
        _model("grok-4.20-0309-reasoning", grok_43, batch_discount="0.20", **long_43),
        _model(
            "grok-4.20-0309-non-reasoning",
            grok_43,
            reasoning=False,
            batch_discount="0.20",
            **long_43,
        ),
        _model(
            "grok-4.5",
            ("2.00", "0.30", "6.00"),
            efforts=["low", "medium", "high", "xhigh"],
            default_effort="high",
        ),
        _model(
            "grok-4.6",
            ("2.00", "0.50", "6.00"),
            efforts=["low", "medium", "high", "xhigh"],
            default_effort="high",
        ),
        _model("grok-4-1-fast-reasoning", ("0.20", "0.05", "0.50"), **gone),
        _model("grok-4-1-fast-non-reasoning", ("0.20", "0.05", "0.50"), reasoning=False, **gone),
        # Gone from the list but still answering at legacy prices: the April 2026 incident.
        _model("grok-3-fast", ("3.00", "0.75", "4.50"), listed=False, reasoning=False),
    ]


class Scenario(_Data):
    team_id: str = "sim-team-0001"
    api_key: str = "xai-sim-api-key-0001"
    management_key: str = "xai-sim-management-key-0001"
    models: list[SimModel] = Field(default_factory=default_models)
    balance_usd: Decimal = Decimal("25.00")  # prepaid credit at the start
    spending_limit_usd: Decimal = Decimal("0")  # monthly postpaid limit past prepaid credit
    # Seconds before a request's cost reaches the ledger: requests keep being accepted meanwhile,
    # which is how a run overshoots its credit by a few dollars at high concurrency.
    billing_lag_s: float = Field(default=3.0, ge=0)
    credit_exhausted_status: int = 403  # 429 until early 2026, 403 since mid-2026
    # How an unknown model name is refused on chat: 404 JSON "does not exist" or 400 plain text
    # "Model not found: X" (both seen live).
    unknown_model_status: int = 404
    latency: Latency = Latency()
    output: Output = Output()
    limits: RateLimits = RateLimits()
    faults: Faults = Faults()
    other_spender: OtherSpender | None = None
    batch: BatchBehaviour = BatchBehaviour()
    # xAI serves a conversation's repeated system prompt from its cache (cheaper cached input);
    # False: it never does (what a client without a conversation id gets).
    prompt_cache: bool = True
    seed: int = 7

    def model(self, name: str) -> SimModel | None:
        return next((m for m in self.models if name == m.id or name in m.aliases), None)


def load_scenario(path: Path) -> Scenario:
    data = read_toml(path, "scenario file", parse_float=Decimal)
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise problems(path, exc) from None
