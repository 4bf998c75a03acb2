"""Retry-After in both of its forms, capped; error excerpts of HTML pages."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from knrun.http import MAX_RETRY_AFTER_S, parse_retry_after, text_excerpt

NOW = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("17", 17.0),
        ("0.5", 0.5),
        ("-3", 0.0),
        ("Sun, 22 Nov 2026 10:00:30 GMT", 30.0),
        ("Sun, 22 Nov 2026 09:00:00 GMT", 0.0),
        ("999999", MAX_RETRY_AFTER_S),
        ("soon", None),
        ("", None),
        (None, None),
        ("nan", None),
    ],
)
def test_parse_retry_after(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header, now=NOW) == seconds


def test_text_excerpt_strips_tags_and_whitespace() -> None:
    page = httpx.Response(502, text="<html>\n<h1>502   Bad\nGateway</h1><p>cloudflare</p></html>")
    assert text_excerpt(page) == "502 Bad Gateway cloudflare"
