"""An xAI simulator: chat completions, the live model list, the API key, and the Management API's
prepaid balance, as one ASGI app (in-process through `httpx.ASGITransport`, or served on a port).

It bills every reply from its own price list and draws the prepaid balance down after a billing
lag, so a wrong `pricing.toml` shows up as a difference between tracked and billed cost, and a run
that outlives its credit sees the real "used all available credits" refusal, as it would live.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import re
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from knrun.sim.asgi import (
    Receive,
    Request,
    Response,
    Scope,
    Send,
    handle_lifespan,
    read_request,
    send_response,
)
from knrun.sim.scenario import Scenario, SimModel

TICKS_PER_CENT = 10**8
_BALANCE = re.compile(r"^/v1/billing/teams/(?P<team>[^/]+)/prepaid/balance$")
_LIMITS = re.compile(r"^/v1/billing/teams/(?P<team>[^/]+)/postpaid/spending-limits$")
_MODEL = re.compile(r"^/v1/language-models/(?P<model>[^/]+)$")
_REASONING_REJECTS = ("presence_penalty", "frequency_penalty", "stop")
FORCEABLE = (
    "rate_limited",
    "server_error",
    "credit_exhausted",
    "malformed_json",
    "truncated",
    "refusal",
)
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


@dataclass
class XaiStats:
    chat_requests: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    billed_ticks: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    paid_by_prompt: Counter[str] = field(default_factory=Counter)  # paid replies per prompt
    latencies: list[float] = field(default_factory=list)  # simulated seconds, unscaled
    arrivals: list[float] = field(default_factory=list)  # clock time of each chat request
    answered: list[tuple[float, str]] = field(default_factory=list)  # (clock time, outcome)

    @property
    def paid_requests(self) -> int:
        return sum(self.paid_by_prompt.values())


def prompt_key(messages: list[dict[str, Any]]) -> str:
    """Identifies a unit's request by its user message (the part that differs per unit)."""
    user = next((m.get("content", "") for m in messages if m.get("role") == "user"), "")
    return hashlib.sha256(str(user).encode()).hexdigest()[:16]


