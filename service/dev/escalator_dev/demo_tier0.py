"""The demo's tier-0 phase (issue 25): tier 0 trained on an earlier phase's answers, certified
on a later window, then running in front of the models, with its share and the cost before
and after.

It runs after the other phases, on their topics. ``escalator tier0 pairs`` (here, the same
group-less join, in this process) turns every answered request into a (text, final label)
pair, and ``escalator tier0 train`` fits on phase 3's: the answers given under the thresholds
still in force (phase 1 ran at 0.70, and in phase 4 people decided some: labels given under
other rules are not the ones the service gives now). The dataset has no repeats, and tier 0 is
for streams that repeat themselves, so the phase sends such a stream: phase 3's texts again
under new ids, with ``FRESH_SHARE`` of texts never sent before. Its first part, answered by the
models, is the window ``escalator tier0 certify`` certifies on (pairs newer than anything
training saw); the second part is sent twice, without tier 0 and with it
(ESCALATOR_TIER0_FILE), so that before and after are the same texts. Cost per 1,000 requests
comes from the decisions log: every model call, tier 0's sampled checks included, the
measurement shadows (ESCALATOR_SHADOW_RATE=1, as in phase 3) apart.

Training needs the ``tier0`` extra (scikit-learn): without it the phase says so in one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import logging
import random
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from escalator.config import Settings, load_settings
from escalator_dev import datasets

#: Agreement with the models' routed answers that tier 0 must certify (delta 0.05): the
#: demo's calibration target by default. About 4% of a window of this stream differ from
#: tier 0 (mostly its never-sent texts), and 300 pairs cannot certify 95% then.
TARGET = 0.90
#: The share of each part of the stream that is texts never sent before.
FRESH_SHARE = 0.1
RoundTrip = Callable[[Settings, list[datasets.Sample]], Coroutine[Any, Any, tuple[Any, float]]]
CAVEAT = (
    "  The emulator's models are keyword rules, which a bag-of-words model can learn, and this\n"
    "  stream repeats texts on purpose: the share tier 0 answers here says nothing about what\n"
    "  it would answer of real traffic."
)


def missing_extra() -> str | None:
    """Why tier 0 cannot be trained here, or None."""
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return "scikit-learn is not installed (pip install 'escalator[tier0]')"
    return None


def stream(
    seen: list[datasets.Sample], fresh: list[datasets.Sample], n: int, part: str, seed: int
) -> list[datasets.Sample]:
    """``n`` requests: ``FRESH_SHARE`` of them (as far as ``fresh`` goes) texts of ``fresh``,
    the rest texts of ``seen`` drawn again, shuffled, each under a new id ending in ``part``
    and its position."""
    rng = random.Random(seed)
    chosen = fresh[: int(FRESH_SHARE * n)]
    chosen += [rng.choice(seen) for _ in range(n - len(chosen))]
    rng.shuffle(chosen)
    return [dataclasses.replace(s, id=f"{s.id}-{part}{i}") for i, s in enumerate(chosen)]


def compare(
    before: dict[str, dict[str, Any]],
    after: dict[str, dict[str, Any]],
    cost: dict[str, float],
    pairs: list[tuple[str, str]],
) -> dict[str, float]:
    """Per (id without tier 0, id with it) of the same text: each run's cost per 1,000
    requests (``cost``: what the model calls made for an id cost), tier 0's share of the
    second run, and how often the second's routed label is the first's."""
    n = max(1, len(pairs))
    return {
        "before_per_1k": 1000 * sum(cost.get(b, 0.0) for b, _ in pairs) / n,
        "after_per_1k": 1000 * sum(cost.get(a, 0.0) for _, a in pairs) / n,
        "share": sum(after[a]["tier"] == "tier0" for _, a in pairs) / n,
        "agreement": sum(before[b]["label"] == after[a]["label"] for b, a in pairs) / n,
    }


class Withdrawals(logging.Handler):
    """Keeps the ``tier0_withdrawn`` events the service logs (tier0/watch.py) while attached
    to the ``escalator.tier0`` logger."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.events: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == "tier0_withdrawn":
            self.events.append(dict(getattr(record, "fields", {})))


def _cli(args: list[str]) -> tuple[int, str]:
    """An ``escalator`` command in this process: its exit code and what it printed."""
    from escalator.cli.main import main as cli

    said = io.StringIO()
    with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
        code = cli(args)
    return code, said.getvalue()


def _run(command: str, args: list[str]) -> int:
    """Print ``escalator COMMAND ARGS``, run it, print what it said, indented."""
    print(f"  escalator tier0 {command} {' '.join(args)}")
    code, said = _cli(["tier0", command, *args])
    for line in said.splitlines():
        if line.strip():
            print(f"    {line}")
    return code


async def _pairs(settings: Settings, path: Path, since_ms: int | None) -> list[Any]:
    """``escalator tier0 pairs --output PATH [--since]``, on the demo's topics."""
    from escalator.tier0 import pairs, source

    t = settings.topics
    found = await source.read_pairs(settings.kafka, t.requests, t.results, since_ms, None)
    with path.open("wb") as f:
        pairs.write_jsonl(found, f)
    return found


async def _costs(settings: Settings, ids: set[str]) -> dict[str, float]:
    """Per id, what its model calls cost (the decisions log), measurement shadows apart."""
    from escalator.calibration.decisions_log import read_topic

    cost = dict.fromkeys(ids, 0.0)
    for d in await read_topic(settings.kafka, settings.topics.decisions):
        if d.id in cost and not (d.shadow and d.attempt.tier == "strong"):
            cost[d.id] += d.attempt.cost_usd
    return cost


