"""Asynchronous invocation, the pure parts: when an event is retried or given up (Lambda's retry
timeline, doubling delays, event age, throttles), what its destinations receive, and its config."""

from __future__ import annotations

import random

import orjson
import pytest

from poller.config import Config
from poller.engine.backoff import Backoff
from poller.invocation.asynchronous.record import dead_letter_attributes, invocation_record, without_payloads
from poller.invocation.asynchronous.schedule import (
    EVENT_AGE_EXCEEDED,
    RETRIES_EXHAUSTED,
    GiveUp,
    Retry,
    RetryPolicy,
    after_function_error,
    after_throttle,
)

T0 = 1_800_000_000.0


def test_the_default_timeline_is_an_attempt_then_retries_one_and_two_minutes_later() -> None:
    policy = RetryPolicy()  # AWS's defaults: 2 retries, 60 s doubling, 6 hours
    first = after_function_error(policy, attempts=1, accepted_at=T0, now=T0)
    assert first == Retry(T0 + 60, "FunctionError")
    second = after_function_error(policy, attempts=2, accepted_at=T0, now=first.due)
    assert second == Retry(T0 + 60 + 120, "FunctionError")
    assert after_function_error(policy, attempts=3, accepted_at=T0, now=second.due) == GiveUp(
        RETRIES_EXHAUSTED
    )


def test_the_retry_delay_doubles_after_each_retry() -> None:
    policy = RetryPolicy(maximum_retry_attempts=2, retry_delay=5)
    assert [policy.function_error_delay(attempts) for attempts in (1, 2, 3, 4)] == [5, 10, 20, 40]
    assert RetryPolicy(retry_delay=0).function_error_delay(2) == 0


def test_no_retries_gives_up_after_the_first_failure() -> None:
    policy = RetryPolicy(maximum_retry_attempts=0)
    assert after_function_error(policy, attempts=1, accepted_at=T0, now=T0) == GiveUp(RETRIES_EXHAUSTED)


def test_a_retry_past_the_event_age_falls_due_when_the_age_runs_out() -> None:
    # 60 s of age and a 100 s delay: the event is not kept waiting past its expiry.
    policy = RetryPolicy(maximum_event_age=60, retry_delay=100)
    decision = after_function_error(policy, attempts=1, accepted_at=T0, now=T0 + 1)
    assert decision == Retry(T0 + 60, "FunctionError")
    assert policy.expired(T0, decision.due)
    assert not policy.expired(T0, decision.due - 0.001)


def test_an_event_that_failed_once_its_age_ran_out_is_given_up() -> None:
    policy = RetryPolicy(maximum_event_age=60)
    assert after_function_error(policy, attempts=1, accepted_at=T0, now=T0 + 61) == GiveUp(EVENT_AGE_EXCEEDED)


def test_retries_exhausted_comes_before_event_age() -> None:
    policy = RetryPolicy(maximum_retry_attempts=1, maximum_event_age=60)
    assert after_function_error(policy, attempts=2, accepted_at=T0, now=T0 + 90) == GiveUp(RETRIES_EXHAUSTED)


def test_throttles_back_off_from_one_second_to_five_minutes_until_the_event_is_too_old() -> None:
    policy = RetryPolicy(maximum_event_age=3600, throttle_backoff=Backoff(1.0, 300.0, jitter=False))
    now, throttles, waits = T0, 0, []
    while True:
        throttles += 1
        decision = after_throttle(policy, throttles=throttles, accepted_at=T0, now=now)
        if isinstance(decision, GiveUp):
            break
        assert decision.reason == "Throttled"
        waits.append(decision.due - now)
        now = decision.due
    assert decision == GiveUp(EVENT_AGE_EXCEEDED)
    assert waits[:10] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]
    # Never a retry-attempt limit: throttles go on for the hour, the last wait cut at the expiry.
    assert now == T0 + 3600
    assert len(waits) == 9 + (3600 - 511) // 300 + 1


def test_throttle_backoff_has_jitter_within_half_and_whole_of_the_nominal_wait() -> None:
    policy = RetryPolicy(throttle_backoff=Backoff(1.0, 300.0, rng=random.Random(7)))
    waits = [after_throttle(policy, throttles=5, accepted_at=T0, now=T0).due - T0 for _ in range(50)]
    assert all(8 <= wait <= 16 for wait in waits)
    assert len(set(waits)) > 1


def test_the_policy_comes_from_the_event_invoke_config() -> None:
    config = Config.model_validate(
        {
            "functions": {
                "f": {
                    "handler": "m.h",
                    "event_invoke_config": {
                        "maximum_retry_attempts": 1,
                        "maximum_event_age_in_seconds": 120,
                        "retry_delay_in_seconds": 0.5,
                    },
                }
            }
        }
    )
    policy = RetryPolicy.of(config.functions["f"].event_invoke_config)
    assert (policy.maximum_retry_attempts, policy.maximum_event_age, policy.retry_delay) == (1, 120, 0.5)
    assert (
        RetryPolicy.of(
            Config.model_validate({"functions": {"f": {"handler": "m.h"}}}).functions["f"].event_invoke_config
        )
        == RetryPolicy()
    )


# --- what destinations receive ------------------------------------------------------------------


