"""The dead ends of a first real run (issue 19), each through the CLI: every one ends in one
`error:` line with the documented exit code, or in a clear line and exit 0."""

from __future__ import annotations

import json
import re
import socket
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import prepare_units, refresh_pricing_dates, write_receipt
from knrun.cli import app
from knrun.pricing import usd_to_ticks
from knrun.sim.xai import XaiSimulator

runner = CliRunner()
JOB = Path("prompts/kn-1.6.toml")


def knrun(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def one_error_line(err: str) -> bool:
    return err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_an_option_out_of_range_is_one_error_line_and_exit_2(project: Path) -> None:
    code, out, err = knrun("go", "--max-concurrency", "0")
    assert code == 2 and one_error_line(err) and "--max-concurrency" in err and not out
    code, _, err = knrun("status", "--no-such-option")
    assert code == 2 and one_error_line(err) and "--no-such-option" in err


def test_a_misspelt_env_key_is_refused_naming_the_key_meant(project: Path) -> None:
    Path(".env").write_text("XAI_BASEURL=http://127.0.0.1:1/v1\nEDITOR=vi\n")
    code, _, err = knrun("status")
    assert code == 2 and one_error_line(err)
    assert "XAI_BASEURL" in err and "did you mean XAI_BASE_URL?" in err


def test_sim_serve_on_a_taken_port_says_so_before_printing_settings(project: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = knrun("sim", "serve", "--port", str(port))
    assert code == 2 and one_error_line(err) and f"port {port}" in err and not out


def test_a_receipt_for_another_store_does_not_authorise_go(
    project: Path, xai_server: XaiSimulator
) -> None:
    refresh_pricing_dates(project / "pricing.toml")
    prepare_units(project, 20)
    write_receipt(project)
    path = Path(".knrun/receipts/kn-1.6.json")
    path.write_text(json.dumps(json.loads(path.read_text()) | {"store": "d1"}))
    code, _, err = knrun("go")
    assert code == 2 and "receipt is for store d1" in err and "sqlite:knrun.sqlite" in err
    assert xai_server.stats.chat_requests == 0


def test_a_misspelt_where_column_names_source_where_in_every_command(
    project: Path, xai_server: XaiSimulator
) -> None:
    refresh_pricing_dates(project / "pricing.toml")
    prepare_units(project, 20)
    JOB.write_text(JOB.read_text().replace("restricted_access = 0", "restricted = 0"))
    for command in ("status", "retry", "preflight"):
        code, _, err = knrun(command)
        assert code == 2, (command, err)
        assert one_error_line(err) and "source.where" in err and "restricted" in err, command


def test_preflight_without_the_table_exits_2_with_the_command_that_loads_it(
    project: Path, xai_server: XaiSimulator
) -> None:
    refresh_pricing_dates(project / "pricing.toml")
    code, _, err = knrun("preflight", "--balance", "100")
    assert code == 2 and one_error_line(err)
    assert "no table 'units'" in err and "knrun db import" in err


@pytest.fixture
def steady(project: Path, xai_server: XaiSimulator) -> XaiSimulator:
    refresh_pricing_dates(project / "pricing.toml")
    prepare_units(project, 60)
    xai_server.scenario.output.visible_tokens_sd = 50
    xai_server.scenario.output.reasoning_tokens_sd = 100
    return xai_server


def test_a_canary_cheaper_than_estimated_is_a_warning_not_a_failure(
    steady: XaiSimulator,
) -> None:
    steady.scenario.output.visible_tokens_mean //= 3
    steady.scenario.output.reasoning_tokens_mean //= 3
    code, out, err = knrun("preflight")
    assert code == 0, err
    assert re.search(r"5 canary\s+PASS", out) and "under the estimate" in out


def test_go_and_retry_with_nothing_to_run_exit_0_without_a_receipt(
    steady: XaiSimulator,
) -> None:
    write_receipt(Path.cwd())
    assert knrun("go")[0] == 0
    ran = steady.stats.chat_requests
    Path(".knrun/receipts/kn-1.6.json").unlink()
    code, out, err = knrun("go")
    assert code == 0, err
    assert "nothing to run" in out and "no receipt needed" in out
    code, out, err = knrun("retry")
    assert code == 0, err
    assert "nothing to retry" in out
    assert steady.stats.chat_requests == ran  # nothing after the run


def test_a_run_stopped_by_the_cap_says_what_is_left_and_how_to_continue(
    steady: XaiSimulator,
) -> None:
    write_receipt(Path.cwd(), approved_ticks=usd_to_ticks(Decimal("0.05")))
    code, _, err = knrun("go")
    assert code == 4 and "left, and one more unit needs about" in err
    assert "to continue, run `knrun preflight` again" in err and "--max-spend" in err
    sent = steady.stats.chat_requests
    code, _, err = knrun("go")
    assert code == 4 and one_error_line(err)
    assert "is left of the approved spend" in err and "one more unit needs about" in err
    assert "`knrun preflight`" in err and "`knrun go --max-spend USD`" in err
    assert steady.stats.chat_requests == sent  # nothing started, nothing spent


def test_status_says_when_it_reuses_figures_and_recounts_after_a_run(
    steady: XaiSimulator,
) -> None:
    code, out, _ = knrun("status", "--json")
    assert code == 0 and json.loads(out)["done"] == 0
    code, out, _ = knrun("status")
    assert code == 0 and "reused" in out and "--fresh" in out
    write_receipt(Path.cwd())
    assert knrun("go")[0] == 0
    code, out, _ = knrun("status", "--json")
    figures = json.loads(out)
    assert figures["done"] == figures["total"] > 0 and not figures["figures_reused"]
    assert Decimal(figures["spent_usd"]) > 0
