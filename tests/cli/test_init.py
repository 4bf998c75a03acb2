"""`knrun init`: a working folder of the operator's files, nothing overwritten, and a warning
when the prices it ships are older than `pricing check` allows."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import EXAMPLE_PRICING, ROOT
from knrun import examples
from knrun.cli import app
from knrun.pricecheck import MAX_AGE_DAYS
from knrun.pricing import load_pricing

runner = CliRunner()


def clean_env() -> dict[str, str]:
    """No knrun or provider settings from the machine running the tests."""
    prefixes = ("KNRUN_", "XAI_", "GROK_", "CLOUDFLARE_", "D1_")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


def test_init_then_pricing_show_works_in_a_new_folder(tmp_path: Path) -> None:
    folder = tmp_path / "newdir"
    init = subprocess.run(
        [sys.executable, "-m", "knrun", "init", str(folder)],
        capture_output=True,
        text=True,
        env=clean_env(),
        check=False,
    )
    assert init.returncode == 0, init.stderr
    for target in examples.LAYOUT.values():
        assert (folder / target).is_file(), target
    for path in examples.OPERATOR_FILES:  # a source tree writes the repository root's files
        assert (folder / path).read_bytes() == (ROOT / path).read_bytes(), path
    show = subprocess.run(
        [sys.executable, "-m", "knrun", "pricing", "show"],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=folder,
        check=False,
    )
    assert show.returncode == 0, show.stderr
    assert "grok-4.3" in show.stdout


def test_init_refuses_to_overwrite_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "pricing.toml").write_text("# mine\n")
    result = runner.invoke(app, ["init", str(tmp_path)])
    assert result.exit_code == 2
    assert "would overwrite" in result.stderr and "pricing.toml" in result.stderr
    assert (tmp_path / "pricing.toml").read_text() == "# mine\n"
    assert not (tmp_path / "prompts").exists()
    assert not (tmp_path / ".env.example").exists()


def test_init_refuses_a_file_for_a_folder(tmp_path: Path) -> None:
    path = tmp_path / "a-file"
    path.write_text("x")
    result = runner.invoke(app, ["init", str(path)])
    assert result.exit_code == 2
    assert "not a folder" in result.stderr


def verified_dates() -> list[date]:
    return [price.verified_at for price in load_pricing(EXAMPLE_PRICING).models.values()]


def init_on(day: date, folder: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr("knrun.cli.init.today", lambda: day)
    result = runner.invoke(app, ["init", str(folder)])
    assert result.exit_code == 0, result.stderr
    return result.stderr


def test_init_warns_when_the_shipped_prices_are_older_than_the_check_allows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    day = max(verified_dates()) + timedelta(days=MAX_AGE_DAYS + 1)
    stderr = init_on(day, tmp_path, monkeypatch)
    assert stderr.startswith("warning: ") and stderr.count("\n") == 1
    assert f"{MAX_AGE_DAYS + 1} days ago" in stderr
    assert "knrun pricing sync" in stderr


def test_init_says_nothing_of_prices_the_check_still_accepts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    day = min(verified_dates()) + timedelta(days=MAX_AGE_DAYS)
    assert init_on(day, tmp_path, monkeypatch) == ""


def test_the_repository_root_holds_no_symlinks() -> None:
    links = [p.name for p in ROOT.iterdir() if p.is_symlink()]
    assert links == []