def test_a_success_record_has_the_request_and_the_response_and_no_function_error() -> None:
    record = invocation_record(
        request_id="r-1",
        function_arn="arn:aws:lambda:us-east-1:000000000000:function:orders",
        condition="Success",
        invoke_count=1,
        request_payload=b'{"order": 7}',
        response_payload=b'{"ok": true}',
        function_error=None,
        now=T0,
    )
    assert record == {
        "version": "1.0",
        "timestamp": "2027-01-15T08:00:00.000Z",
        "requestContext": {
            "requestId": "r-1",
            "functionArn": "arn:aws:lambda:us-east-1:000000000000:function:orders:$LATEST",
            "condition": "Success",
            "approximateInvokeCount": 1,
        },
        "requestPayload": {"order": 7},
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST"},
        "responsePayload": {"ok": True},
    }


def test_a_failure_record_carries_the_error_document_and_unhandled() -> None:
    error = {"errorType": "ValueError", "errorMessage": "bad", "stackTrace": []}
    record = invocation_record(
        request_id="r-2",
        function_arn="arn:aws:lambda:us-east-1:000000000000:function:orders",
        condition="RetriesExhausted",
        invoke_count=3,
        request_payload=b"[1, 2]",
        response_payload=orjson.dumps(error),
        function_error="Unhandled",
        now=T0 + 0.25,
    )
    assert record["timestamp"] == "2027-01-15T08:00:00.250Z"
    assert record["requestContext"]["condition"] == "RetriesExhausted"
    assert record["requestContext"]["approximateInvokeCount"] == 3
    assert record["requestPayload"] == [1, 2]
    assert record["responseContext"] == {
        "statusCode": 200,
        "executedVersion": "$LATEST",
        "functionError": "Unhandled",
    }
    assert record["responsePayload"] == error


def test_an_event_never_invoked_has_no_response() -> None:
    record = invocation_record(
        request_id="r-3",
        function_arn="arn:aws:lambda:us-east-1:000000000000:function:orders",
        condition="EventAgeExceeded",
        invoke_count=0,
        request_payload=b'"text"',
        response_payload=None,
        function_error="Unhandled",
        now=T0,
    )
    assert record["requestContext"]["approximateInvokeCount"] == 0
    assert record["requestPayload"] == "text"
    assert record["responseContext"] is None
    assert record["responsePayload"] is None


def test_a_record_too_large_leaves_the_payloads_out_and_says_so() -> None:
    record = invocation_record(
        request_id="r-4",
        function_arn="arn:aws:lambda:us-east-1:000000000000:function:f",
        condition="Success",
        invoke_count=1,
        request_payload=b'{"big": "x"}',
        response_payload=b"null",
        function_error=None,
        now=T0,
    )
    smaller = without_payloads(record)
    assert smaller["requestPayload"] is None
    assert smaller["responsePayload"] is None
    assert "larger than the destination accepts" in smaller["payloadsOmitted"]
    assert smaller["requestContext"] == record["requestContext"]


def test_dead_letter_attributes_are_aws_names_with_the_status_and_a_cut_message() -> None:
    assert dead_letter_attributes("r-5", throttled=False, error_message="boom") == {
        "RequestID": "r-5",
        "ErrorCode": 200,
        "ErrorMessage": "boom",
    }
    long = dead_letter_attributes("r-6", throttled=True, error_message="é" * 2000)
    assert long["ErrorCode"] == 429
    assert len(str(long["ErrorMessage"]).encode()) <= 1024


# --- config --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"maximum_retry_attempts": 3}, "maximum_retry_attempts"),
        ({"maximum_event_age_in_seconds": 59}, "maximum_event_age_in_seconds"),
        ({"maximum_event_age_in_seconds": 21601}, "maximum_event_age_in_seconds"),
        ({"retry_delay_in_seconds": -1}, "retry_delay_in_seconds"),
        ({"destination_config": {"on_success": {"destination": "x", "type": "sqs"}}}, "type"),
    ],
)
def test_event_invoke_config_out_of_range_is_refused(settings: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Config.model_validate({"functions": {"f": {"handler": "m.h", "event_invoke_config": settings}}})


def test_destinations_of_async_invocations_must_exist() -> None:
    config = Config.model_validate(
        {
            "functions": {
                "f": {
                    "handler": "m.h",
                    "event_invoke_config": {
                        "destination_config": {
                            "on_success": {"destination": "ok"},
                            "on_failure": {"destination": "gone"},
                        }
                    },
                    "dead_letter_config": {"destination": "missing"},
                }
            },
            "destinations": {"ok": {"type": "file", "path": "out.jsonl"}},
        }
    )
    assert config.reference_errors() == [
        (
            ("functions", "f", "event_invoke_config", "destination_config", "on_failure", "destination"),
            "unknown destination 'gone'",
        ),
        (("functions", "f", "dead_letter_config", "destination"), "unknown destination 'missing'"),
    ]


def test_the_async_queue_defaults_to_sqlite_under_dot_poller() -> None:
    config = Config.model_validate({})
    assert (config.async_queue.type, config.async_queue.path) == ("sqlite", ".poller/async.db")
    with pytest.raises(ValueError, match="async_queue"):
        Config.model_validate({"async_queue": {"type": "redis"}})
