"""Batching, retry/bisect planning, ordered commits and outcome parsing: pure logic, no broker."""

from __future__ import annotations

import dataclasses
import inspect
import random

import pytest

from poller.engine.backoff import Backoff
from poller.engine.batching import Batcher
from poller.engine.checkpoint import CommitTracker
from poller.engine.outcome import Failed, InvocationError, PartiallyFailed, Succeeded, outcome_of
from poller.engine.records import Batch, Record, new_record
from poller.engine.retry import (
    RECORD_AGE_EXCEEDED,
    RECORD_TOO_LARGE,
    RETRY_ATTEMPTS_EXHAUSTED,
    Commit,
    GiveUp,
    Invoke,
    Release,
    Retry,
    RetryPolicy,
    Split,
    plan,
    plan_attempt,
)


def rec(position: int, *, size: int = 10, timestamp: float = 1000.0, lane: str = "t-0") -> Record:
    return Record(
        partition=lane,
        lane=lane,
        position=position,
        item_key=(lane, position),
        payload={"offset": position},
        size=size,
        timestamp=timestamp,
    )


def policy(retries: int = -1, age: float = -1, bisect: bool = False, ordered: bool = True) -> RetryPolicy:
    return RetryPolicy(retries, age, bisect, ordered, Backoff(1.0, 60.0, rng=random.Random(7)))


FAILED = Failed(InvocationError("ValueError", "boom"))


# --- records -------------------------------------------------------------------------------------


def test_new_record_sets_each_field_it_is_given_by_name() -> None:
    # new_record calls Record positionally: every field but `filtered` (set later, by the runner)
    # must be a keyword of it and land in the attribute of that name.
    fields = [field.name for field in dataclasses.fields(Record)]
    assert list(inspect.signature(new_record).parameters) == [name for name in fields if name != "filtered"]
    given = {name: object() for name in inspect.signature(new_record).parameters}
    record = new_record(**given)
    assert {name: getattr(record, name) for name in given} == given
    assert record.filtered is False
    required = [field.name for field in dataclasses.fields(Record) if field.default is dataclasses.MISSING]
    defaults = new_record(**{name: given[name] for name in required})
    assert (defaults.receive_count, defaults.group, defaults.data) == (0, None, None)


# --- batching ------------------------------------------------------------------------------------


def test_batch_ready_at_batch_size() -> None:
    batcher = Batcher(batch_size=3, window=10, max_bytes=1000)
    for i in range(4):
        batcher.extend([rec(i)], now=0)
    assert batcher.ready(0)
    assert [r.position for r in batcher.take()] == [0, 1, 2]
    assert not batcher.ready(0)  # one record waits for its window
    assert batcher.deadline() == 10


def test_batch_ready_when_window_passes_since_first_record() -> None:
    batcher = Batcher(batch_size=100, window=0.5, max_bytes=1000)
    batcher.extend([rec(0)], now=1.0)
    batcher.extend([rec(1)], now=1.4)
    assert not batcher.ready(1.49)
    assert batcher.ready(1.5)
    assert len(batcher.take()) == 2


def test_batch_closes_before_payload_limit() -> None:
    batcher = Batcher(batch_size=100, window=10, max_bytes=100)
    for i in range(5):
        batcher.extend([rec(i, size=40)], now=0)
    assert batcher.ready(0)  # 200 bytes pending > 100
    assert [r.position for r in batcher.take()] == [0, 1]
    assert [r.position for r in batcher.take()] == [2, 3]


def test_oversized_record_is_a_batch_of_its_own() -> None:
    batcher = Batcher(batch_size=100, window=0, max_bytes=100)
    batcher.extend([rec(0, size=500)], now=0)
    batcher.extend([rec(1, size=10)], now=0)
    assert [r.position for r in batcher.take()] == [0]
    assert [r.position for r in batcher.take()] == [1]


def filtered(position: int, size: int = 10) -> Record:
    record = rec(position, size=size)
    record.filtered = True
    return record


def test_filtered_records_ride_in_a_batch_without_counting_for_its_size_or_limit() -> None:
    batcher = Batcher(batch_size=2, window=10, max_bytes=100, max_records=50)
    batcher.extend([filtered(0, size=90), rec(1, size=40), filtered(2), filtered(3)], now=0, filtered=3)
    assert not batcher.ready(0)  # one record that counts, of two
    batcher.extend([rec(4, size=40), filtered(5), rec(6), rec(7)], now=0, filtered=1)
    assert batcher.ready(0)
    # Two records that count (80 bytes of the limit), the filtered ones before and between them.
    assert [r.position for r in batcher.take()] == [0, 1, 2, 3, 4, 5]
    assert [r.position for r in batcher.take()] == [6, 7]
    assert len(batcher) == 0


