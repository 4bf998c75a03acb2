"""The xAI API, xAI's Management API and Cloudflare's D1 REST API on one ASGI app, so one
loopback port stands in for all three: paths under /client/v4/ go to D1, the rest to xAI."""

from __future__ import annotations

from knrun.sim.asgi import Receive, Scope, Send, handle_lifespan
from knrun.sim.d1 import D1Simulator
from knrun.sim.xai import XaiSimulator

D1_PREFIX = "/client/v4/"


class Simulators:
    def __init__(self, xai: XaiSimulator, d1: D1Simulator | None = None) -> None:
        self.xai = xai
        self.d1 = d1

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await handle_lifespan(receive, send)
        elif self.d1 is not None and scope["path"].startswith(D1_PREFIX):
            await self.d1(scope, receive, send)
        else:
            await self.xai(scope, receive, send)

    def env(self, origin: str) -> dict[str, str]:
        """The settings that point knrun (or any client) at these simulators."""
        scenario = self.xai.scenario
        values = {
            "XAI_BASE_URL": f"{origin}/v1",
            "XAI_API_KEY": scenario.api_key,
            "XAI_MANAGEMENT_BASE_URL": origin,
            "XAI_MANAGEMENT_KEY": scenario.management_key,
        }
        if self.d1 is not None:
            values |= {
                "CLOUDFLARE_API_BASE_URL": self.d1.base_url(origin),
                "CLOUDFLARE_ACCOUNT_ID": self.d1.account_id,
                "CLOUDFLARE_API_TOKEN": self.d1.api_token,
                "D1_DATABASE_ID": self.d1.database_id,
            }
        return values
