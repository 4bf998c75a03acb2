"""`knrun sim serve`: the port it listens on, and the settings it prints, in two blocks that
say what each switches, so that pasting them into `.env` never moves a store unannounced."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

from knrun.errors import ConfigError
from knrun.sim.server import listen

D1_KEYS = ("CLOUDFLARE_API_BASE_URL", "CLOUDFLARE_ACCOUNT_ID", "CLOUDFLARE_API_TOKEN")


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, or a ConfigError naming the taken (or impossible) address."""
    try:
        return listen(host, port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {port} on {host} is taken (another `knrun sim serve`?): pass --port N, "
                "or --port 0 for any free one"
            ) from None
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def settings_text(
    env: dict[str, str], origin: str, d1_database: Path, current_store: str | None
) -> list[str]:
    """The lines `sim serve` prints: `.env` lines, every explanation a `#` comment, so the
    whole output (or either block) can be pasted as it is."""
    xai = {k: v for k, v in env.items() if not k.startswith(D1_KEYS) and k != "D1_DATABASE_ID"}
    d1 = {k: v for k, v in env.items() if k not in xai}
    lines = [
        f"# knrun sim serve: simulated xAI, its Management API and D1 on {origin} "
        "(Ctrl-C stops them). Paste what you want into .env:",
        "",
        "# xAI block: knrun's model, price, balance and chat requests go to the simulator "
        "instead of api.x.ai. Your store stays where it is.",
        *(f"{key}={value}" for key, value in xai.items()),
    ]
    if d1:
        now = f"now {current_store}" if current_store else "as your settings say"
        lines += [
            "",
            f"# D1 block: MOVES THE UNIT STORE to the simulated D1 (its database is the "
            f"file {d1_database}, empty until you load units into it). Your store is {now}; "
            "leave this block out to keep it.",
            *(f"{key}={value}" for key, value in d1.items()),
            "KNRUN_STORE=d1",
        ]
    return lines


def current_store() -> str | None:
    """The store this folder's settings point at, if they can be read."""
    from knrun.config import load_settings

    try:
        return load_settings().store_target().describe()
    except ConfigError:
        return None
