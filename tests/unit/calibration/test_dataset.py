"""The dataset stage: decisions paired per request (calibration/dataset.py)."""

from __future__ import annotations

from escalator.calibration.dataset import (
    pair_decisions,
)
from tests.unit.calibration.logs import (
    read,
    tiny_log,
)


def test_pairing_from_decision_records() -> None:
    """Cheap and strong records pair by id; the design comes from outcome and shadow_rate,
    or, in older logs, from the version's shadow sample_rate; failed answers count."""

    def rec(rid: str, tier: str, label: str | None, **kw: object) -> dict[str, object]:
        return {
            "id": rid,
            "attempt": {
                "tier": tier,
                "model": f"m-{tier}",
                "label": label,
                "confidence": kw.get("conf", 0.9),
                "valid": label is not None,
                "cost_usd": 0.001,
            },
            "outcome": kw.get("outcome"),
            "shadow": bool(kw.get("shadow")),
            "sample_rate": kw.get("rate"),
            "gold_label": kw.get("gold"),
            "threshold_version": "v1",
            "ts_ms": 1,
        }

    d = pair_decisions(
        read(
            [
                rec("a", "cheap", "safe", conf=0.9, outcome="accepted", gold="safe"),
                rec("a", "strong", "safe", outcome="shadow", shadow=True, rate=0.25),
                rec("b", "cheap", "unsafe", conf=0.4, outcome="escalated"),
                rec("b", "strong", None, outcome="refused"),
                rec("c", "cheap", "safe", conf=0.99, outcome="accepted"),
                rec("d", "cheap", None, outcome="escalated"),
                rec("d", "strong", "safe", outcome="final", rate=1.0),
                # A sample of tier 0's answers asked of the cheap model: no request of its own.
                rec("e", "cheap", "safe", outcome="shadow", shadow=True, rate=0.05),
            ]
        )
    )
    assert d.ids == ["a", "b", "c", "d"]
    assert list(d.certain) == [False, True, False, True]
    assert list(d.answered) == [True, True, False, True]
    assert list(d.shadow_rate[:1]) == [0.25]  # inferred from the shadow record
    assert d.conf[3] == -1.0  # an invalid cheap answer escalates at every threshold
    s = d.sample()
    assert s.disagree[1]  # the refused strong answer was due: it counts against agreement
    assert d.gold[0] == d.labels.index("safe") and d.gold[1] == -1


def test_human_labels_are_not_read_as_metadata_gold() -> None:
    """A person's gold_label is the human source only: the gold column stays as before."""
    d = pair_decisions(read(tiny_log()))
    assert int((d.gold >= 0).sum()) == 0
