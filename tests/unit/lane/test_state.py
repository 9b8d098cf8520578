"""The lane's state record (lane/state.py): written and read back, the same key from intent
to tombstone, and what a restarted worker finds still open."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from escalator.lane.state import BatchState, NotAState, open_batches

INTENT = BatchState("claude-haiku-5-5", ("p0o7", "p1o9"), 1_800_000_000_000)


def test_intent_then_submitted_round_trips_under_one_key() -> None:
    """The intent and the submitted record share a key; both read back equal."""
    done = INTENT.submitted("msgbatch_1", 1_800_000_001_000)
    assert done.key == INTENT.key == b"claude-haiku-5-5/p0o7/1800000000000"
    for state in (INTENT, done):
        assert BatchState.from_value(state.value()) == state
    with pytest.raises(ValueError, match="already submitted"):
        done.submitted("msgbatch_2", 1)


def test_ten_thousand_members_fit_in_one_kafka_record() -> None:
    """A full batch's state stays under Kafka's default 1 MB record limit."""
    members = tuple(f"p{2**31 - 1}o{2**62 + i}" for i in range(10_000))
    state = BatchState("m", members, 1).submitted("msgbatch_" + "x" * 40, 2)
    assert len(state.value()) < 1_000_000


def test_what_a_restarted_worker_finds_open() -> None:
    """The last record per key wins; a tombstone closes its batch; an intent without a batch
    id stays open (the create may or may not have happened)."""
    other = BatchState("claude-sonnet-5-5", ("p2o1",), 5)
    closed = BatchState("m", ("p3o3",), 6)
    done = INTENT.submitted("msgbatch_1", 9)
    found = open_batches(
        [
            (INTENT.key, INTENT.value()),
            (other.key, other.value()),
            (closed.key, closed.value()),
            (done.key, done.value()),
            (closed.key, None),
        ]
    )
    assert found == {INTENT.key: done, other.key: other}


def good() -> dict[str, Any]:
    return dict(orjson.loads(INTENT.submitted("b", 2).value()))


@pytest.mark.parametrize(
    "change",
    [
        {"state_version": 2},
        {"model": ""},
        {"members": []},
        {"members": ["p0o7", "p0o7"]},
        {"members": ["r-1"]},
        {"members": [7]},
        {"batch_id": None},
        {"submitted_ms": None},
        {"batch_id": ""},
        {"intent_ms": -1},
        {"intent_ms": True},
    ],
)
def test_what_is_not_a_state_says_so(change: dict[str, Any]) -> None:
    """Every malformed field is refused with NotAState, never read as a batch."""
    with pytest.raises(NotAState):
        BatchState.from_value(orjson.dumps({**good(), **change}))


def test_a_record_under_another_key_is_refused() -> None:
    """A state filed under a key that is not its own would escape its tombstone."""
    with pytest.raises(NotAState, match="not the state's own"):
        open_batches([(b"elsewhere", INTENT.value())])
    with pytest.raises(NotAState, match="not JSON"):
        open_batches([(b"k", b"{")])
