"""The operator's files have one source, the repository root: the wheel is built from it, a
source tree reads it, and `knrun init` from an installed wheel writes exactly those bytes."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT
from knrun import examples
from knrun.errors import KnrunError

PACKAGE = ROOT / "src" / "knrun" / "examples"


def clean_env(**extra: str) -> dict[str, str]:
    """No knrun or provider settings from the machine running the tests."""
    prefixes = ("KNRUN_", "XAI_", "GROK_", "CLOUDFLARE_", "D1_", "PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    return env | extra


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel as `pip wheel .` builds it from this checkout (no build isolation: hatchling
    comes with the dev extra, so this needs no network)."""
    if importlib.util.find_spec("hatchling") is None:
        pytest.fail("hatchling is missing: pip install -e '.[dev]' installs it")
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps"),
            *("--no-build-isolation", "--no-index", "--quiet", "-w", str(out)),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    [path] = out.glob("knrun-*.whl")
    return path


def test_the_wheel_carries_the_root_files_byte_for_byte(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        carried = {
            name.removeprefix("knrun/examples/"): archive.read(name)
            for name in archive.namelist()
            if name.startswith("knrun/examples/") and not name.endswith(".py")
        }
    expected = {path.as_posix(): (ROOT / path).read_bytes() for path in examples.OPERATOR_FILES}
    expected[examples.GITIGNORE] = (PACKAGE / examples.GITIGNORE).read_bytes()
    assert carried.keys() == expected.keys()
    for name, data in expected.items():
        assert carried[name] == data, f"the wheel's knrun/examples/{name} is not the root's"


def test_init_from_the_installed_wheel_writes_exactly_the_root_files(
    wheel: Path, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)  # what pip install puts in site-packages
    env = clean_env(PYTHONPATH=str(site))
    where = subprocess.run(
        [sys.executable, "-c", "from knrun import examples; print(examples.source())"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()) == site / "knrun" / "examples"
    folder = tmp_path / "operator"
    init = subprocess.run(
        [sys.executable, "-m", "knrun", "init", str(folder)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert init.returncode == 0, init.stderr
    for path in examples.OPERATOR_FILES:
        assert (folder / path).read_bytes() == (ROOT / path).read_bytes(), path
    assert (folder / ".gitignore").read_bytes() == (PACKAGE / examples.GITIGNORE).read_bytes()


def test_a_source_tree_reads_the_repository_root() -> None:
    assert examples.repository_root() == ROOT
    assert Path(str(examples.source())) == ROOT


def test_the_package_keeps_no_second_copy_of_the_root_files() -> None:
    kept = sorted(p.name for p in PACKAGE.iterdir() if p.name != "__pycache__")
    assert kept == ["__init__.py", examples.GITIGNORE]


def test_the_repository_gitignore_ignores_all_an_operators_does() -> None:
    def patterns(path: Path) -> set[str]:
        lines = (line.strip() for line in path.read_text().splitlines())
        return {line for line in lines if line and not line.startswith("#")}

    assert patterns(PACKAGE / examples.GITIGNORE) <= patterns(ROOT / ".gitignore")


def test_a_package_with_some_of_the_files_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pricing.toml").write_text("")
    monkeypatch.setattr(examples, "packaged", lambda: tmp_path)
    with pytest.raises(KnrunError, match=r"incomplete: the package carries only pricing\.toml"):
        examples.source()
    assert examples.existing(tmp_path / "new") == []
    with pytest.raises(KnrunError):
        examples.copy_to(tmp_path / "new")
    assert not (tmp_path / "new").exists()  # nothing written when a file is missing


def test_no_package_data_outside_a_source_tree_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(examples, "packaged", lambda: tmp_path)
    monkeypatch.setattr(examples, "repository_root", lambda: None)
    with pytest.raises(KnrunError, match="not in knrun's source tree"):
        examples.source()