def phase(
    env: dict[str, str],
    out_dir: Path,
    pool: list[datasets.Sample],
    round_trip: RoundTrip,
    simulated: bool,
) -> None:
    """Phase 5. ``env``: the demo's environment (its topics); ``pool``: phases 1, 3 and 4's
    samples, a third each, in that order; ``round_trip``: the demo's (both tiers answer the
    samples; it returns their tally)."""
    print("\nPhase 5: tier 0, a local classifier trained on the service's own answers.")
    missing = missing_extra()
    if missing is not None:
        print(f"  skipped: {missing}.")
        return
    print(CAVEAT)
    count = len(pool) // 3
    folder = out_dir / "tier0"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tier0-ledger.jsonl").unlink(missing_ok=True)  # a new service: its windows are new
    artefact, trained, window = folder / "tier0.json", folder / "pairs.jsonl", folder / "cert.jsonl"
    base = {
        **env,
        "ESCALATOR_SHADOW_RATE": "1",
        "ESCALATOR_THRESHOLDS_FILE": str(out_dir / "thresholds.json"),
    }
    settings = load_settings(base)
    found = asyncio.run(_pairs(settings, trained, None))
    phase3 = pool[count : 2 * count]
    ids = {s.id for s in phase3}
    stamps = [p.ts_ms for p in found if p.id in ids]
    print(f"  escalator tier0 pairs --output {trained}: {len(found)} pairs (phases 1, 3 and 4)")
    if not stamps:
        print("  no answered request of phase 3 to train on: tier 0 is not trained.")
        return
    span = ["--since", str(min(stamps)), "--until", str(max(stamps) + 1)]
    if _run("train", ["--input", str(trained), *span, "--output", str(artefact)]) != 0:
        return
    taken = {s.id for s in pool}
    unused = [s for s in datasets.sample(datasets.load_harm_samples(), 10**6) if s.id not in taken]
    half = len(unused) // 2
    first = stream(phase3, unused[:half], count, "c", 5)
    second = stream(phase3, unused[half:], count, "b", 6)
    new = sum(s.id.rsplit("-", 1)[0] not in ids for s in first)
    print(
        f"\n  A stream that repeats itself, {count} requests: phase 3's texts again, and {new} "
        "never sent before; the models answer (phase 3's thresholds)."
    )
    since = int(time.time() * 1000)
    asyncio.run(round_trip(settings, first))
    asyncio.run(_pairs(settings, window, since))
    args = ["--input", str(window), "--artefact", str(artefact), "--target", str(TARGET)]
    if _run("certify", args) != 0:
        print("  tier 0 does not run: the service refuses an artefact that is not certified.")
        return
    print(f"\n  {count} more requests like those, twice: without tier 0, then with it.")
    again = [dataclasses.replace(s, id=f"{s.id}-t0") for s in second]
    before, _ = asyncio.run(round_trip(settings, second))
    with_tier0 = load_settings({**base, "ESCALATOR_TIER0_FILE": str(artefact)})
    withdrawals, watch = Withdrawals(), logging.getLogger("escalator.tier0")
    watch.addHandler(withdrawals)
    try:
        after, _ = asyncio.run(round_trip(with_tier0, again))
    finally:
        watch.removeHandler(withdrawals)
    cost = asyncio.run(_costs(settings, {s.id for s in second + again}))
    pairs = [(b.id, a.id) for b, a in zip(second, again, strict=True)]
    f = compare(before.results, after.results, cost, pairs)
    saved = 1 - f["after_per_1k"] / f["before_per_1k"] if f["before_per_1k"] else 0.0
    tag = " [simulated]" if simulated else ""
    print(
        f"  before (the models alone): ${f['before_per_1k']:.4f} per 1,000 requests{tag}\n"
        f"  after (tier 0 in front):   ${f['after_per_1k']:.4f} per 1,000 requests, its "
        f"sampled checks included; tier 0 answered {f['share']:.1%}, saved {saved:.1%}{tag}\n"
        f"  with tier 0, the routed answer is the one without it for {f['agreement']:.1%} of "
        f"these texts\n  (certified: at least {TARGET:.0%} on traffic like the window's){tag}\n"
        f"  artefact: {artefact} (escalator tier0 inspect --artefact {artefact})"
    )
    unseen = [(b, a) for b, a in pairs if b.rsplit("-", 1)[0] not in ids]
    local = [(b, a) for b, a in unseen if after.results[a]["tier"] == "tier0"]
    agreed = sum(before.results[b]["label"] == after.results[a]["label"] for b, a in local)
    print(
        f"  Of the {len(unseen)} texts it never saw, tier 0 answered {len(local)} and agreed with "
        f"the models on {agreed} of those{tag}."
    )
    if withdrawals.events:
        escalated = sum(bool(r["escalated"]) for r in before.results.values()) / max(1, count)
        print(
            f"  Its live test withdrew it during that run, after "
            f"{withdrawals.events[0].get('observations')} samples (the ERROR line above): "
            "every later\n  request went to the models. The test counts a sampled answer that "
            "the cheap model would escalate\n  as differing, and the models escalated "
            f"{escalated:.0%} of these texts without tier 0 (BENCHMARKS.md, B9)."
        )
