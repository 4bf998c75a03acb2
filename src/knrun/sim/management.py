"""The simulated team's money and identity: the Management API's prepaid balance and spending
limits, the API key's team, credit-exhaustion refusals, and another spender on the team."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from knrun.sim.asgi import Request, Response

if TYPE_CHECKING:
    from knrun.sim.xai import XaiSimulator

TICKS_PER_CENT = 10**8
_BALANCE = re.compile(r"^/v1/billing/teams/(?P<team>[^/]+)/prepaid/balance$")
_LIMITS = re.compile(r"^/v1/billing/teams/(?P<team>[^/]+)/postpaid/spending-limits$")


class Management:
    def __init__(self, sim: XaiSimulator) -> None:
        self.sim = sim

    @property
    def team(self) -> str:
        return self.sim.scenario.team_id

    def handle(self, request: Request, path: str) -> Response:
        scenario = self.sim.scenario
        if request.bearer() != scenario.management_key:
            return _error(401, "unauthenticated", "Invalid management key")
        match = _BALANCE.match(path) or _LIMITS.match(path)
        if request.method != "GET" or match is None:
            return _error(404, "not-found", f"No handler for {request.method} {path}")
        if match["team"] != self.team:
            return _error(403, "permission-denied", "The management key cannot access this team")
        if match.re is _LIMITS:
            cents = str(int(scenario.spending_limit_usd * 100))
            limits = {"effectiveSl": {"val": cents}, "effectiveHardSl": {"val": cents}}
            return Response.json(200, {"spendingLimits": limits})
        return Response.json(200, self._balance())

    def _balance(self) -> dict[str, Any]:
        balance_cents = self.sim.settled_balance_ticks() // TICKS_PER_CENT
        purchased = self.sim.purchased_ticks // TICKS_PER_CENT
        return {
            "changes": [
                {
                    "teamId": self.team,
                    "changeOrigin": "PURCHASE",
                    "amount": {"val": str(-purchased)},
                },
                {
                    "teamId": self.team,
                    "changeOrigin": "SPEND",
                    "amount": {"val": str(purchased - balance_cents)},
                },
            ],
            "total": {"val": str(-balance_cents)},
        }

    def api_key(self) -> dict[str, Any]:
        key = self.sim.scenario.api_key
        return {
            "redacted_api_key": f"{key[:2]}***{key[-2:]}",
            "user_id": "sim-user",
            "name": "knrun simulator key",
            "create_time": "2026-01-01T00:00:00Z",
            "modify_time": "2026-01-01T00:00:00Z",
            "modified_by": "sim-user",
            "team_id": self.team,
            "acls": ["api-key:model:*", "api-key:endpoint:*"],
            "api_key_id": "sim-key-id",
            "team_blocked": False,
            "api_key_blocked": False,
            "api_key_disabled": False,
        }

    def credit_exhausted(self) -> Response:
        status = self.sim.scenario.credit_exhausted_status
        code = "resource-exhausted" if status == 429 else "permission-denied"
        if self.sim.purchased_ticks <= 0:  # a new team that never bought any
            message = (
                f"Your newly created team {self.team} doesn't have any credits or licenses yet. "
                "You can purchase credits on https://console.x.ai."
            )
        else:
            message = (
                f"Your team {self.team} has either used all available credits or reached its "
                "monthly spending limit. To continue making API requests, please purchase more "
                "credits or raise your spending limit."
            )
        return _error(status, code, message)

    def other_spender_acts(self, chat_requests: int) -> None:
        spender = self.sim.scenario.other_spender
        if spender is not None and chat_requests == spender.after_requests:
            left = int(spender.leaves_usd * 100) * TICKS_PER_CENT
            self.sim.balance_ticks = min(self.sim.balance_ticks, left)


def _error(status: int, code: str, message: str) -> Response:
    return Response.json(status, {"code": code, "error": message})