def test_a_lane_of_filtered_records_makes_batches_of_max_records() -> None:
    batcher = Batcher(batch_size=3, window=10, max_bytes=1000, max_records=4)
    batcher.extend([filtered(i) for i in range(6)], now=0, filtered=6)
    assert batcher.ready(0)  # none counts, but max_records wait: before the lane would pause
    assert [r.position for r in batcher.take()] == [0, 1, 2, 3]
    assert not batcher.ready(9.9)
    assert batcher.ready(10)  # the rest at the window's end
    assert [r.position for r in batcher.take()] == [4, 5]


def test_zero_window_is_ready_at_once() -> None:
    batcher = Batcher(batch_size=100, window=0, max_bytes=1000)
    batcher.extend([rec(0)], now=5)
    assert batcher.ready(5)


# --- retry planning ------------------------------------------------------------------------------


def test_success_commits_everything() -> None:
    batch = Batch([rec(0), rec(1)])
    assert plan(batch, Succeeded(), policy()) == [Commit(batch.records)]


def test_without_bisect_every_failure_counts() -> None:
    batch = Batch([rec(0), rec(1)])
    kinds = []
    for _ in range(3):
        [action] = plan(batch, FAILED, policy(retries=2))
        kinds.append(type(action))
        if isinstance(action, Retry):
            batch = action.batch
    assert kinds == [Retry, Retry, GiveUp]
    assert isinstance(action, GiveUp)
    assert action.condition == RETRY_ATTEMPTS_EXHAUSTED
    assert len(action.batch.records) == 2


def test_zero_retries_gives_up_after_first_failure() -> None:
    [action] = plan(Batch([rec(0)]), FAILED, policy(retries=0))
    assert isinstance(action, GiveUp)


def test_bisect_splits_in_order_and_halves_inherit_retries() -> None:
    batch = Batch([rec(i) for i in range(5)], retries=1)
    [action] = plan(batch, FAILED, policy(retries=2, bisect=True))
    assert isinstance(action, Split)
    assert [r.position for r in action.left.records] == [0, 1]
    assert [r.position for r in action.right.records] == [2, 3, 4]
    assert action.left.retries == action.right.retries == 1
    assert action.left.depth == 1


def test_bisect_isolates_poison_in_logarithmic_invocations() -> None:
    """Simulate the engine's queue: 100 records, one poison, bisect on, 2 retries."""
    records = [rec(i) for i in range(100)]
    poison = 37
    queue = [Batch(records)]
    invocations, committed, dead, dead_batch = 0, [], [], None
    p = policy(retries=2, bisect=True)
    while queue:
        batch = queue.pop(0)
        invocations += 1
        batch.invocations += 1
        failed = any(r.position == poison for r in batch.records)
        [action] = plan(batch, FAILED if failed else Succeeded(), p)
        if isinstance(action, Commit):
            committed += [r.position for r in action.records]
        elif isinstance(action, Split):
            queue[0:0] = [action.left, action.right]
        elif isinstance(action, Retry):
            queue.insert(0, action.batch)
        else:
            assert isinstance(action, GiveUp)
            dead += [r.position for r in action.batch.records]
            dead_batch = action.batch
    assert dead == [poison]
    assert committed == [i for i in range(100) if i != poison]
    # ~2*log2(100) invocations to isolate and commit around it, plus 2 retries of the poison.
    assert invocations <= 2 * 7 + 1 + 2
    # The poison record was invoked once per bisection level, then retried twice on its own.
    assert dead_batch is not None
    assert dead_batch.invocations == dead_batch.depth + 1 + 2


def test_partial_failure_on_stream_retries_from_lowest_failed() -> None:
    batch = Batch([rec(i) for i in range(6)])
    outcome = PartiallyFailed(frozenset({("t-0", 4), ("t-0", 2)}), InvocationError("x", "y"))
    commit, retry = plan(batch, outcome, policy(bisect=True))
    assert isinstance(commit, Commit)
    assert isinstance(retry, Retry)
    assert [r.position for r in commit.records] == [0, 1]
    assert [r.position for r in retry.batch.records] == [2, 3, 4, 5]
    assert retry.batch.retries == 1


