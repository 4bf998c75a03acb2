"""`knrun init`: a working folder from the package's data, and nothing overwritten."""

from __future__ import annotations

import fnmatch
import os
import subprocess
import sys
import tomllib
from pathlib import Path

from typer.testing import CliRunner

from conftest import ROOT
from knrun import examples
from knrun.cli import app

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


def test_every_file_init_writes_ships_in_the_package() -> None:
    # An editable install reads src/; a wheel carries only the package-data globs.
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["knrun"]
    for name in examples.LAYOUT:
        assert any(fnmatch.fnmatch(f"examples/{name}", g) for g in globs), name


def test_the_repository_root_holds_no_symlinks() -> None:
    links = [p.name for p in ROOT.iterdir() if p.is_symlink()]
    assert links == []
