"""What xAI answers, as knrun reads it: a chat reply with its usage and rate-limit headers, and
the live model list with its prices."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict

from knrun.http import json_body, text_excerpt
from knrun.pricing import Usage, usd_per_m_from_live
from knrun.xai.errors import BadResponse, UnreadableReply


@dataclass(frozen=True)
class RateHeaders:
    """The `x-ratelimit-*` headers of a successful reply (observed live, not documented)."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None

    @classmethod
    def read(cls, headers: httpx.Headers | Mapping[str, str]) -> RateHeaders | None:
        """From a reply's headers (httpx's, or a mapping with lower-cased names)."""
        values = {}
        for name in ("limit-requests", "remaining-requests", "limit-tokens", "remaining-tokens"):
            raw = headers.get(f"x-ratelimit-{name}")
            if raw is None:
                continue
            with contextlib.suppress(TypeError, ValueError):
                values[name.replace("-", "_")] = int(float(raw))
        return cls(**values) if values else None


@dataclass(frozen=True)
class ChatReply:
    content: str | None
    finish_reason: str | None
    refusal: str | None
    usage: Usage
    model: str
    rate: RateHeaders | None = None


@dataclass(frozen=True)
class LiveModel:
    """One entry of the live language-model list. Prices in USD per million tokens."""

    id: str
    aliases: tuple[str, ...]
    version: str | None
    fingerprint: str | None
    input: Decimal
    cached_input: Decimal
    output: Decimal
    # A prompt of at least this many tokens is billed at the *_long prices (0: no such tier).
    long_context_threshold: int = 0
    input_long: Decimal = Decimal(0)
    cached_input_long: Decimal = Decimal(0)
    output_long: Decimal = Decimal(0)

    def names(self) -> set[str]:
        return {self.id, *self.aliases}


@dataclass(frozen=True)
class ApiKeyInfo:
    team_id: str
    name: str | None
    blocked: bool


class LiveModelEntry(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    aliases: list[str] = []
    version: str | None = None
    fingerprint: str | None = None
    prompt_text_token_price: int = 0
    cached_prompt_text_token_price: int = 0
    completion_text_token_price: int = 0
    long_context_threshold: int = 0
    prompt_text_token_price_long_context: int = 0
    cached_prompt_text_token_price_long_context: int = 0
    completion_text_token_price_long_context: int = 0

    def to_live(self) -> LiveModel:
        return LiveModel(
            id=self.id,
            aliases=tuple(self.aliases),
            version=self.version,
            fingerprint=self.fingerprint,
            input=usd_per_m_from_live(self.prompt_text_token_price),
            cached_input=usd_per_m_from_live(self.cached_prompt_text_token_price),
            output=usd_per_m_from_live(self.completion_text_token_price),
            long_context_threshold=self.long_context_threshold,
            input_long=usd_per_m_from_live(self.prompt_text_token_price_long_context),
            cached_input_long=usd_per_m_from_live(self.cached_prompt_text_token_price_long_context),
            output_long=usd_per_m_from_live(self.completion_text_token_price_long_context),
        )


def find_live(models: Sequence[LiveModel], name: str) -> LiveModel | None:
    """The live model whose id or alias is `name`."""
    return next((model for model in models if name in model.names()), None)


def json_of(response: httpx.Response, path: str) -> Any:
    data = json_body(response)
    if data is None:
        problem = f"xAI {path}: reply is not JSON: {text_excerpt(response, 120)}"
        raise BadResponse(problem) if path == "/chat/completions" else UnreadableReply(problem)
    return data


def parse_chat(data: Any, requested_model: str) -> ChatReply:
    try:
        choice = data["choices"][0]
        message = choice.get("message") or {}
        usage = data["usage"]
        prompt = int(usage["prompt_tokens"])
        completion = int(usage.get("completion_tokens") or 0)
        total = usage.get("total_tokens")
        details_in = usage.get("prompt_tokens_details") or {}
        details_out = usage.get("completion_tokens_details") or {}
        # Reasoning tokens are billed as output but sit outside completion_tokens: trust
        # total - prompt - completion when the total is there, as xAI's bill does.
        reasoning = (
            int(total) - prompt - completion
            if total is not None
            else int(details_out.get("reasoning_tokens") or 0)
        )
        billed = usage.get("cost_in_usd_ticks")
        return ChatReply(
            content=message.get("content"),
            finish_reason=choice.get("finish_reason"),
            refusal=message.get("refusal"),
            usage=Usage(
                prompt_tokens=prompt,
                completion_tokens=completion,
                cached_tokens=int(details_in.get("cached_tokens") or 0),
                reasoning_tokens=max(reasoning, 0),
                billed_ticks=None if billed is None else int(billed),
            ),
            model=str(data.get("model") or requested_model),
        )
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        raise BadResponse(
            f"xAI chat reply lacks choices or usage: {json.dumps(data)[:200]}"
        ) from None