def test_partial_failure_on_queue_retries_only_failed() -> None:
    batch = Batch([rec(i) for i in range(4)])
    outcome = PartiallyFailed(frozenset({("t-0", 1), ("t-0", 3)}), InvocationError("x", "y"))
    commit, retry = plan(batch, outcome, policy(ordered=False))
    assert isinstance(commit, Commit)
    assert isinstance(retry, Retry)
    assert [r.position for r in commit.records] == [0, 2]
    assert [r.position for r in retry.batch.records] == [1, 3]


def test_released_retries_are_counted_per_record_by_the_broker() -> None:
    fresh, worn = rec(0), rec(1)
    worn.receive_count = 2
    batch = Batch([fresh, worn])
    give_up, release = plan(batch, FAILED, policy(retries=2, ordered=False), release=True)
    assert isinstance(give_up, GiveUp)
    assert give_up.batch.records == [worn]
    assert isinstance(release, Release)
    assert release.records == [fresh]
    assert 0.5 <= release.delay <= 1.0


def test_release_with_bisect_splits_in_process_first() -> None:
    batch = Batch([rec(0), rec(1)])
    [action] = plan(batch, FAILED, policy(ordered=False, bisect=True), release=True)
    assert isinstance(action, Split)


def test_partial_failure_with_release_commits_successes_and_releases_failures() -> None:
    batch = Batch([rec(i) for i in range(3)])
    outcome = PartiallyFailed(frozenset({("t-0", 1)}), InvocationError("x", "y"))
    commit, release = plan(batch, outcome, policy(ordered=False), release=True)
    assert isinstance(commit, Commit)
    assert isinstance(release, Release)
    assert [r.position for r in commit.records] == [0, 2]
    assert [r.position for r in release.records] == [1]


def test_backoff_doubles_to_sixty_seconds_with_jitter() -> None:
    p = policy()
    for retry, base in [(1, 1), (2, 2), (3, 4), (6, 32), (7, 60), (30, 60)]:
        delay = p.backoff(retry)
        assert base / 2 <= delay <= base


def positions(batch: Batch) -> list[int]:
    return [record.position for record in batch.records]


def test_before_an_attempt_expired_and_too_large_records_are_given_up_and_the_rest_invoked() -> None:
    batch = Batch([rec(0, timestamp=0), rec(1, timestamp=950), rec(2, size=10**9, timestamp=990)])
    expired, too_large, invoke = plan_attempt(batch, now=1000.0, policy=policy(age=60))
    assert isinstance(expired, GiveUp)
    assert (positions(expired.batch), expired.condition) == ([0], RECORD_AGE_EXCEEDED)
    assert isinstance(too_large, GiveUp)
    assert (positions(too_large.batch), too_large.condition) == ([2], RECORD_TOO_LARGE)
    assert isinstance(invoke, Invoke)
    assert positions(invoke.batch) == [1]


def test_a_lone_record_too_large_to_invoke_is_given_up_and_nothing_invoked() -> None:
    [give_up] = plan_attempt(Batch([rec(0, size=10**9, timestamp=990)]), now=1000.0, policy=policy(age=60))
    assert isinstance(give_up, GiveUp)
    assert give_up.condition == RECORD_TOO_LARGE


def test_a_batch_with_nothing_to_take_out_is_invoked_as_it_is() -> None:
    batch = Batch([rec(i, timestamp=950 + i) for i in range(3)])
    assert plan_attempt(batch, now=1000.0, policy=policy(age=60)) == [Invoke(batch)]


def test_without_an_age_limit_old_records_are_invoked() -> None:
    batch = Batch([rec(0, timestamp=0)])
    assert plan_attempt(batch, now=10**9, policy=policy(age=-1)) == [Invoke(batch)]


def test_records_of_a_group_handed_back_earlier_go_back_after_it_uninvoked() -> None:
    a1, b1, a2 = rec(1), rec(2), rec(3)
    a1.group = a2.group = "a"
    b1.group = "b"
    release, invoke = plan_attempt(
        Batch([a1, b1, a2]), now=1000.0, policy=policy(), handed_back_groups={"a": 4.0}
    )
    assert release == Release([a1, a2], 4.0, held_back=True)
    assert isinstance(invoke, Invoke)
    assert invoke.batch.records == [b1]
    [only] = plan_attempt(Batch([a1]), now=1000.0, policy=policy(), handed_back_groups={"a": 4.0})
    assert isinstance(only, Release)


