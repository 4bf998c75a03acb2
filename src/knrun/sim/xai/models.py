"""What the simulated xAI says about its models and its refusals' texts, and what it counts:
the model list entries, parameter checks, error bodies, and the run's statistics."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from knrun.sim.asgi import Response
from knrun.sim.scenario import SimModel

_REASONING_REJECTS = ("presence_penalty", "frequency_penalty", "stop")
FORCEABLE = (
    "rate_limited",
    "server_error",
    "credit_exhausted",
    "malformed_json",
    "truncated",
    "refusal",
    "missing_cost",
    "schema_refused",
)
RANDOM_FAULTS = ("rate_limited", "server_error", "malformed_json", "truncated", "refusal")


@dataclass
class XaiStats:
    chat_requests: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    billed_ticks: int = 0  # everything charged, whether or not the reply reached the client
    abandoned_requests: int = 0  # accepted and billed, but the client left before the reply
    abandoned_ticks: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    paid_by_prompt: Counter[str] = field(default_factory=Counter)  # paid requests per prompt
    latencies: list[float] = field(default_factory=list)  # simulated seconds, unscaled
    arrivals: list[float] = field(default_factory=list)  # clock time of each chat request
    answered: list[tuple[float, str]] = field(default_factory=list)  # (clock time, outcome)
    admitted: list[float] = field(default_factory=list)  # clock time of each accepted request

    @property
    def paid_requests(self) -> int:
        return sum(self.paid_by_prompt.values())

    @property
    def delivered_ticks(self) -> int:
        return self.billed_ticks - self.abandoned_ticks


def prompt_key(messages: list[dict[str, Any]]) -> str:
    """Identifies a unit's request by its user message (the part that differs per unit)."""
    user = next((m.get("content", "") for m in messages if m.get("role") == "user"), "")
    return hashlib.sha256(str(user).encode()).hexdigest()[:16]


def rate_text(team: str, model: str) -> str:
    """The text of a 429 injected beyond the windows (a busy shared cluster, say)."""
    return (
        f"Too many requests for team {team} and model {model}. "
        "Requests per Second (actual/limit): 31/30."
    )


def parameter_problem(model: SimModel, body: dict[str, Any]) -> str | None:
    if model.reasoning:
        for parameter in _REASONING_REJECTS:
            if parameter in body:
                camel = re.sub(r"_(\w)", lambda m: m[1].upper(), parameter)
                return f"Model {model.id} does not support parameter {camel}."
    effort = body.get("reasoning_effort")
    if effort is not None:
        if not model.efforts:
            return f"Model {model.id} does not support parameter reasoningEffort."
        if effort not in model.efforts:
            return f"Argument not supported: reasoning_effort={effort}"
    return None


def model_entry(model: SimModel) -> dict[str, Any]:
    return {
        "id": model.id,
        "fingerprint": model.fingerprint,
        "created": 1_767_225_600,
        "object": "model",
        "owned_by": "xai",
        "version": model.version,
        "input_modalities": ["text"],
        "output_modalities": ["text"],
        "prompt_text_token_price": model.ticks_per_token("input"),
        "cached_prompt_text_token_price": model.ticks_per_token("cached_input"),
        "prompt_image_token_price": 0,
        "completion_text_token_price": model.ticks_per_token("output"),
        "long_context_threshold": model.long_context_threshold,
        "prompt_text_token_price_long_context": model.ticks_per_token("input_long"),
        "cached_prompt_text_token_price_long_context": model.ticks_per_token("cached_input_long"),
        "completion_text_token_price_long_context": model.ticks_per_token("output_long"),
        "search_price": 0,
        "aliases": model.aliases,
    }


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response.json(status, {"code": code, "error": message}, headers)


def mask(key: str) -> str:
    return f"{key[:2]}***{key[-2:]}" if len(key) > 4 else "***"
