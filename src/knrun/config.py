"""Settings from the environment and `.env`: credentials, service base URLs and the store choice."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dotenv import dotenv_values
from pydantic import AliasChoices, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from knrun.errors import ConfigError

DEFAULT_SQLITE_PATH = "knrun.sqlite"
# A `.env` key with one of these prefixes is meant for knrun; other keys are left alone.
OUR_PREFIXES = ("XAI_", "GROK_", "CLOUDFLARE_", "D1_", "KNRUN_")
# Read from the environment directly, not through Settings (the simulators' clock).
OTHER_KEYS = ("KNRUN_SIM_TIME_SCALE",)


@dataclass(frozen=True)
class StoreTarget:
    """Where the units live: Cloudflare D1 over REST, or a local SQLite file."""

    kind: Literal["d1", "sqlite"]
    path: Path | None = None  # only for sqlite

    def describe(self) -> str:
        return "d1" if self.kind == "d1" else f"sqlite:{self.path}"


class Settings(BaseSettings):
    """Every key knrun reads from the environment or `.env`; `.env.example` documents them."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    xai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("XAI_API_KEY", "GROK_API_KEY")
    )
    xai_base_url: str = Field(default="https://api.x.ai/v1", validation_alias="XAI_BASE_URL")
    xai_management_key: SecretStr | None = Field(
        default=None, validation_alias="XAI_MANAGEMENT_KEY"
    )
    xai_management_base_url: str = Field(
        default="https://management-api.x.ai", validation_alias="XAI_MANAGEMENT_BASE_URL"
    )
    xai_team_id: str | None = Field(default=None, validation_alias="XAI_TEAM_ID")
    cloudflare_account_id: str | None = Field(
        default=None, validation_alias="CLOUDFLARE_ACCOUNT_ID"
    )
    cloudflare_api_token: SecretStr | None = Field(
        default=None, validation_alias="CLOUDFLARE_API_TOKEN"
    )
    d1_database_id: str | None = Field(default=None, validation_alias="D1_DATABASE_ID")
    cloudflare_api_base_url: str = Field(
        default="https://api.cloudflare.com/client/v4", validation_alias="CLOUDFLARE_API_BASE_URL"
    )
    knrun_store: str | None = Field(default=None, validation_alias="KNRUN_STORE")
    knrun_job: str | None = Field(default=None, validation_alias="KNRUN_JOB")

    def store_target(self) -> StoreTarget:
        """`KNRUN_STORE` if set; else D1 when its three values are set; else local SQLite."""
        choice = (self.knrun_store or "").strip()
        if not choice:
            if not self.missing_d1_keys():
                return StoreTarget("d1")
            return StoreTarget("sqlite", Path(DEFAULT_SQLITE_PATH))
        if choice == "d1":
            missing = self.missing_d1_keys()
            if missing:
                raise ConfigError(f"KNRUN_STORE=d1 but {', '.join(missing)} not set")
            return StoreTarget("d1")
        if choice.startswith("sqlite:") and choice.removeprefix("sqlite:").strip():
            return StoreTarget("sqlite", Path(choice.removeprefix("sqlite:").strip()))
        raise ConfigError(f"KNRUN_STORE must be 'd1' or 'sqlite:PATH', not {choice!r}")

    def require_xai_key(self) -> SecretStr:
        if self.xai_api_key is None or not self.xai_api_key.get_secret_value().strip():
            raise ConfigError(
                "XAI_API_KEY is not set (GROK_API_KEY is accepted too); add it to .env"
            )
        return self.xai_api_key

    def missing_d1_keys(self) -> list[str]:
        values = {
            "CLOUDFLARE_ACCOUNT_ID": self.cloudflare_account_id,
            "CLOUDFLARE_API_TOKEN": self.cloudflare_api_token,
            "D1_DATABASE_ID": self.d1_database_id,
        }
        return [name for name, value in values.items() if not value]


def known_keys() -> list[str]:
    """Every key Settings reads, under each of its names."""
    names: list[object] = list(OTHER_KEYS)
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        names += alias.choices if isinstance(alias, AliasChoices) else [alias]
    return [str(name) for name in names]


def check_env_keys(env_file: Path) -> None:
    """A misspelt key in `.env` (XAI_BASEURL) would be ignored, and knrun would use the
    default it meant to replace: the real API, the real store. Refuse it, naming the key meant."""
    if not env_file.is_file():
        return
    known = known_keys()
    for key in dotenv_values(env_file):
        if key.upper().startswith(OUR_PREFIXES) and key.upper() not in known:
            closest = difflib.get_close_matches(key.upper(), known, n=1, cutoff=0.6)
            meant = f"; did you mean {closest[0]}?" if closest else ""
            raise ConfigError(
                f"{env_file}: unknown key {key}{meant} (knrun reads only the keys in "
                ".env.example; fix or remove it)"
            )


def load_settings(env_file: Path | None = Path(".env")) -> Settings:
    """Settings from the environment plus `env_file`; a malformed value or an unknown key of
    knrun's is a ConfigError."""
    if env_file is not None:
        check_env_keys(env_file)
    try:
        return Settings(_env_file=env_file)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"settings: {where}: {first['msg']}") from None
