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


def test_an_error_comes_as_error_message_or_as_a_status() -> None:
    plain = parse_result({"batch_request_id": "a", "error_message": "overloaded"}, "m")
    status = parse_result({"batch_request_id": "b", "error": {"code": 13, "message": "boom"}}, "m")
    bare = parse_result({"batch_request_id": "c"}, "m")
    assert plain is not None and plain.reply is None and plain.error == "overloaded"
    assert status is not None and status.error == "boom"
    assert bare is not None and bare.reply is None and bare.error  # never silently "ok"


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


def test_counters_with_fields_missing_read_as_zero_and_done_means_nothing_pending() -> None:
    info = parse_batch({"batch_id": "b1", "state": {"num_requests": 3, "num_success": 3}})
    assert info.done and info.finished == 3 and info.total_cost_ticks is None
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
