"""What a simulated model answers and what it costs: token counts, reasoning by effort, the JSON
content for a schema, and the price of a usage as xAI bills it (long context included)."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from typing import Any

from knrun.sim.scenario import Output, SimModel

# Reasoning spent at each effort, relative to the model's default effort.
EFFORT_SCALE = {"none": 0.0, "low": 1.0, "medium": 2.0, "high": 4.0, "xhigh": 8.0}
_WORDS = [
    "competency",
    "workplace",
    "safety",
    "procedure",
    "learner",
    "evidence",
    "criteria",
    "practice",
    "team",
    "record",
    "risk",
    "client",
    "quality",
    "assessment",
    "task",
    "standard",
    "review",
    "report",
    "plan",
]


def tokens(text: str) -> int:
    """About four characters a token, as the simulator's tokenizer."""
    return math.ceil(len(text) / 4)


@dataclass(frozen=True)
class Usage:
    prompt: int
    cached: int
    visible: int
    reasoning: int

    @property
    def output(self) -> int:
        return self.visible + self.reasoning

    @property
    def total(self) -> int:
        return self.prompt + self.output


def price_usage(model: SimModel, usage: Usage) -> int:
    """Ticks billed for `usage`. A prompt at or past the long-context threshold is billed at the
    long-context prices for all its tokens, input and output alike."""
    long = 0 < model.long_context_threshold <= usage.prompt
    suffix = "_long" if long else ""
    return (
        (usage.prompt - usage.cached) * model.ticks_per_token("input" + suffix)
        + usage.cached * model.ticks_per_token("cached_input" + suffix)
        + usage.output * model.ticks_per_token("output" + suffix)
    )


def reasoning_tokens(model: SimModel, effort: str | None, shape: Output, rng: random.Random) -> int:
    if not model.reasoning:
        return 0
    base = rng.gauss(shape.reasoning_tokens_mean, shape.reasoning_tokens_sd)
    default = EFFORT_SCALE.get(model.default_effort or "low", 1.0) or 1.0
    scale = EFFORT_SCALE.get(effort, default) / default if effort else 1.0
    return max(0, round(base * scale))


def _filler(size: int = 1 << 16) -> str:
    rng = random.Random(0)  # noqa: S311 - filler text, not secrets
    words: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(_WORDS)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)


_FILLER = _filler()


def content(schema: Any, visible_tokens: int, rng: random.Random) -> str:
    """A JSON object that fits the schema, about `visible_tokens` long (4 characters a token).
    Text is cut from a prepared filler, so the simulator stays cheap next to the runner."""
    properties = (schema or {}).get("properties") or {"text": {"type": "string"}}
    strings = [name for name, spec in properties.items() if spec.get("type") == "string"]
    chars_each = min(max(8, visible_tokens * 4 // max(len(strings), 1)), len(_FILLER) // 2)
    value: dict[str, Any] = {}
    for name, spec in properties.items():
        kind = spec.get("type")
        if kind == "string":
            start = rng.randrange(len(_FILLER) - chars_each)
            value[name] = _FILLER[start : start + chars_each].strip() or "text"
        elif kind == "integer":
            value[name] = rng.randint(1, 100)
        elif kind == "number":
            value[name] = round(rng.random() * 100, 2)
        elif kind == "boolean":
            value[name] = rng.random() < 0.5
        elif kind == "array":
            value[name] = [rng.choice(_WORDS) for _ in range(3)]
    return json.dumps(value)


def spoil(text: str, outcome: str | None, finish: str) -> tuple[str | None, str | None]:
    """The reply's (content, refusal) after a fault: cut short, malformed or refused."""
    if finish == "length":
        return text[: max(1, int(len(text) * 0.7))], None
    if outcome == "malformed_json":
        return text.replace('":', '"', 1)[:-1], None  # a missing colon and closing brace
    if outcome == "refusal":
        return None, "I can't help with that request."
    return text, None
