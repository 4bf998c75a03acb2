"""Folding a run's repeated events: the first of a burst is a line, the rest a count."""

from __future__ import annotations

from knrun.run.events import Event, EventTally


def rate_limited(round_: int) -> Event:
    return Event(
        "rate_limited", f"429s: pacing at 9.0 requests/s (round {round_})", {"rounds": round_}
    )


def test_a_burst_of_429s_is_one_line_then_a_count_with_its_rounds() -> None:
    tally = EventTally()
    shown = [tally.add(rate_limited(r)) for r in [1, 1, 2, 3, 1, 2, 1, 1, 2, 3, 1, 1]]
    assert shown == [True] + [False] * 11
    assert tally.take_unshown() == ["rate_limited x11 more (rounds 1-3)"]
    assert tally.take_unshown() == []  # said once
    assert tally.repeated() == ["rate_limited x12 (rounds 1-3)"]
    assert tally.to_json() == {"rate_limited": {"count": 12, "rounds": [1, 3]}}


def test_the_same_message_twice_is_said_once_and_a_new_one_is_said() -> None:
    tally = EventTally()
    credit = Event("balance_check", "xAI: used all available credits")
    assert tally.add(credit) is True
    assert tally.add(Event("balance_check", "xAI: used all available credits")) is False
    assert tally.add(Event("balance_check", "something else")) is True
    assert tally.repeated() == ["balance_check x3"]
