"""An xAI simulator written from the public record (design section 6), not from knrun's own
assumptions: chat completions, the live model list, the API key, and the Management API's
prepaid balance, as one ASGI app (in-process through `httpx.ASGITransport`, or on a port).

It is hostile the ways the real service is. It bills a request the moment it accepts it, so a
client that gives up waiting is still charged (and the simulator says how much was billed
unseen). Rate limits are rolling windows per second and per minute, refused with the real
"(actual/limit)" texts and no Retry-After; `x-ratelimit-*` headers come on successful replies
only. Credit exhaustion is 403. Some error bodies are plain text. A reply can lack
`cost_in_usd_ticks`. The prepaid balance falls after a billing lag, so a run overshoots.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable

import httpx

from knrun.sim.account import Account
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
from knrun.sim.batch import BatchService
from knrun.sim.management import Management
from knrun.sim.ratelimit import RateLimiter
from knrun.sim.scenario import Scenario
from knrun.sim.xai.chat import ChatEndpoint, Disconnected
from knrun.sim.xai.models import FORCEABLE, XaiStats, error, mask, model_entry

_MODEL = re.compile(r"^/v1/language-models/(?P<model>[^/]+)$")


class XaiSimulator(ChatEndpoint):
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
        self.account = Account(self.scenario, clock)
        self._conversations: set[str] = set()
        self.forced: deque[str] = deque()
        self.stats = XaiStats()
        self.limits = RateLimiter(self.scenario.limits, clock, self.scenario.latency.time_scale)
        self.management = Management(self.scenario, self.account)
        self.batch = BatchService(self)

    # -- for tests and the demo -------------------------------------------------------------------

    def transport(self) -> httpx.AsyncBaseTransport:
        return httpx.ASGITransport(app=self)

    def force(self, outcome: str, count: int = 1) -> None:
        """The next `count` chat requests get `outcome`, whatever the random faults say."""
        if outcome not in FORCEABLE:
            raise ValueError(f"unknown outcome {outcome!r}; one of {', '.join(FORCEABLE)}")
        self.forced.extend([outcome] * count)

    @property
    def balance_ticks(self) -> int:
        """The team's prepaid balance as it stands (tests set it to stage an exhausted team)."""
        return self.account.balance_ticks

    @balance_ticks.setter
    def balance_ticks(self, ticks: int) -> None:
        self.account.balance_ticks = ticks

    @property
    def purchased_ticks(self) -> int:
        return self.account.purchased_ticks

    def settled_balance_ticks(self) -> int:
        return self.account.settled_balance_ticks()

    # -- shared with the Batch API ----------------------------------------------------------------

    def now(self) -> float:
        return self._clock()

    async def pause(self, simulated_s: float) -> None:
        await self._sleep(simulated_s * self.scenario.latency.time_scale)

    def chance(self) -> float:
        """A uniform draw in [0, 1) from the scenario's seeded randomness."""
        return self._rng.random()

    def credit_refusal(self) -> Response:
        return self.account.credit_refusal()

    # -- ASGI -------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await handle_lifespan(receive, send)
            return
        request = await read_request(scope, receive)

        async def disconnected() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        await send_response(send, await self.handle(request, disconnected))

    async def handle(self, request: Request, disconnected: Disconnected | None = None) -> Response:
        path = request.path.rstrip("/")
        if path.startswith("/v1/billing/"):
            return self.management.handle(request, path)
        if request.bearer() is None:
            return error(401, "unauthenticated", "No API key provided. Send it as a Bearer token.")
        if request.bearer() != self.scenario.api_key:
            return error(
                400,
                "invalid-argument",
                "Incorrect API key provided: "
                f"{mask(request.bearer() or '')}. You can obtain an API key from "
                "https://console.x.ai.",
            )
        if request.method == "POST" and path == "/v1/chat/completions":
            return await self._chat(request, disconnected)
        if path == "/v1/batches" or path.startswith("/v1/batches/"):
            return await self.batch.handle(request, path)
        if request.method == "GET":
            return self._get(path)
        return error(404, "not-found", f"No handler for {request.method} {path}")

    def _get(self, path: str) -> Response:
        if path == "/v1/language-models":
            return Response.json(200, {"models": [model_entry(m) for m in self._listed()]})
        if match := _MODEL.match(path):
            model = self.scenario.model(match["model"])
            if model is None or not model.listed:
                return self._model_missing(match["model"])
            return Response.json(200, model_entry(model))
        if path == "/v1/models":  # the OpenAI-compatible list
            data = [
                {"id": m.id, "object": "model", "created": 1_767_225_600, "owned_by": "xai"}
                for m in self._listed()
            ]
            return Response.json(200, {"object": "list", "data": data})
        if path == "/v1/api-key":
            return Response.json(200, self.management.api_key())
        return error(404, "not-found", f"No handler for GET {path}")
