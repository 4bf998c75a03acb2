"""What the xAI simulator pretends: models and prices, the team's credit, latency, faults.

A scenario is plain data (loadable from TOML for `knrun sim serve --scenario FILE`), so a test,
the demo and a person at a terminal can all describe the world they want to rehearse against.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from knrun.tomlfile import problems, read_toml


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SimModel(_Data):
    id: str
    aliases: list[str] = []
    input: Decimal  # USD per million tokens, as on a models page
    cached_input: Decimal
    output: Decimal
    # False: gone from the live list but still answering at its old prices, as retired models
    # did in the April 2026 incident.
    listed: bool = True
    reasoning: bool = True  # spends reasoning tokens (billed as output) on every reply
    version: str = "1.0"
    fingerprint: str = "fp_sim0001"

    @field_validator("input", "cached_input", "output")
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
    # Every simulated duration (latency, billing lag, Retry-After) is multiplied by this:
    # 0.01 runs a 5 s call in 50 ms with the same shape.
    time_scale: float = Field(default=1.0, gt=0)


class Output(_Data):
    visible_tokens_mean: int = Field(default=900, ge=0)
    visible_tokens_sd: int = Field(default=250, ge=0)
    reasoning_tokens_mean: int = Field(default=2000, ge=0)
    reasoning_tokens_sd: int = Field(default=500, ge=0)


class Faults(_Data):
    """Rates per chat request, 0 to 1."""

    malformed_json: float = Field(default=0.0, ge=0, le=1)
    truncated: float = Field(default=0.0, ge=0, le=1)  # finish_reason "length"
    refusal: float = Field(default=0.0, ge=0, le=1)
    server_error: float = Field(default=0.0, ge=0, le=1)
    rate_limited: float = Field(default=0.0, ge=0, le=1)
    retry_after_s: float | None = Field(default=1.0, ge=0)  # sent with rate-limit 429s


class OtherSpender(_Data):
    """Someone else on the same team (another script, a colleague's run): after
    `after_requests` chat requests, they have spent all but `leaves_usd` of the prepaid credit."""

    after_requests: int = Field(ge=0)
    leaves_usd: Decimal = Field(ge=0)


def default_models() -> list[SimModel]:
    """Today's models as the simulator's live list, plus a retired one still being served."""
    fast = {"input": Decimal("0.20"), "cached_input": Decimal("0.05"), "output": Decimal("0.50")}
    return [
        SimModel(id="grok-4-1-fast-reasoning", aliases=["grok-4-1-fast"], **fast),
        SimModel(id="grok-4-1-fast-non-reasoning", reasoning=False, **fast),
        SimModel(
            id="grok-4.20-0309-reasoning",
            input=Decimal("2.00"),
            cached_input=Decimal("0.20"),
            output=Decimal("6.00"),
        ),
        SimModel(
            id="grok-3-fast",
            input=Decimal("3.00"),
            cached_input=Decimal("0.75"),
            output=Decimal("4.50"),
            listed=False,
            reasoning=False,
        ),
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
    credit_exhausted_status: int = 429  # 429 until early 2026, 403 since
    latency: Latency = Latency()
    output: Output = Output()
    faults: Faults = Faults()
    other_spender: OtherSpender | None = None
    seed: int = 7

    def model(self, name: str) -> SimModel | None:
        return next((m for m in self.models if name == m.id or name in m.aliases), None)


def load_scenario(path: Path) -> Scenario:
    data = read_toml(path, "scenario file", parse_float=Decimal)
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise problems(path, exc) from None
