"""Tier 0's training and certification data: (text, final label) pairs from the service's
own traffic.

The decisions log carries no text, by design. The pairs are a join, made on demand by the
operator's command and kept nowhere by the service: each request on the requests topic (its
text, its record timestamp) with its result on the results topic (the final routed label,
the models that answered). ``join`` makes it from the records of both topics read without a
consumer group, so it can only reach what the topics still retain (docs/OPERATIONS.md, "Tier
0"); ``escalator tier0`` reads them, or a pairs file (JSON lines, ``write_jsonl``) saved from
such a read. A pairs file holds request text: it is as sensitive as the requests topic.

One line of a pairs file::

    {"id": "r-1", "text": "...", "label": "spam", "ts_ms": 1765000000000,
     "cheap_model": "claude-haiku-4-5", "strong_model": "claude-sonnet-4-5"}

``strong_model`` is null for a request the cheap tier answered alone. Only results with a
label are pairs (a dead letter or a refusal without a label teaches nothing); results of tier 0
itself are left out (tier 0 must learn from the models, not from itself).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from escalator.tier0.model import Tier0Error

#: The tier name tier 0's own results carry.
TIER = "tier0"


@dataclass(frozen=True, slots=True)
class Pair:
    id: str
    text: str
    label: str
    ts_ms: int
    cheap_model: str
    strong_model: str | None = None


def _pair(data: Any, where: str) -> Pair:
    if not isinstance(data, dict):
        raise Tier0Error(f"{where}: a pair must be a JSON object")
    for key in ("id", "text", "label", "cheap_model"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise Tier0Error(f"{where}: {key!r} must be a non-empty string")
    ts, strong = data.get("ts_ms"), data.get("strong_model")
    if not isinstance(ts, int) or isinstance(ts, bool):
        raise Tier0Error(f"{where}: 'ts_ms' must be an integer (epoch milliseconds)")
    if strong is not None and not isinstance(strong, str):
        raise Tier0Error(f"{where}: 'strong_model' must be a string or null")
    return Pair(data["id"], data["text"], data["label"], ts, data["cheap_model"], strong)


def read_jsonl(path: Path) -> list[Pair]:
    """Every pair of a pairs file; a bad line is an error naming it."""
    out = []
    with path.open("rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                data = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise Tier0Error(f"{path}:{number}: not JSON ({exc})") from exc
            out.append(_pair(data, f"{path}:{number}"))
    return out


def write_jsonl(pairs: Iterable[Pair], out: IO[bytes]) -> int:
    n = 0
    for p in pairs:
        out.write(orjson.dumps(asdict(p)) + b"\n")
        n += 1
    return n


def join(
    requests: Iterable[tuple[int, bytes | None]], results: Iterable[bytes | None]
) -> list[Pair]:
    """Pairs from request records (record timestamp in ms, value) and result values.

    A request without a result, a result without its request, an unreadable record, a result
    without a label or made by tier 0 itself: left out. A request id seen twice (a producer
    retry) keeps its first text; a result seen twice (at-least-once) its first label."""
    texts: dict[str, tuple[str, int]] = {}
    for ts_ms, value in requests:
        try:
            data = orjson.loads(value or b"")
        except orjson.JSONDecodeError:
            continue
        if isinstance(data, dict) and isinstance(data.get("id"), str):
            text = data.get("text")
            if isinstance(text, str) and text.strip():
                texts.setdefault(data["id"], (text, ts_ms))
    out: dict[str, Pair] = {}
    for value in results:
        try:
            data = orjson.loads(value or b"")
        except orjson.JSONDecodeError:
            continue
        if not isinstance(data, dict):
            continue
        rid, label = data.get("id"), data.get("label")
        if not isinstance(rid, str) or not isinstance(label, str) or rid in out:
            continue
        if rid not in texts or data.get("tier") == TIER:
            continue
        cheap, strong = _models(data.get("attempts"))
        if cheap is None:
            continue
        text, ts_ms = texts[rid]
        out[rid] = Pair(rid, text, label, ts_ms, cheap, strong)
    return sorted(out.values(), key=lambda p: (p.ts_ms, p.id))


def _models(attempts: object) -> tuple[str | None, str | None]:
    cheap = strong = None
    for a in attempts if isinstance(attempts, list) else ():
        if isinstance(a, dict) and isinstance(a.get("model"), str):
            if a.get("tier") == "cheap" and cheap is None:
                cheap = a["model"]
            elif a.get("tier") == "strong" and strong is None:
                strong = a["model"]
    return cheap, strong


@dataclass(frozen=True)
class Window:
    """A set of pairs in time order, and what an artefact records about it."""

    pairs: list[Pair]

    @property
    def n(self) -> int:
        return len(self.pairs)

    @property
    def first_ms(self) -> int:
        return self.pairs[0].ts_ms

    @property
    def last_ms(self) -> int:
        return self.pairs[-1].ts_ms

    def texts(self) -> list[str]:
        return [p.text for p in self.pairs]

    def labels(self) -> list[str]:
        return [p.label for p in self.pairs]

    def models(self) -> dict[str, str]:
        """The one model pair the window's answers came from (or an error saying why not)."""
        cheap = {p.cheap_model for p in self.pairs}
        strong = {p.strong_model for p in self.pairs if p.strong_model is not None}
        if len(cheap) != 1 or len(strong) != 1:
            raise Tier0Error(
                f"the window's answers come from cheap model(s) {sorted(cheap)} and strong "
                f"model(s) {sorted(strong)}: tier 0 learns from one model pair; choose a "
                "window (--since/--until) with exactly one of each"
            )
        return {"cheap": next(iter(cheap)), "strong": next(iter(strong))}

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for p in self.pairs:
            h.update(orjson.dumps([p.id, p.text, p.label, p.ts_ms]))
        return h.hexdigest()

    def describe(self) -> dict[str, Any]:
        from escalator.contract.messages import iso_ms

        counts: dict[str, int] = {}
        for p in self.pairs:
            counts[p.label] = counts.get(p.label, 0) + 1
        return {
            "first_ts_ms": self.first_ms,
            "last_ts_ms": self.last_ms,
            "first_ts": iso_ms(self.first_ms),
            "last_ts": iso_ms(self.last_ms),
            "pairs": self.n,
            "labels": dict(sorted(counts.items())),
            "sha256": self.fingerprint(),
        }


def window(
    pairs: Iterable[Pair], since_ms: int | None = None, until_ms: int | None = None
) -> Window:
    """The pairs in [since, until), in time order; an error if none are."""
    kept = sorted(
        (
            p
            for p in pairs
            if (since_ms is None or p.ts_ms >= since_ms)
            and (until_ms is None or p.ts_ms < until_ms)
        ),
        key=lambda p: (p.ts_ms, p.id),
    )
    if not kept:
        raise Tier0Error("no pairs in the window")
    return Window(kept)
