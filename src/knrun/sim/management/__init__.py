"""The simulated Management API: the team's prepaid balance, its spending limits and the API
key's description, read from the shared account."""

from __future__ import annotations

import re
from typing import Any

from knrun.sim.account import TICKS_PER_CENT, Account
from knrun.sim.asgi import Request, Response
from knrun.sim.scenario import Scenario

_BALANCE = re.compile(r"^/v1/billing/teams/(?P<team>[^/]+)/prepaid/balance$")
_LIMITS = re.compile(r"^/v1/billing/teams/(?P<team>[^/]+)/postpaid/spending-limits$")


class Management:
    def __init__(self, scenario: Scenario, account: Account) -> None:
        self.scenario = scenario
        self.account = account

    def handle(self, request: Request, path: str) -> Response:
        scenario = self.scenario
        if request.bearer() != scenario.management_key:
            return _error(401, "unauthenticated", "Invalid management key")
        match = _BALANCE.match(path) or _LIMITS.match(path)
        if request.method != "GET" or match is None:
            return _error(404, "not-found", f"No handler for {request.method} {path}")
        if match["team"] != self.account.team:
            return _error(403, "permission-denied", "The management key cannot access this team")
        if match.re is _LIMITS:
            cents = str(int(scenario.spending_limit_usd * 100))
            limits = {"effectiveSl": {"val": cents}, "effectiveHardSl": {"val": cents}}
            return Response.json(200, {"spendingLimits": limits})
        return Response.json(200, self._balance())

    def _balance(self) -> dict[str, Any]:
        balance_cents = self.account.settled_balance_ticks() // TICKS_PER_CENT
        purchased = self.account.purchased_ticks // TICKS_PER_CENT
        team = self.account.team
        return {
            "changes": [
                {"teamId": team, "changeOrigin": "PURCHASE", "amount": {"val": str(-purchased)}},
                {
                    "teamId": team,
                    "changeOrigin": "SPEND",
                    "amount": {"val": str(purchased - balance_cents)},
                },
            ],
            "total": {"val": str(-balance_cents)},
        }

    def api_key(self) -> dict[str, Any]:
        key = self.scenario.api_key
        return {
            "redacted_api_key": f"{key[:2]}***{key[-2:]}",
            "user_id": "sim-user",
            "name": "knrun simulator key",
            "create_time": "2026-01-01T00:00:00Z",
            "modify_time": "2026-01-01T00:00:00Z",
            "modified_by": "sim-user",
            "team_id": self.account.team,
            "acls": ["api-key:model:*", "api-key:endpoint:*"],
            "api_key_id": "sim-key-id",
            "team_blocked": False,
            "api_key_blocked": False,
            "api_key_disabled": False,
        }


def _error(status: int, code: str, message: str) -> Response:
    return Response.json(status, {"code": code, "error": message})