def test_a_stopping_lane_settles_what_was_decided_and_starts_nothing_new() -> None:
    """The draining rule, as data: commit and hand back still run while a lane stops (drain,
    revocation); invoking, retrying, splitting and giving up do not."""
    still = {kind.__name__ for kind in (Invoke, Commit, Retry, Release, Split, GiveUp) if kind.while_draining}
    assert still == {"Commit", "Release"}


def test_backoff_doubles_from_first_to_maximum_with_equal_jitter_and_resets() -> None:
    backoff = Backoff(first=0.5, maximum=4.0, rng=random.Random(1))
    delays = [backoff.next() for _ in range(6)]
    for delay, nominal in zip(delays, [0.5, 1, 2, 4, 4, 4], strict=True):
        assert nominal / 2 <= delay <= nominal
    backoff.reset()
    assert backoff.next() <= 0.5
    assert Backoff(first=1.0, maximum=8.0, jitter=False).delay(3) == 4.0


# --- ordered commits -----------------------------------------------------------------------------


def test_checkpoint_advances_only_over_contiguous_completed_records() -> None:
    tracker = CommitTracker()
    records = [rec(i) for i in range(5)]
    tracker.track(records)
    assert tracker.complete([records[1], records[2]]) is None
    assert tracker.complete([records[0]]) is records[2]
    assert tracker.complete([records[4]]) is None
    assert tracker.complete([records[3]]) is records[4]
    assert len(tracker) == 0


def test_checkpoint_over_many_batches_in_order_and_out_of_order() -> None:
    tracker = CommitTracker()
    records = [rec(i) for i in range(5000)]
    for start in range(0, 5000, 500):
        tracker.track(records[start : start + 500])
    # Whole batches in order, past the point where completed records are dropped from memory.
    for start in range(0, 3000, 100):
        assert tracker.complete(records[start : start + 100]) is records[start + 99]
    assert len(tracker) == 2000
    # Then one out of order: nothing passes it until the gap is filled.
    assert tracker.complete(records[3100:3200]) is None
    assert tracker.complete(records[3000:3100]) is records[3199]
    assert tracker.complete(records[3200:5000]) is records[4999]
    assert len(tracker) == 0


# --- outcomes ------------------------------------------------------------------------------------


def kafka_key(identifier: object) -> object:
    if isinstance(identifier, dict) and isinstance(identifier.get("offset"), int):
        return (identifier.get("partition"), identifier["offset"])
    return None


KEYS = [("t-0", 0), ("t-0", 1)]


@pytest.mark.parametrize("result", [None, {}, {"batchItemFailures": []}, {"batchItemFailures": None}, ""])
def test_empty_responses_are_success(result: object) -> None:
    outcome = outcome_of(result, report_batch_item_failures=True, batch_keys=KEYS, item_key=kafka_key)
    assert isinstance(outcome, Succeeded)


@pytest.mark.parametrize(
    "failures",
    [
        [{"itemIdentifier": ""}],
        [{"itemIdentifier": None}],
        [{"id": {"partition": "t-0", "offset": 1}}],
        [{"itemIdentifier": {"partition": "t-0", "offset": 99}}],
        [{"itemIdentifier": "t-0:1"}],
        "not a list",
    ],
)
def test_invalid_partial_responses_fail_the_whole_batch(failures: object) -> None:
    result = {"batchItemFailures": failures}
    outcome = outcome_of(result, report_batch_item_failures=True, batch_keys=KEYS, item_key=kafka_key)
    assert isinstance(outcome, Failed)
    assert outcome.error.error_type == "InvalidPartialBatchResponse"


def test_partial_response_names_failed_keys() -> None:
    result = {"batchItemFailures": [{"itemIdentifier": {"partition": "t-0", "offset": 1}}]}
    outcome = outcome_of(result, report_batch_item_failures=True, batch_keys=KEYS, item_key=kafka_key)
    assert outcome == PartiallyFailed(frozenset({("t-0", 1)}), outcome.error)  # type: ignore[union-attr]


def test_partial_response_ignored_without_report_batch_item_failures() -> None:
    result = {"batchItemFailures": [{"itemIdentifier": {"partition": "t-0", "offset": 1}}]}
    outcome = outcome_of(result, report_batch_item_failures=False, batch_keys=KEYS, item_key=kafka_key)
    assert isinstance(outcome, Succeeded)
