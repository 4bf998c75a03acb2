"""`knrun sim serve`: the simulators as a real server that any client can be pointed at."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_sim_serve_answers_xai_management_and_d1_on_one_port(tmp_path: Path) -> None:
    port = free_port()
    scenario = tmp_path / "scenario.toml"
    scenario.write_text("balance_usd = 7.5\n[latency]\ntime_scale = 0.001\n")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "knrun",
            "sim",
            "serve",
            "--port",
            str(port),
            "--scenario",
            str(scenario),
            "--d1-database",
            str(tmp_path / "d1.sqlite"),
        ],
        cwd=tmp_path,  # no .env: the store is the default one
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        env = {}
        printed = []
        while "KNRUN_STORE" not in env:
            line = server.stdout.readline()
            assert line, server.stderr.read() if server.stderr else "server died"
            printed.append(line)
            if "=" in line and line.split("=")[0].isupper():
                key, value = line.strip().split("=", 1)
                env[key] = value
        # Pasteable as it is: every other line a comment, and the D1 block says it moves the
        # store, before its keys.
        assert all(line.startswith("#") or not line.strip() or "=" in line for line in printed)
        text = "".join(printed)
        assert text.index("# xAI block") < text.index("XAI_BASE_URL=")
        assert text.index("# D1 block: MOVES THE UNIT STORE") < text.index("CLOUDFLARE_")
        assert "Your store is now sqlite:knrun.sqlite" in text
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                models = httpx.get(
                    f"{env['XAI_BASE_URL']}/language-models",
                    headers={"Authorization": f"Bearer {env['XAI_API_KEY']}"},
                )
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert models.status_code == 200 and models.json()["models"]
        balance = httpx.get(
            f"{env['XAI_MANAGEMENT_BASE_URL']}/v1/billing/teams/sim-team-0001/prepaid/balance",
            headers={"Authorization": f"Bearer {env['XAI_MANAGEMENT_KEY']}"},
        )
        assert balance.json()["total"] == {"val": "-750"}
        d1 = httpx.post(
            f"{env['CLOUDFLARE_API_BASE_URL']}/accounts/{env['CLOUDFLARE_ACCOUNT_ID']}/d1/database/"
            f"{env['D1_DATABASE_ID']}/query",
            headers={"Authorization": f"Bearer {env['CLOUDFLARE_API_TOKEN']}"},
            json={"sql": "SELECT 1 AS one"},
        )
        assert d1.json()["result"][0]["results"] == [{"one": 1}]
        assert env["XAI_BASE_URL"] == f"{base}/v1"
    finally:
        server.terminate()
        server.communicate(timeout=10)  # also closes the pipes
