"""What the account says of itself: the live model list with its prices, the API key's team, and
the Management API's prepaid balance and spending limits. Reads only: any passing trouble is
retried."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import ValidationError

from knrun.xai.errors import AuthFailed, UnreadableReply
from knrun.xai.models import ApiKeyInfo, LiveModel, LiveModelEntry

TICKS_PER_CENT = 10**8


class AccountCalls:
    """Mixed into `XaiClient`, which supplies its clients."""

    _api: httpx.AsyncClient
    _management: httpx.AsyncClient | None

    if TYPE_CHECKING:  # XaiClient's

        async def _read(self, client: httpx.AsyncClient, path: str) -> Any: ...

    async def language_models(self) -> list[LiveModel]:
        data = await self._read(self._api, "/language-models")
        entries = data.get("models") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise UnreadableReply("xAI /language-models: no 'models' list in the reply")
        try:
            return [LiveModelEntry.model_validate(entry).to_live() for entry in entries]
        except ValidationError as exc:
            raise UnreadableReply(
                f"xAI /language-models: unexpected entry: {exc.errors()[0]['msg']}"
            ) from None

    async def api_key_info(self) -> ApiKeyInfo:
        data = await self._read(self._api, "/api-key")
        if not isinstance(data, dict) or not data.get("team_id"):
            raise UnreadableReply("xAI /api-key: no team_id in the reply")
        blocked = any(
            data.get(flag) for flag in ("team_blocked", "api_key_blocked", "api_key_disabled")
        )
        return ApiKeyInfo(team_id=str(data["team_id"]), name=data.get("name"), blocked=blocked)

    async def team(self, configured: str | None) -> str:
        """The team the Management API calls need: XAI_TEAM_ID, else the API key's own."""
        return configured or (await self.api_key_info()).team_id

    async def prepaid_balance_ticks(self, team_id: str) -> int:
        """Remaining prepaid credit in ticks. The ledger counts purchases negative, so the
        remaining amount is minus the total, in cents."""
        if self._management is None:
            raise AuthFailed("XAI_MANAGEMENT_KEY is not set: the prepaid balance cannot be read")
        data = await self._read(self._management, f"/v1/billing/teams/{team_id}/prepaid/balance")
        try:
            cents = int(str(data["total"]["val"]))
        except (KeyError, TypeError, ValueError):
            raise UnreadableReply("xAI prepaid balance: no total.val in the reply") from None
        return -cents * TICKS_PER_CENT

    async def spending_limit_ticks(self, team_id: str) -> int | None:
        """The team's monthly spending limit past prepaid credit, if any.

        The reply's shape comes from community clients, not xAI's docs:
        {"spendingLimits": {"effectiveSl": {"val": "<cents>"}, "effectiveHardSl": {...}}}.
        Read defensively; None when absent."""
        if self._management is None:
            raise AuthFailed("XAI_MANAGEMENT_KEY is not set: spending limits cannot be read")
        path = f"/v1/billing/teams/{team_id}/postpaid/spending-limits"
        data = await self._read(self._management, path)
        limits = data.get("spendingLimits") if isinstance(data, dict) else None
        values = []
        for key in ("effectiveHardSl", "effectiveSl"):
            entry = limits.get(key) if isinstance(limits, dict) else None
            if isinstance(entry, dict):
                with contextlib.suppress(KeyError, TypeError, ValueError):
                    values.append(int(str(entry["val"])))
        return max(values) * TICKS_PER_CENT if values else None
