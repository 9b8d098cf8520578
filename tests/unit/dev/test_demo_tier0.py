"""The demo's tier-0 phase (escalator_dev/demo_tier0.py): skipped in one line without the
tier0 extra, the repeating stream it sends, and the before/after figures it prints."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from escalator_dev import datasets, demo_tier0


def _samples(prefix: str, n: int) -> list[datasets.Sample]:
    return [
        datasets.Sample(f"{prefix}{i}", f"text {prefix}{i}", "safe", 0.0, "t") for i in range(n)
    ]


def test_without_scikit_learn_the_phase_says_so_in_one_line_and_runs_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """No tier0 extra: the phase's heading and one line saying why it is skipped, no
    traceback, no request sent, nothing written."""
    monkeypatch.setitem(sys.modules, "sklearn", None)  # what `import sklearn` meets when absent
    sent: list[Any] = []

    async def round_trip(settings: Any, samples: list[datasets.Sample]) -> tuple[Any, float]:
        sent.append(samples)
        raise AssertionError("the phase must not send anything")

    demo_tier0.phase({}, tmp_path, _samples("p", 90), round_trip, simulated=True)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("Phase 5: tier 0")
    assert lines[1:] == [
        "  skipped: scikit-learn is not installed (pip install 'escalator[tier0]')."
    ]
    assert sent == [] and list(tmp_path.iterdir()) == []


def test_with_scikit_learn_the_extra_is_not_missing() -> None:
    """The development environment has the extra: the phase runs there."""
    assert demo_tier0.missing_extra() is None


@pytest.mark.parametrize(("fresh", "expected_new"), [(100, 10), (4, 4), (0, 0)])
def test_the_stream_repeats_seen_texts_with_a_share_of_fresh_ones(
    fresh: int, expected_new: int
) -> None:
    """FRESH_SHARE of the requests (as far as the fresh texts go) are fresh texts, the rest
    seen ones; every id is new and unique; the same seed gives the same stream."""
    seen, new = _samples("s", 30), _samples("f", fresh)
    out = demo_tier0.stream(seen, new, 100, "c", 5)
    assert len(out) == 100
    assert len({s.id for s in out}) == 100
    texts = [s.text for s in out]
    assert sum(t.startswith("text f") for t in texts) == expected_new
    assert {t for t in texts if t.startswith("text s")} <= {s.text for s in seen}
    assert all(s.id.endswith(f"-c{i}") for i, s in enumerate(out))
    assert out == demo_tier0.stream(seen, new, 100, "c", 5)
    assert out != demo_tier0.stream(seen, new, 100, "c", 6)


def test_compare_reports_cost_share_and_agreement_text_by_text() -> None:
    """Costs per 1,000 of each run, tier 0's share of the second, and agreement of the routed
    label per text pair (not per id)."""
    before = {
        "b0": {"label": "safe", "tier": "cheap"},
        "b1": {"label": "unsafe", "tier": "strong"},
        "b2": {"label": "safe", "tier": "cheap"},
        "b3": {"label": "safe", "tier": "strong"},
    }
    after = {
        "a0": {"label": "safe", "tier": "tier0"},
        "a1": {"label": "safe", "tier": "tier0"},  # differs from b1
        "a2": {"label": "safe", "tier": "cheap"},
        "a3": {"label": "safe", "tier": "strong"},
    }
    cost = {"b0": 0.001, "b1": 0.005, "b2": 0.001, "b3": 0.005, "a2": 0.001, "a3": 0.005}
    got = demo_tier0.compare(before, after, cost, [(f"b{i}", f"a{i}") for i in range(4)])
    assert got == pytest.approx(
        {"before_per_1k": 3.0, "after_per_1k": 1.5, "share": 0.5, "agreement": 0.75}
    )


def test_withdrawals_keeps_the_watch_s_withdrawal_events_only() -> None:
    """The service's ``tier0_withdrawn`` ERROR line (logged as tier0/watch.py logs it) is
    kept with its fields; other events on the same logger are not."""
    import logging

    from escalator.observability.logs import log

    logger = logging.getLogger("escalator.tier0")
    kept = demo_tier0.Withdrawals()
    logger.addHandler(kept)
    try:
        log(logger, "tier0_loaded", logging.ERROR, version="t0-x")
        log(logger, "tier0_withdrawn", logging.ERROR, version="t0-x", observations=16)
    finally:
        logger.removeHandler(kept)
    log(logger, "tier0_withdrawn", logging.ERROR, version="t0-y", observations=3)
    assert kept.events == [{"version": "t0-x", "observations": 16}]
