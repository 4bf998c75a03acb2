"""Settings: every key from the environment or .env, secrets kept secret, the store rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from knrun.config import Settings, load_settings
from knrun.errors import ConfigError

D1_KEYS = {"CLOUDFLARE_ACCOUNT_ID": "acc", "CLOUDFLARE_API_TOKEN": "tok", "D1_DATABASE_ID": "db"}


def settings(**env: str) -> Settings:
    return Settings(_env_file=None, **{k: v for k, v in env.items()})  # type: ignore[call-arg]


def test_defaults_point_at_the_real_services_and_a_local_store() -> None:
    s = settings()
    assert s.xai_base_url == "https://api.x.ai/v1"
    assert s.xai_management_base_url == "https://management-api.x.ai"
    assert s.cloudflare_api_base_url == "https://api.cloudflare.com/client/v4"
    assert s.store_target().describe() == "sqlite:knrun.sqlite"


def test_grok_api_key_is_accepted_as_the_xai_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GROK_API_KEY", "xai-from-grok")
    assert settings().require_xai_key().get_secret_value() == "xai-from-grok"
    monkeypatch.setenv("XAI_API_KEY", "xai-preferred")
    assert settings().require_xai_key().get_secret_value() == "xai-preferred"


def test_missing_key_is_a_config_error_naming_both_names() -> None:
    with pytest.raises(ConfigError, match=r"XAI_API_KEY is not set.*GROK_API_KEY"):
        settings().require_xai_key()


def test_secrets_never_show_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "XAI_API_KEY": "xai-secret-1",
        "XAI_MANAGEMENT_KEY": "mgmt-secret-2",
        "CLOUDFLARE_API_TOKEN": "cf-secret-3",
    }.items():
        monkeypatch.setenv(name, value)
    shown = repr(settings()) + str(settings().model_dump())
    for secret in ("xai-secret-1", "mgmt-secret-2", "cf-secret-3"):
        assert secret not in shown


def test_store_is_d1_when_the_three_cloudflare_values_are_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in D1_KEYS.items():
        monkeypatch.setenv(name, value)
    assert settings().store_target().kind == "d1"
    monkeypatch.setenv("KNRUN_STORE", "sqlite:/tmp/x.sqlite")
    assert settings().store_target().describe() == "sqlite:/tmp/x.sqlite"


def test_store_is_sqlite_when_any_cloudflare_value_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLOUDFLARE_ACCOUNT_ID", "acc")
    monkeypatch.setenv("D1_DATABASE_ID", "db")
    assert settings().store_target().kind == "sqlite"


def test_asking_for_d1_without_its_credentials_names_what_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KNRUN_STORE", "d1")
    monkeypatch.setenv("CLOUDFLARE_ACCOUNT_ID", "acc")
    with pytest.raises(ConfigError, match="CLOUDFLARE_API_TOKEN, D1_DATABASE_ID not set"):
        settings().store_target()


@pytest.mark.parametrize("value", ["postgres://x", "sqlite:", "D1"])
def test_bad_store_values_are_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("KNRUN_STORE", value)
    with pytest.raises(ConfigError, match="KNRUN_STORE must be"):
        settings().store_target()


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text(
        "GROK_API_KEY=xai-dotenv\nKNRUN_STORE=sqlite:units.sqlite\nKNRUN_JOB=prompts/a.toml\n"
    )
    loaded = load_settings(env)
    assert loaded.require_xai_key().get_secret_value() == "xai-dotenv"
    assert loaded.knrun_job == "prompts/a.toml"
    assert loaded.store_target().describe() == "sqlite:units.sqlite"
