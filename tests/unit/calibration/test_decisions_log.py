"""Reading and writing the decisions log (calibration/decisions_log.py): JSONL round trips
and errors, the time window of ``load``, the topic reader's window and skips, and the late
decisions that join their window. The record itself: tests/unit/contract/test_decisions.py."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from escalator.calibration.decisions_log import read_jsonl, with_late_decisions, write_jsonl
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
