"""A run's connections fit the open-file limit: raised when it can be, concurrency lowered when
it cannot (macOS shells start at 256)."""

from __future__ import annotations

import resource

import pytest

from knrun.commands.session.files import SPARE_FILES, fit_open_files
from knrun.run.config import RunConfig


def limits(monkeypatch: pytest.MonkeyPatch, soft: int, hard: int) -> list[tuple[int, int]]:
    calls: list[tuple[int, int]] = []
    state = {"soft": soft}

    def setrlimit(_: int, value: tuple[int, int]) -> None:
        if value[0] > hard:
            raise ValueError("not allowed")
        calls.append(value)
        state["soft"] = value[0]

    monkeypatch.setattr(resource, "getrlimit", lambda _: (state["soft"], hard))
    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    return calls


def test_the_soft_limit_is_raised_to_what_the_run_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = limits(monkeypatch, soft=256, hard=10_240)
    config, note = fit_open_files(RunConfig(concurrency=1000, max_concurrency=1000))
    assert calls == [(1000 + SPARE_FILES, 10_240)]
    assert config.workers == 1000 and note is not None and "raised" in note


def test_a_hard_limit_too_low_lowers_the_concurrency(monkeypatch: pytest.MonkeyPatch) -> None:
    limits(monkeypatch, soft=256, hard=256)
    config, note = fit_open_files(RunConfig(concurrency=1000, max_concurrency=1000))
    assert config.workers == 256 - SPARE_FILES
    assert note is not None and "ulimit -n" in note


def test_enough_files_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = limits(monkeypatch, soft=20_000, hard=20_000)
    config = RunConfig(concurrency=50)
    assert fit_open_files(config) == (config, None) and calls == []
