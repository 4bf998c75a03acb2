"""What the simulated Batch API needs from the rest of the simulated xAI, as a protocol: its clock
and randomness, the models' replies and prices, and the team's money (no import of the chat
simulator, so the two stay apart)."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol

from knrun.sim import replies
from knrun.sim.asgi import Response
from knrun.sim.scenario import Scenario, SimModel


class BatchHost(Protocol):
    """What the Batch API needs from the rest of the simulated xAI: its clock and randomness,
    the models' replies and prices, and the team's money."""

    scenario: Scenario

    def now(self) -> float: ...

    def pause(self, simulated_s: float) -> Awaitable[None]: ...

    def chance(self) -> float: ...

    def pick_outcome(self) -> str | None: ...

    def usage_of(
        self, body: dict[str, Any], model: SimModel, messages: list[Any], conv_id: str | None
    ) -> replies.Usage: ...

    def reply_of(
        self,
        body: dict[str, Any],
        model: SimModel,
        usage: replies.Usage,
        cost: int,
        outcome: str | None,
        finish: str,
    ) -> dict[str, Any]: ...

    def charge(self, ticks: int) -> None: ...

    def settled_balance_ticks(self) -> int: ...

    def credit_refusal(self) -> Response: ...
