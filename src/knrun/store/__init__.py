"""Unit stores: where the units live and results go (Cloudflare D1, or a local SQLite file)."""

from __future__ import annotations

import time
from collections.abc import Callable

from knrun.config import Settings, StoreTarget
from knrun.errors import ConfigError
from knrun.job import JobSpec
from knrun.store.base import SqlUnitStore
from knrun.store.d1 import D1Store
from knrun.store.sqlite import SqliteStore
from knrun.store.types import (
    Outcome,
    Progress,
    RunRecord,
    Unit,
    UnitFailure,
    UnitResult,
    UnitStore,
)

__all__ = [
    "D1Store",
    "Outcome",
    "Progress",
    "RunRecord",
    "SqlUnitStore",
    "SqliteStore",
    "Unit",
    "UnitFailure",
    "UnitResult",
    "UnitStore",
    "open_store",
]


def open_store(
    settings: Settings,
    job: JobSpec,
    *,
    target: StoreTarget | None = None,
    clock: Callable[[], float] = time.time,
) -> SqlUnitStore:
    """The store the settings point at (or `target`). Simulators stand in by base URL."""
    target = target or settings.store_target()
    if target.kind == "sqlite":
        assert target.path is not None
        return SqliteStore(job, target.path, clock=clock)
    missing = settings.missing_d1_keys()
    if missing or not (
        settings.cloudflare_account_id and settings.d1_database_id and settings.cloudflare_api_token
    ):
        raise ConfigError(f"the D1 store needs {', '.join(missing)} (see .env.example)")
    return D1Store(
        job,
        account_id=settings.cloudflare_account_id,
        database_id=settings.d1_database_id,
        api_token=settings.cloudflare_api_token,
        base_url=settings.cloudflare_api_base_url,
        clock=clock,
    )
