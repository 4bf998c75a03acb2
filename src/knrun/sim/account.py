"""The simulated team: who it is and its money. The chat API, the Batch API and the Management
API all read and spend the same prepaid balance, so each holds this one object instead of
importing the others."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from knrun.sim.asgi import Response
from knrun.sim.scenario import Scenario

TICKS_PER_CENT = 10**8


class Account:
    def __init__(self, scenario: Scenario, clock: Callable[[], float]) -> None:
        self.scenario = scenario
        self._clock = clock
        self.balance_ticks = int(scenario.balance_usd * 100) * TICKS_PER_CENT
        self.purchased_ticks = self.balance_ticks
        self._unsettled: deque[tuple[float, int]] = deque()  # (due time, ticks)

    @property
    def team(self) -> str:
        return self.scenario.team_id

    def charge(self, ticks: int) -> None:
        """Bill `ticks` now; the prepaid balance shows it after the billing lag."""
        lag = self.scenario.billing_lag_s * self.scenario.latency.time_scale
        self._unsettled.append((self._clock() + lag, ticks))

    def settled_balance_ticks(self) -> int:
        """What the ledger shows now: costs older than the billing lag are charged."""
        now = self._clock()
        while self._unsettled and self._unsettled[0][0] <= now:
            self.balance_ticks -= self._unsettled.popleft()[1]
        return self.balance_ticks

    def credit_refusal(self) -> Response:
        """xAI's reply to a request once the team has no credit left (design section 6)."""
        status = self.scenario.credit_exhausted_status
        code = "resource-exhausted" if status == 429 else "permission-denied"
        if self.purchased_ticks <= 0:  # a new team that never bought any
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
        return Response.json(status, {"code": code, "error": message})

    def other_spender_acts(self, chat_requests: int) -> None:
        """Another user of the team spends most of the balance at a set moment of the run."""
        spender = self.scenario.other_spender
        if spender is not None and chat_requests == spender.after_requests:
            left = int(spender.leaves_usd * 100) * TICKS_PER_CENT
            self.balance_ticks = min(self.balance_ticks, left)
