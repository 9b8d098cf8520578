"""Reading and writing the decisions log (calibration/decisions_log.py): JSONL round trips
and errors, the time window of ``load``, the topic reader's window and skips, and the late
decisions that join their window. The record itself: tests/unit/contract/test_decisions.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from escalator.calibration import decisions_log
from escalator.calibration.decisions_log import read_jsonl, with_late_decisions, write_jsonl
from escalator.config import KafkaSettings
from escalator.contract.decisions import Decision
from escalator.errors import EscalatorError
from tests.unit.contract.test_decisions import cheap_decision, human, strong_decision


def test_an_export_round_trips_through_jsonl_and_skips_what_is_not_a_decision(
    tmp_path: Path,
) -> None:
    """write_jsonl then read_jsonl gives the same decisions; a JSON line that is not a
    decision is skipped; a line that is not JSON is an error naming the line."""
    decisions = [cheap_decision(), strong_decision(), human()]
    path = tmp_path / "log.jsonl"
    with path.open("wb") as f:
        write_jsonl(decisions, f)
        f.write(b'{"something": "else"}\n\n')
    assert read_jsonl(path) == decisions
    with path.open("ab") as f:
        f.write(b"{oops\n")
    with pytest.raises(EscalatorError, match=r"log.jsonl:6: not JSON"):
        read_jsonl(path)


def test_late_human_decisions_join_their_window() -> None:
    """Human decisions after --until count when their request's cheap answer is inside."""
    inside = cheap_decision()
    late = replace(human(), ts_ms=inside.ts_ms + 10_000)
    other = replace(late, id="r2")
    got = with_late_decisions([inside, late, other], inside.ts_ms + 1)
    assert got == [inside, late]


def test_export_writes_each_record_back_as_it_was_read() -> None:
    """Nested unknown keys, wrong-typed values, a missing field and an older schema version
    survive a read and a write unchanged; a record written by this process is written whole."""
    import io

    odd = {
        "schema_version": 0,
        "id": "r-odd",
        "outcome": "accepted",
        "threshold_version": "v1",
        "sample_rate": "0.25",
        "ts_ms": 1.5,
        "adjudication": {"sampled": True, "future": [1, 2]},
        "attempt": {
            "tier": "cheap",
            "model": "claude-haiku-5-5",
            "label": "safe",
            "confidence": 0.9,
            "valid": True,
            "input_tokens": 10,
            "output_tokens": 2,
            "latency_ms": 5,
            "cost_usd": 0.0001,
            "a_key_from_the_future": {"nested": True},
        },
        "unknown_top": "kept",
    }
    read = Decision.from_dict(orjson.loads(orjson.dumps(odd)))
    out = io.BytesIO()
    write_jsonl([read], out)
    assert orjson.loads(out.getvalue()) == odd
    assert out.getvalue() == orjson.dumps(odd) + b"\n"


def _at(decision: Decision, ts_ms: int, **fields: Any) -> Decision:
    """The decision at another time, as read from a log (no raw bytes kept)."""
    return replace(decision, ts_ms=ts_ms, raw=None, **fields)


def test_a_missing_file_is_one_error_naming_it(tmp_path: Path) -> None:
    """``--input`` naming no file: an EscalatorError with the path, not a traceback."""
    with pytest.raises(EscalatorError, match=r"nope.jsonl: no such file"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_load_from_a_file_keeps_the_window_since_inclusive_until_exclusive(
    tmp_path: Path,
) -> None:
    """From ``--input``: the records with since <= ts_ms < until, either end open if not
    given; no Kafka settings needed."""
    records = [_at(cheap_decision(), ts, id=f"r{ts}") for ts in (1000, 2000, 3000)]
    path = tmp_path / "log.jsonl"
    with path.open("wb") as f:
        write_jsonl(records, f)

    def ids(since: int | None, until: int | None) -> list[str]:
        return [r.id for r in decisions_log.load(None, "decisions", path, since, until)]

    assert ids(None, None) == ["r1000", "r2000", "r3000"]
    assert ids(2000, None) == ["r2000", "r3000"]
    assert ids(None, 3000) == ["r1000", "r2000"]
    assert ids(1500, 2500) == ["r2000"]


def test_load_without_a_file_or_kafka_says_what_to_give() -> None:
    """Neither ``--input`` nor KAFKA_BOOTSTRAP_SERVERS: one error naming both."""
    with pytest.raises(EscalatorError, match="give --input FILE, or set KAFKA_BOOTSTRAP"):
        decisions_log.load(None, "decisions", None, None, None)


@dataclass
class _Record:
    timestamp: int
    value: bytes | None


def test_the_topic_reader_reads_from_since_skips_after_until_and_non_decisions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """From the topic: ``since`` is handed to the reader (a seek by time), records at or after
    ``until`` and values that are not decisions (or empty) are skipped, order kept."""
    asked: dict[str, Any] = {}
    first = _at(cheap_decision(), 1000, id="a")
    second = _at(strong_decision(), 1500, id="b")
    records = [
        _Record(1000, first.value()),
        _Record(1200, b'{"something": "else"}'),
        _Record(1300, None),
        _Record(1500, second.value()),
        _Record(2000, _at(cheap_decision(), 2000, id="late").value()),
    ]

    async def read_to_end(
        kafka: KafkaSettings, topic: str, *, since_ms: int | None = None
    ) -> AsyncIterator[_Record]:
        asked.update(topic=topic, since_ms=since_ms)
        for record in records:
            yield record

    monkeypatch.setattr(decisions_log, "read_to_end", read_to_end)
    kafka = KafkaSettings(bootstrap_servers="localhost:9")
    got = asyncio.run(decisions_log.read_topic(kafka, "decisions", 900, 2000))
    assert [r.id for r in got] == ["a", "b"]
    assert asked == {"topic": "decisions", "since_ms": 900}


def test_only_people_and_shadows_join_late_and_no_until_keeps_everything() -> None:
    """After ``until``: a person's decision and a shadow strong answer for a window request
    join; a late cheap answer, a late routed strong answer, and a shadow of a request whose
    cheap answer is not in the window do not. No ``until``: every record, as given."""
    inside = _at(cheap_decision(), 1000)
    shadow = _at(strong_decision(), 5000, shadow=True)
    routed = _at(strong_decision(), 5000)
    cheap_again = _at(cheap_decision(), 5000)
    person = _at(human(), 6000)
    stranger = _at(strong_decision(), 5000, shadow=True, id="r9")
    records = [inside, shadow, routed, cheap_again, person, stranger]
    assert with_late_decisions(records, 2000) == [inside, shadow, person]
    assert with_late_decisions(records, None) == records
