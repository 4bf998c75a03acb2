"""What every command starts from: settings, the job file, and the store they point at."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from knrun.config import Settings, StoreTarget, load_settings
from knrun.job import JobSpec, find_job_path, load_job
from knrun.pricing import PricingTable, load_pricing
from knrun.store import SqlUnitStore, open_store
from knrun.xai import LiveModel, XaiClient

DEFAULT_PRICING = Path("pricing.toml")
PROMPTS_DIR = Path("prompts")
STATE_DIR = Path(".knrun")


@dataclass
class Context:
    settings: Settings
    job_path: Path
    job: JobSpec
    target: StoreTarget

    def open_store(self) -> SqlUnitStore:
        return open_store(self.settings, self.job, target=self.target)


def load_context(job: Path | None, *, settings: Settings | None = None) -> Context:
    settings = settings or load_settings()
    job_path = find_job_path(job, settings.knrun_job, PROMPTS_DIR)
    return Context(
        settings=settings,
        job_path=job_path,
        job=load_job(job_path),
        target=settings.store_target(),
    )


def load_pricing_for(path: Path | None) -> PricingTable:
    return load_pricing(path or DEFAULT_PRICING)


def optional_job(job: Path | None, settings: Settings) -> JobSpec | None:
    """The job when one is named or discoverable; None when there is simply no job file."""
    if job is None and not settings.knrun_job and not any(PROMPTS_DIR.glob("*.toml")):
        return None
    return load_job(find_job_path(job, settings.knrun_job, PROMPTS_DIR))


def xai_client(settings: Settings, *, max_connections: int = 50) -> XaiClient:
    return XaiClient(
        api_key=settings.require_xai_key(),
        base_url=settings.xai_base_url,
        management_key=settings.xai_management_key,
        management_base_url=settings.xai_management_base_url,
        max_connections=max_connections,
    )


async def fetch_live_models(settings: Settings) -> list[LiveModel]:
    client = xai_client(settings, max_connections=2)
    try:
        return await client.language_models()
    finally:
        await client.aclose()
