"""What every command starts from: settings, the job file, and the store they point at."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx

from knrun.config import Settings, StoreTarget, load_settings
from knrun.job import JobSpec, find_job_path, load_job
from knrun.pricing import PricingTable, load_pricing
from knrun.store import SqlUnitStore, open_store

DEFAULT_PRICING = Path("pricing.toml")
PROMPTS_DIR = Path("prompts")
STATE_DIR = Path(".knrun")


@dataclass
class Context:
    settings: Settings
    job_path: Path
    job: JobSpec
    target: StoreTarget
    d1_transport: httpx.AsyncBaseTransport | None = None

    def open_store(self) -> SqlUnitStore:
        return open_store(
            self.settings, self.job, target=self.target, d1_transport=self.d1_transport
        )


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
