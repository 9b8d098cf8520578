"""``escalator dead-letters summary|replay`` (cli/deadletters.py) over a fake dead-letter topic
and a fake producer: the count per reason with its times and last error, the filters, what a
replay sends where, what it leaves out and why, the refusals, the dry run. Against a broker:
tests/integration/test_dead_letter_replay.py."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from escalator.cli import deadletters
from escalator.cli.main import main
from escalator.contract.messages import REPLAY_HEADER
from tests.unit.cli.test_main import clean_env  # noqa: F401 (a fixture)

REQUESTS = "escalator.requests"
ESCALATIONS = "escalator.escalations"


@dataclass
class Record:
    offset: int
    headers: list[tuple[str, bytes]]
    timestamp: int = 0
    topic: str = "escalator.dead-letter"
    partition: int = 0
    key: bytes | None = b"k"
    value: bytes | None = b'{"id": "r"}'


def dead(
    offset: int,
    reason: str,
    at_ms: int,
    source: str | None = REQUESTS,
    error: str | None = None,
) -> Record:
    headers = [("traceparent", b"00-tp"), ("x-escalator-reason", reason.encode())]
    headers.append(("x-escalator-failed-at-ms", str(at_ms).encode()))
    if source is not None:
        headers.append(("x-escalator-source-topic", source.encode()))
    if error is not None:
        headers.append(("x-escalator-error-message", error.encode()))
    return Record(offset, headers, value=f'{{"id": "r{offset}"}}'.encode())


TOPIC = [
    dead(0, "model_unavailable", 1_000, error="overloaded"),
    dead(1, "model_unavailable", 3_000, ESCALATIONS, error="overloaded again"),
    dead(2, "invalid_json", 2_000),
    dead(3, "model_unavailable", 2_000, source="somewhere.else"),
    dead(4, "text_too_long", 5_000),
]


@dataclass
class Broker:
    records: list[Record]
    sent: list[Any] = field(default_factory=list)
    produced: int = 0  # calls of produce_and_await


@pytest.fixture
def broker(clean_env: pytest.MonkeyPatch) -> Broker:  # noqa: F811
    """The dead-letter topic holds TOPIC; what the command publishes is recorded."""
    fake = Broker(list(TOPIC))

    async def check_connection(kafka: object) -> None:
        return None

    async def read_to_end(kafka: object, topic: str, **_: object) -> AsyncIterator[Record]:
        assert topic == "escalator.dead-letter"
        for record in fake.records:
            yield record

    async def produce_and_await(kafka: object, records: AsyncIterable[Any]) -> int:
        fake.produced += 1
        async for record in records:
            fake.sent.append(record)
        return len(fake.sent)

    clean_env.setattr(deadletters, "check_connection", check_connection)
    clean_env.setattr(deadletters, "read_to_end", read_to_end)
    clean_env.setattr(deadletters, "produce_and_await", produce_and_await)
    return fake


def test_the_summary_counts_by_reason_with_first_last_and_last_error(
    broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    """Per reason, sorted: the count, the first and last failure time, the latest error
    message; nothing is published."""
    assert main(["dead-letters", "summary"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "dead-letter topic escalator.dead-letter: 5 records"
    assert (
        out[1] == "  invalid_json: 1 (failed 1970-01-01T00:00:02.000Z .. 1970-01-01T00:00:02.000Z)"
    )
    assert out[2] == (
        "  model_unavailable: 3 (failed 1970-01-01T00:00:01.000Z .. 1970-01-01T00:00:03.000Z; "
        "last error: overloaded again)"
    )
    assert out[3].startswith("  text_too_long: 1 ")
    assert out[-1].startswith("each one (id, time, error): escalator read dead-letters")
    assert broker.produced == 0 and broker.sent == []


def test_the_filters_choose_by_reason_and_failure_time(
    broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    """--reason keeps its reasons; --since is inclusive and --until exclusive, on the failure
    time (the record's timestamp when the header is missing); every record is still scanned."""
    broker.records.append(Record(5, [("x-escalator-reason", b"text_too_long")], timestamp=4_000))
    argv = ["dead-letters", "summary", "--reason", "model_unavailable", "--reason", "text_too_long"]
    assert main([*argv, "--since", "2000", "--until", "5000"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith(": 6 records")
    assert out[1].startswith("  model_unavailable: 2 (failed 1970-01-01T00:00:02.000Z .. ")
    assert out[2].startswith("  text_too_long: 1 (failed 1970-01-01T00:00:04.000Z .. ")
    assert len([line for line in out if line.startswith("  ")]) == 2


def test_a_replay_sends_each_one_back_to_its_source_topic_marked_as_a_replay(
    broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    """--all: key, value and the original headers (ours dropped) to the source topic, plus
    replay-of naming where the dead letter was; a malformed record and one whose source is
    not an input topic are left out and said so."""
    assert main(["dead-letters", "replay", "--all"]) == 0
    out = capsys.readouterr().out
    assert [(topic, value) for topic, _, value, _ in broker.sent] == [
        (REQUESTS, b'{"id": "r0"}'),
        (ESCALATIONS, b'{"id": "r1"}'),
        (REQUESTS, b'{"id": "r4"}'),
    ]
    _, key, _, headers = broker.sent[1]
    assert key == b"k"
    assert headers == [("traceparent", b"00-tp"), (REPLAY_HEADER, b"escalator.dead-letter/0/1")]
    assert "  model_unavailable: 3, replayed 2 (failed" in out
    assert "  text_too_long: 1, replayed 1 (failed" in out
    assert "--include-malformed to force): invalid_json 1" in out
    assert "not replayed (source is not an input topic): 1" in out


def test_include_malformed_replays_them_too(
    broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    """--reason invalid_json --include-malformed: the malformed record is sent back."""
    argv = ["dead-letters", "replay", "--reason", "invalid_json", "--include-malformed"]
    assert main(argv) == 0
    assert [value for _, _, value, _ in broker.sent] == [b'{"id": "r2"}']
    assert "  invalid_json: 1, replayed 1" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["replay"], "replay needs --reason REASON (repeatable) or --all"),
        (["replay", "--reason", "invalid_json"], "replay --reason invalid_json: these records"),
    ],
)
def test_a_replay_without_a_choice_or_of_malformed_records_is_refused(
    argv: list[str], says: str, broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    """No reason and no --all, or a malformed reason without --include-malformed: one line,
    exit 2, before anything is read or sent."""
    assert main(["dead-letters", *argv]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1
    assert broker.produced == 0


def test_a_dry_run_counts_what_would_be_replayed_and_publishes_nothing(
    broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    """replay --dry-run: the same counts and left-out lines, no producer, and it says so."""
    assert main(["dead-letters", "replay", "--all", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert broker.produced == 0 and broker.sent == []
    assert "replayed" not in out.replace("not replayed", "")
    assert "invalid_json 1" in out and out.rstrip().splitlines()[-2] == (
        "dry run: nothing was published"
    )
