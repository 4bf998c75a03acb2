"""The Batch API's replies read defensively: each shape a result can come in, and counters with
fields missing."""

from __future__ import annotations

from knrun.xai.batch import parse_batch, parse_result

REPLY = {
    "choices": [{"message": {"content": "{}"}, "finish_reason": "stop"}],
    "usage": {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 25,
        "cost_in_usd_ticks": 1234,
    },
}


def test_a_result_carries_the_chat_reply_with_its_bill() -> None:
    item = {
        "batch_request_id": "1.6:7",
        "batch_result": {"response": {"chat_get_completion": REPLY}},
    }
    result = parse_result(item, "grok-4.3")
    assert result is not None and result.request_id == "1.6:7" and result.error is None
    assert result.reply is not None and result.reply.usage.billed_ticks == 1234
    assert result.reply.usage.reasoning_tokens == 10


def test_an_error_comes_in_each_shape_the_public_record_shows() -> None:
    """xAI's REST reference, its guide and the proto disagree on a failed entry's shape: a
    top-level `error_message`, `batch_result.error` as a string, or as `{code, message}`."""
    shapes = [
        {"batch_request_id": "a", "error_message": "overloaded"},
        {"batch_request_id": "a", "batch_result": {"error": "overloaded"}},
        {"batch_request_id": "a", "batch_result": {"error": {"code": 13, "message": "overloaded"}}},
        {"batch_request_id": "a", "error": {"code": 13, "message": "overloaded"}},
    ]
    for item in shapes:
        result = parse_result(item, "m")
        assert result is not None and result.reply is None and result.error == "overloaded"
        assert not result.cancelled
    bare = parse_result({"batch_request_id": "c"}, "m")
    assert bare is not None and bare.reply is None and bare.error  # never silently "ok"


def test_a_cancelled_request_listed_as_an_error_is_known_as_cancelled() -> None:
    by_code = parse_result(
        {"batch_request_id": "a", "batch_result": {"error": {"code": 1, "message": "x"}}}, "m"
    )
    by_words = parse_result({"batch_request_id": "b", "error_message": "Request cancelled."}, "m")
    assert by_code is not None and by_code.cancelled
    assert by_words is not None and by_words.cancelled


def test_a_reply_without_usage_is_an_error_not_a_free_result() -> None:
    broken = {"batch_request_id": "d", "batch_result": {"response": {"chat_get_completion": {}}}}
    result = parse_result(broken, "m")
    assert (
        result is not None
        and result.reply is None
        and "lacks choices or usage" in str(result.error)
    )


def test_an_entry_without_an_id_is_skipped() -> None:
    assert parse_result({"error_message": "x"}, "m") is None


def test_counters_left_out_are_unknown_never_done() -> None:
    """The proto says the counters are "not always populated": a reply without them (or
    without `num_pending`) says nothing about what is pending, and is never read as done."""
    missing = parse_batch({"batch_id": "b0", "name": "n"})
    partial = parse_batch({"batch_id": "b1", "state": {"num_requests": 3, "num_success": 3}})
    assert not missing.counted and not missing.done
    assert not partial.counted and not partial.done
    info = parse_batch({"batch_id": "b1", "state": {"num_requests": 3, "num_pending": 0}})
    assert info.counted and info.done and info.total_cost_ticks is None
    assert not info.cancelled and info.cancelled_by_xai is None
    refused = parse_batch(
        {
            "batch_id": "b2",
            "state": {"num_pending": 2},
            "cancel_by_xai_message": "quota",
            "cancel_time": "2026-12-01T00:00:00Z",
            "cost_breakdown": {"total_cost_usd_ticks": "9"},
        }
    )
    assert not refused.done and refused.cancelled and refused.cancelled_by_xai == "quota"
    assert refused.total_cost_ticks == 9
