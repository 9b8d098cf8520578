"""Tier 0's pairs (tier0/pairs.py): the join of requests with results, and pairs files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from escalator.tier0 import pairs
from escalator.tier0.model import Tier0Error

CHEAP, STRONG = "claude-haiku-4-5", "claude-sonnet-4-5"


def _request(rid: str, text: str) -> bytes:
    return orjson.dumps({"id": rid, "text": text})


def _result(rid: str, label: str | None, tier: str = "cheap", strong: bool = False) -> bytes:
    attempts: list[dict[str, Any]] = [{"tier": "cheap", "model": CHEAP}]
    if strong:
        attempts.append({"tier": "strong", "model": STRONG})
    return orjson.dumps({"id": rid, "label": label, "tier": tier, "attempts": attempts})


def test_the_join_keeps_answered_requests_with_their_text_time_and_models() -> None:
    """A pair per request with a labelled result; the rest are left out, and duplicates keep
    their first text and first label (producer retries, at-least-once results)."""
    requests = [
        (1000, _request("a", "refund please")),
        (2000, _request("b", "win a prize")),
        (3000, _request("c", "no result for me")),
        (4000, b"not json"),
        (5000, _request("a", "a retried copy")),
        (6000, _request("d", "dead-lettered later")),
        (7000, _request("e", "answered by tier 0")),
    ]
    results = [
        _result("b", "spam", tier="strong", strong=True),
        _result("a", "billing"),
        _result("a", "other"),
        _result("d", None),
        _result("e", "spam", tier="tier0"),
        _result("zz", "spam"),
        None,
    ]
    got = pairs.join(requests, results)
    assert got == [
        pairs.Pair("a", "refund please", "billing", 1000, CHEAP, None),
        pairs.Pair("b", "win a prize", "spam", 2000, CHEAP, STRONG),
    ]


def test_a_pairs_file_round_trips_and_a_bad_line_is_named(tmp_path: Path) -> None:
    """write_jsonl then read_jsonl gives the pairs back; a bad line names file and line."""
    ps = [pairs.Pair("a", "t", "x", 1, CHEAP, STRONG), pairs.Pair("b", "u", "y", 2, CHEAP, None)]
    path = tmp_path / "pairs.jsonl"
    with path.open("wb") as f:
        assert pairs.write_jsonl(ps, f) == 2
    assert pairs.read_jsonl(path) == ps
    path.write_bytes(path.read_bytes() + b'{"id": "c", "text": "v", "label": "x"}\n')
    with pytest.raises(Tier0Error, match=r"pairs.jsonl:3: 'cheap_model'"):
        pairs.read_jsonl(path)


def test_a_window_selects_by_time_and_needs_one_model_pair() -> None:
    """[since, until) in time order; a window with two cheap models is an error saying so."""
    ps = [pairs.Pair(str(i), "t", "x", i, CHEAP, STRONG if i % 2 else None) for i in range(10)]
    w = pairs.window(reversed(ps), since_ms=3, until_ms=7)
    assert [p.ts_ms for p in w.pairs] == [3, 4, 5, 6]
    assert w.models() == {"cheap": CHEAP, "strong": STRONG}
    assert w.describe()["pairs"] == 4 and w.describe()["labels"] == {"x": 4}
    mixed = pairs.window([*ps, pairs.Pair("z", "t", "x", 20, "claude-other", STRONG)])
    with pytest.raises(Tier0Error, match="one model pair"):
        mixed.models()
    with pytest.raises(Tier0Error, match="no pairs"):
        pairs.window(ps, since_ms=100)
