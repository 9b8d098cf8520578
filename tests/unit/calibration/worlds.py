"""Synthetic worlds whose agreement curve and escalation rate are known exactly.

A world is a discrete distribution of cheap confidences (100 values at 0.005, 0.015, ...,
0.995, never on the 0.01 threshold grid) and, for each, the probability that the cheap answer
agrees with the strong one. Truth is then a finite sum: ``agreement(t) = 1 - sum over c >= t of
w(c) (1 - g(c))``. ``log`` draws a decisions log from a world under a design: the threshold in
force when it was written and the shadow rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from escalator.calibration.dataset import Dataset, default_grid

FloatArray = npt.NDArray[np.float64]
LABELS = ["review-needed", "safe", "unsafe"]
CONF = np.arange(0.005, 1.0, 0.01)


@dataclass(frozen=True)
class World:
    name: str
    weight: FloatArray  # P(conf = CONF[k])
    agree: FloatArray  # P(cheap == strong | conf = CONF[k])
    target: float

    def agreement(self, t: float | FloatArray) -> FloatArray:
        """True routed agreement at threshold(s) t (accept when conf >= t)."""
        tt = np.atleast_1d(np.asarray(t, dtype=np.float64))
        accepted = CONF[None, :] >= tt[:, None]
        return np.asarray(1.0 - (accepted * self.weight * (1 - self.agree)).sum(axis=1))

    def escalation(self, t: float | FloatArray) -> FloatArray:
        tt = np.atleast_1d(np.asarray(t, dtype=np.float64))
        return np.asarray((self.weight * (CONF[None, :] < tt[:, None])).sum(axis=1))

    def optimum(self) -> tuple[float, float]:
        """(threshold, escalation) of the cheapest grid threshold meeting the target."""
        grid = default_grid()
        ok = self.agreement(grid) >= self.target
        # Agreement rises with t in these worlds, so the first passing point is the cheapest.
        t = float(grid[np.argmax(ok)])
        return t, float(self.escalation(t)[0])


def _discretised_beta(a: float, b: float) -> FloatArray:
    w = CONF ** (a - 1) * (1 - CONF) ** (b - 1)
    return np.asarray(w / w.sum())


def realistic() -> World:
    """Most traffic confident and right: disagreement concentrates at low confidence."""
    return World(
        name="realistic",
        weight=0.65 * _discretised_beta(25.0, 1.1) + 0.35 * _discretised_beta(4.0, 1.8),
        agree=np.asarray(1.0 - 0.5 * (1.0 - CONF) ** 1.2 - 0.004),
        target=0.98,
    )


def overconfident() -> World:
    """Confident but often wrong: agreement stays near 0.85 even at high confidence."""
    return World(
        name="overconfident",
        weight=_discretised_beta(9.0, 1.2),
        agree=np.asarray(0.70 + 0.15 * CONF),
        target=0.97,
    )


def log(
    world: World,
    rng: np.random.Generator,
    n: int,
    *,
    p: float,
    tau: float = 0.7,
    version: str = "v1",
) -> Dataset:
    """A decisions log of ``n`` requests written under threshold ``tau`` and shadow rate ``p``."""
    k = rng.choice(len(CONF), size=n, p=world.weight)
    conf = CONF[k]
    agree = rng.random(n) < world.agree[k]
    cheap = rng.integers(0, 3, n)
    strong = np.where(agree, cheap, (cheap + rng.integers(1, 3, n)) % 3)
    escalated = conf < tau
    certain = escalated | (p >= 1.0)
    answered = escalated | (rng.random(n) < p)
    gold = np.where(rng.random(n) < 0.9, strong, rng.integers(0, 3, n))
    return one_stratum(conf, cheap, strong, gold, escalated, certain, answered, tau, p, version)


def one_stratum(
    conf: Any,
    cheap: Any,
    strong: Any,
    gold: Any,
    escalated: Any,
    certain: Any,
    answered: Any,
    tau: float,
    p: float,
    version: str = "v1",
) -> Dataset:
    """The paired decisions log of one threshold version, from per-request arrays (the strong
    label where answered, fixed costs, one second apart)."""
    n = len(conf)
    return Dataset(
        ids=[f"r{i}" for i in range(n)],
        labels=LABELS,
        conf=conf,
        cheap_label=cheap,
        cheap_cost=np.full(n, 1e-5),
        strong_label=np.where(answered, strong, -1),
        strong_cost=np.where(answered, 2e-4, 0.0),
        answered=answered,
        accepted=~escalated,
        certain=certain,
        stratum=np.zeros(n, dtype=np.int64),
        tau=np.full(n, tau),
        shadow_rate=np.full(n, p),
        gold=gold,
        ts_ms=np.arange(n, dtype=np.int64) * 1000,
        strata=(version,),
        cheap_model="cheap",
        strong_model="strong",
    )


def records(
    world: World,
    rng: np.random.Generator,
    n: int,
    *,
    p: float,
    tau: float = 0.7,
    version: str = "v1",
    start_ms: int = 1_795_000_000_000,
    every_ms: int = 1000,
    prefix: str = "r",
) -> list[dict[str, object]]:
    """The same world as decisions-log records (decision.v1.json), as the service writes them."""
    d = log(world, rng, n, p=p, tau=tau, version=version)
    out: list[dict[str, object]] = []
    for i in range(n):
        ts = start_ms + i * every_ms
        rid = f"{prefix}{i}"
        escalated = bool(d.conf[i] < tau)
        common = {"schema_version": 1, "id": rid, "threshold_version": version, "ts_ms": ts}
        common["ts"] = "2026-11-28T00:00:00Z"
        common["gold_label"] = LABELS[int(d.gold[i])]
        out.append(
            {
                **common,
                "attempt": attempt_record("cheap", LABELS[int(d.cheap_label[i])], float(d.conf[i])),
                "outcome": "escalated" if escalated else "accepted",
                "threshold": tau,
                "shadow_rate": p,
                "shadow": False,
                "sample_rate": None,
            }
        )
        if d.answered[i]:
            out.append(
                {
                    **common,
                    "ts_ms": ts + 1,
                    "attempt": attempt_record("strong", LABELS[int(d.strong_label[i])], 0.9),
                    "outcome": "final" if escalated else "shadow",
                    "threshold": None,
                    "shadow_rate": None,
                    "shadow": not escalated,
                    "sample_rate": 1.0 if escalated else p,
                }
            )
    return out


def attempt_record(tier: str, label: str, conf: float) -> dict[str, object]:
    """An attempt as the decisions log writes it (fixed tokens and costs per tier)."""
    return {
        "tier": tier,
        "model": "claude-haiku-5-5" if tier == "cheap" else "claude-sonnet-5-5",
        "label": label,
        "confidence": conf,
        "valid": True,
        "input_tokens": 1200,
        "output_tokens": 12,
        "cache_write_tokens": 0,
        "cache_read_tokens": 0,
        "cost_usd": 1e-5 if tier == "cheap" else 2e-4,
        "latency_ms": 100.0,
    }


def versions(world: World, rng: np.random.Generator, *designs: tuple[int, float, float]) -> Dataset:
    """One log of several threshold versions, oldest first: ``(requests, shadow rate,
    threshold)`` per version, as ``log`` draws each (versions v1, v2, ...)."""
    parts = [
        log(world, rng, n, p=p, tau=tau, version=f"v{k + 1}")
        for k, (n, p, tau) in enumerate(designs)
    ]
    offset = 0
    ts = []
    for part in parts:
        ts.append(part.ts_ms + offset)
        offset += part.n * 1000
    cat = {
        key: np.concatenate([getattr(part, key) for part in parts])
        for key in (
            "conf",
            "cheap_label",
            "cheap_cost",
            "strong_label",
            "strong_cost",
            "answered",
            "accepted",
            "certain",
            "tau",
            "shadow_rate",
            "gold",
        )
    }
    n = sum(part.n for part in parts)
    return Dataset(
        ids=[f"r{i}" for i in range(n)],
        labels=LABELS,
        stratum=np.concatenate(
            [np.full(part.n, k, dtype=np.int64) for k, part in enumerate(parts)]
        ),
        ts_ms=np.concatenate(ts),
        strata=tuple(f"v{k + 1}" for k in range(len(parts))),
        cheap_model="cheap",
        strong_model="strong",
        **cat,
    )