class XaiSimulator:
    def __init__(
        self,
        scenario: Scenario | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.scenario = scenario or Scenario()
        self._clock = clock
        self._sleep = sleep
        self._rng = random.Random(self.scenario.seed)  # noqa: S311 - simulation, not secrets
        self.balance_ticks = int(self.scenario.balance_usd * 100) * TICKS_PER_CENT
        self.purchased_ticks = self.balance_ticks
        self._unsettled: deque[tuple[float, int]] = deque()  # (due time, ticks)
        self._conversations: set[str] = set()
        self.forced: deque[str] = deque()
        self.stats = XaiStats()

    # -- for tests and the demo -------------------------------------------------------------------

    def transport(self) -> httpx.AsyncBaseTransport:
        return httpx.ASGITransport(app=self)

    def force(self, outcome: str, count: int = 1) -> None:
        """The next `count` chat requests get `outcome`, whatever the random faults say."""
        if outcome not in FORCEABLE:
            raise ValueError(f"unknown outcome {outcome!r}; one of {', '.join(FORCEABLE)}")
        self.forced.extend([outcome] * count)

    def settled_balance_ticks(self) -> int:
        """What the ledger shows now: costs older than the billing lag are charged."""
        now = self._clock()
        while self._unsettled and self._unsettled[0][0] <= now:
            self.balance_ticks -= self._unsettled.popleft()[1]
        return self.balance_ticks

    def price_usage(self, model: SimModel, prompt: int, cached: int, output: int) -> int:
        return (
            (prompt - cached) * model.ticks_per_token("input")
            + cached * model.ticks_per_token("cached_input")
            + output * model.ticks_per_token("output")
        )

    # -- ASGI -------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await handle_lifespan(receive, send)
            return
        request = await read_request(scope, receive)
        await send_response(send, await self.handle(request))

    async def handle(self, request: Request) -> Response:
        path = request.path.rstrip("/")
        if path.startswith("/v1/billing/"):
            return self._management(request, path)
        if request.bearer() is None:
            return _error(401, "unauthenticated", "No API key provided. Send it as a Bearer token.")
        if request.bearer() != self.scenario.api_key:
            return _error(
                400,
                "invalid-argument",
                "Incorrect API key provided: "
                f"{_mask(request.bearer() or '')}. You can obtain an API key from "
                "https://console.x.ai.",
            )
        if request.method == "POST" and path == "/v1/chat/completions":
            return await self._chat(request)
        if request.method == "GET":
            if path == "/v1/language-models":
                return Response.json(
                    200, {"models": [self._model_entry(m) for m in self._listed()]}
                )
            if match := _MODEL.match(path):
                model = self.scenario.model(match["model"])
                if model is None or not model.listed:
                    return self._model_missing(match["model"])
                return Response.json(200, self._model_entry(model))
            if path == "/v1/models":  # the OpenAI-compatible list
                data = [
                    {"id": m.id, "object": "model", "created": 1_767_225_600, "owned_by": "xai"}
                    for m in self._listed()
                ]
                return Response.json(200, {"object": "list", "data": data})
            if path == "/v1/api-key":
                return Response.json(200, self._api_key())
        return _error(404, "not-found", f"No handler for {request.method} {path}")

    # -- chat -------------------------------------------------------------------------------------

    async def _chat(self, request: Request) -> Response:
        self.stats.chat_requests += 1
        self.stats.arrivals.append(self._clock())
        spender = self.scenario.other_spender
        if spender is not None and self.stats.chat_requests == spender.after_requests:
            left = int(spender.leaves_usd * 100) * TICKS_PER_CENT
            self.balance_ticks = min(self.balance_ticks, left)
        try:
            body = request.json()
            messages = body["messages"]
            name = body["model"]
        except (ValueError, KeyError, TypeError):
            return self._outcome(
                "bad_request", _error(400, "invalid-argument", "Invalid request body")
            )
        model = self.scenario.model(name)
        if model is None:
            return self._outcome("model_missing", self._model_missing(name))
        if model.reasoning:
            for parameter in _REASONING_REJECTS:
                if parameter in body:
                    camel = re.sub(r"_(\w)", lambda m: m[1].upper(), parameter)
                    return self._outcome(
                        "bad_request",
                        _error(
                            400,
                            "invalid-argument",
                            f"Model {name} does not support parameter {camel}.",
                        ),
                    )
        outcome = self._pick_outcome()
        if outcome == "rate_limited":
            return self._outcome(outcome, self._rate_limited(name))
        if outcome == "server_error":
            return self._outcome(
                outcome,
                _error(
                    503, "unavailable", "The service is temporarily unavailable. Please try again."
                ),
            )
        if outcome == "credit_exhausted" or self.settled_balance_ticks() <= 0:
            return self._outcome("credit_exhausted", self._credit_exhausted())

        self.stats.in_flight += 1
        self.stats.peak_in_flight = max(self.stats.peak_in_flight, self.stats.in_flight)
        try:
            latency = self._latency()
            await self._sleep(latency * self.scenario.latency.time_scale)
        finally:
            self.stats.in_flight -= 1
        reply = self._reply(body, model, messages, outcome, request.headers.get("x-grok-conv-id"))
        self.stats.latencies.append(latency)
        return self._outcome(outcome or "ok", Response.json(200, reply))

    def _pick_outcome(self) -> str | None:
        if self.forced:
            return self.forced.popleft()
        faults = self.scenario.faults
        roll = self._rng.random()
        for name in ("rate_limited", "server_error", "malformed_json", "truncated", "refusal"):
            rate = getattr(faults, name)
            if roll < rate:
                return name
            roll -= rate
        return None

    def _reply(
        self,
        body: dict[str, Any],
        model: SimModel,
        messages: list[dict[str, Any]],
        outcome: str | None,
        conv_id: str | None,
    ) -> dict[str, Any]:
        text_of = [str(m.get("content") or "") for m in messages]
        prompt = sum(_tokens(text) for text in text_of)
        system = sum(
            _tokens(str(m.get("content") or "")) for m in messages if m.get("role") == "system"
        )
        cached = system if conv_id and conv_id in self._conversations else 0
        if conv_id:
            self._conversations.add(conv_id)
        shape = self.scenario.output
        visible = max(1, round(self._rng.gauss(shape.visible_tokens_mean, shape.visible_tokens_sd)))
        reasoning = 0
        if model.reasoning:
            reasoning = max(
                0, round(self._rng.gauss(shape.reasoning_tokens_mean, shape.reasoning_tokens_sd))
            )
        cap = int(body.get("max_completion_tokens") or body.get("max_tokens") or 10**9)
        finish = "stop"
        if outcome == "truncated" or visible > cap:
            visible, finish = min(visible, cap), "length"
        schema = ((body.get("response_format") or {}).get("json_schema") or {}).get("schema")
        text = _content(schema, visible, self._rng)
        content: str | None = text
        refusal = None
        if finish == "length":
            content = text[: max(1, int(len(text) * 0.7))]
        elif outcome == "malformed_json":
            content = text.replace('":', '"', 1)[:-1]  # a missing colon and closing brace
        elif outcome == "refusal":
            content, refusal, visible = None, "I can't help with that request.", 8
        cost = self.price_usage(model, prompt, cached, visible + reasoning)
        self.stats.billed_ticks += cost
        self.stats.paid_by_prompt[prompt_key(messages)] += 1
        due = self._clock() + self.scenario.billing_lag_s * self.scenario.latency.time_scale
        self._unsettled.append((due, cost))
        return {
            "id": f"sim-{self.stats.chat_requests}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model.id,
            "system_fingerprint": model.fingerprint,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": refusal},
                    "finish_reason": finish,
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": visible,
                "total_tokens": prompt + visible + reasoning,
                "prompt_tokens_details": {
                    "text_tokens": prompt,
                    "cached_tokens": cached,
                    "audio_tokens": 0,
                    "image_tokens": 0,
                },
                "completion_tokens_details": {
                    "reasoning_tokens": reasoning,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
                "num_sources_used": 0,
                "cost_in_usd_ticks": cost,
            },
        }

    def _latency(self) -> float:
        shape = self.scenario.latency
        if shape.median_s <= 0:
            return 0.0
        return self._rng.lognormvariate(math.log(shape.median_s), shape.sigma)

    def _outcome(self, name: str, response: Response) -> Response:
        self.stats.outcomes[name] += 1
        self.stats.answered.append((self._clock(), name))
        return response

    # -- other endpoints --------------------------------------------------------------------------

    def _listed(self) -> list[SimModel]:
        return [m for m in self.scenario.models if m.listed]

    @staticmethod
    def _model_entry(model: SimModel) -> dict[str, Any]:
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
            "search_price": 0,
            "aliases": model.aliases,
        }

    def _api_key(self) -> dict[str, Any]:
        return {
            "redacted_api_key": _mask(self.scenario.api_key),
            "user_id": "sim-user",
            "name": "knrun simulator key",
            "create_time": "2026-01-01T00:00:00Z",
            "modify_time": "2026-01-01T00:00:00Z",
            "modified_by": "sim-user",
            "team_id": self.scenario.team_id,
            "acls": ["api-key:model:*", "api-key:endpoint:*"],
            "api_key_id": "sim-key-id",
            "team_blocked": False,
            "api_key_blocked": False,
            "api_key_disabled": False,
        }

    def _management(self, request: Request, path: str) -> Response:
        if request.bearer() != self.scenario.management_key:
            return _error(401, "unauthenticated", "Invalid management key")
        match = _BALANCE.match(path) or _LIMITS.match(path)
        if request.method != "GET" or match is None:
            return _error(404, "not-found", f"No handler for {request.method} {path}")
        if match["team"] != self.scenario.team_id:
            return _error(403, "permission-denied", "The management key cannot access this team")
        if match.re is _LIMITS:
            cents = str(int(self.scenario.spending_limit_usd * 100))
            return Response.json(
                200,
                {
                    "spendingLimits": {
                        "effectiveSl": {"val": cents},
                        "effectiveHardSl": {"val": cents},
                    }
                },
            )
        balance_cents = self.settled_balance_ticks() // TICKS_PER_CENT
        purchased = self.purchased_ticks // TICKS_PER_CENT
        team = self.scenario.team_id
        return Response.json(
            200,
            {
                "changes": [
                    {
                        "teamId": team,
                        "changeOrigin": "PURCHASE",
                        "amount": {"val": str(-purchased)},
                    },
                    {
                        "teamId": team,
                        "changeOrigin": "SPEND",
                        "amount": {"val": str(purchased - balance_cents)},
                    },
                ],
                "total": {"val": str(-balance_cents)},
            },
        )

    def _model_missing(self, name: str) -> Response:
        return _error(
            404,
            "not-found",
            f"The model {name} does not exist or your team "
            f"{self.scenario.team_id} does not have access to it.",
        )

    def _rate_limited(self, model: str) -> Response:
        retry = self.scenario.faults.retry_after_s
        headers = (
            {}
            if retry is None
            else {"retry-after": f"{retry * self.scenario.latency.time_scale:g}"}
        )
        return _error(
            429,
            "resource-exhausted",
            f"Too many requests for team {self.scenario.team_id} "
            f"and model {model}. Requests per Minute (actual/limit): 481/480.",
            headers,
        )

    def _credit_exhausted(self) -> Response:
        status = self.scenario.credit_exhausted_status
        code = "resource-exhausted" if status == 429 else "permission-denied"
        return _error(
            status,
            code,
            f"Your team {self.scenario.team_id} has either used all "
            "available credits or reached its monthly spending limit. To continue making "
            "API requests, please purchase more credits or raise your spending limit.",
        )


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response.json(status, {"code": code, "error": message}, headers)


def _mask(key: str) -> str:
    return f"{key[:2]}***{key[-2:]}" if len(key) > 4 else "***"


def _tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


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


def _content(schema: Any, visible_tokens: int, rng: random.Random) -> str:
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
