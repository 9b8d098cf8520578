"""The dataset stage: decisions paired per request, the grids searched, and what the
estimators read per request.

Decisions are paired per request id (``pair_decisions``): the cheap answer (every request has
one), the strong answer where one was due or sampled, the gold label where the request carried
one, the threshold version and shadow rate in force. Both objectives start here; the human
objective adds the adjudication sample on top of the pairs (``adjudications.py``).

Measurement through the batch lane arrives late (hours after its request's decision) and in
any order. Pairing is by id, so order does not matter; what matters is a measurement not in
the log yet. A cheap decision whose shadow went by batch says so (``shadow_lane: batch``):
when its strong record is missing, the measurement is *pending*, and counting that request as
unsampled would lower the real sample rate below the recorded one (the estimate of
disagreement would fall short by the pending share: an unsafe bias). So the requests are
cut at the first pending one in decision order: those before it are complete; it is kept as
a disagreement (conservative); those after it are left out whatever they were
(``Dataset.pending``). docs/CALIBRATION.md, "Measurement through the batch lane", argues why
this cut keeps the estimates unbiased but for that one conservative unit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from escalator.contract.decisions import TIER0, Decision
from escalator.contract.messages import BATCH
from escalator.errors import EscalatorError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
STRONG_ONLY = 1.01  # a threshold above every confidence: everything escalates
#: The strong thresholds the human objective tries by default: few, because each costs
#: delta / K.
DEFAULT_STRONG_GRID = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, STRONG_ONLY)


class CalibrationError(EscalatorError):
    """The decisions cannot support a calibration (no pairs, no strong answers, ...)."""


@dataclass(frozen=True)
class Sample:
    """What the estimators need per request (one row each), already paired."""

    conf: FloatArray  # cheap confidence; -1 for an invalid or refused cheap answer
    certain: BoolArray  # the strong answer was due with probability 1
    sampled: BoolArray  # not certain, and a strong call was made (shadow)
    disagree: BoolArray  # where a strong answer was due: it differs, is invalid or missing
    stratum: IntArray  # index of the threshold version
    tau: FloatArray  # the threshold this request was routed by (nan: not recorded)
    shadow_rate: FloatArray  # the shadow rate in force (nan: not recorded)

    @property
    def n(self) -> int:
        return len(self.conf)


@dataclass(frozen=True)
class Dataset:
    """Per request: the cheap answer, the strong answer where observed, the design, gold."""

    ids: list[str]
    labels: list[str]
    conf: FloatArray  # -1: invalid or refused cheap answer (escalated at every threshold)
    cheap_label: IntArray  # -1: invalid
    cheap_cost: FloatArray
    strong_label: IntArray  # -1: no valid strong answer
    strong_cost: FloatArray  # 0 where no strong call was made
    answered: BoolArray  # a strong call was made (its answer may be invalid)
    accepted: BoolArray  # the cheap answer was accepted as routed
    certain: BoolArray  # the strong answer was due with probability 1
    stratum: IntArray  # index into ``strata``
    tau: FloatArray  # threshold routed by (nan: not recorded)
    shadow_rate: FloatArray  # shadow rate in force (nan: not recorded)
    gold: IntArray  # -1: none
    ts_ms: IntArray
    strata: tuple[str, ...] = ("default",)
    cheap_model: str = ""
    strong_model: str = ""
    #: Requests left out after the first one whose batch measurement is still pending.
    pending: int = 0

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def observed(self) -> BoolArray:
        return self.strong_label >= 0

    @property
    def sampled(self) -> BoolArray:
        """Strong calls made by the shadow sample at p < 1 (what estimation conditions on)."""
        return self.answered & ~self.certain

    @property
    def shadowed(self) -> BoolArray:
        """Accepted requests that also got a strong call (at any p, 1 included)."""
        return self.answered & self.accepted

    def sample(self) -> Sample:
        disagree = (self.strong_label < 0) | (self.strong_label != self.cheap_label)
        return Sample(
            conf=self.conf,
            certain=self.certain,
            sampled=self.sampled,
            disagree=disagree,
            stratum=self.stratum,
            tau=self.tau,
            shadow_rate=self.shadow_rate,
        )

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for array in (self.conf, self.cheap_label, self.strong_label, self.certain, self.gold):
            h.update(np.ascontiguousarray(array).tobytes())
        h.update("\n".join(self.ids).encode())
        return h.hexdigest()

    def subset(self, mask: BoolArray) -> Dataset:
        idx = np.flatnonzero(mask)
        arrays = {
            k: getattr(self, k)[idx]
            for k in (
                "conf",
                "cheap_label",
                "cheap_cost",
                "strong_label",
                "strong_cost",
                "answered",
                "accepted",
                "certain",
                "stratum",
                "tau",
                "shadow_rate",
                "gold",
                "ts_ms",
            )
        }
        return Dataset(
            ids=[self.ids[i] for i in idx],
            labels=self.labels,
            strata=self.strata,
            cheap_model=self.cheap_model,
            strong_model=self.strong_model,
            **arrays,
        )


def _rate(value: object) -> float:
    return (
        float(value) if isinstance(value, int | float) and not isinstance(value, bool) else np.nan
    )


def pair_decisions(records: Iterable[Decision]) -> Dataset:
    """Pair decisions-log records per id. Requests without a cheap answer are left out.

    A cheap record's ``outcome`` says whether the strong answer was certain (escalated) or
    left to the shadow sample (accepted). Its ``shadow_rate`` (older logs: the ``sample_rate``
    of that version's shadow records, where they agree) marks p = 1 as certain too.
    """
    cheap: dict[str, Decision] = {}
    strong: dict[str, Decision] = {}
    called: set[str] = set()
    gold: dict[str, str] = {}
    shadow_rates: dict[str, set[float]] = {}
    records = list(records)
    # Requests tier 0 answered: their sample's strong answer measures tier 0, not the cheap
    # tier (its sample rate is tier 0's), and is left out like its cheap shadow.
    local = {r.id for r in records if r.tier == TIER0}
    for rec in records:
        attempt, rid = rec.attempt, rec.id
        # A person's label (tier "human") is another source, read by adjudications.py.
        if rec.gold_label is not None and attempt.tier != "human":
            gold[rid] = rec.gold_label
        if attempt.tier == "cheap" and not rec.shadow:  # shadow: a sample of tier 0's answers
            cheap[rid] = rec
        elif attempt.tier == "strong" and not (rec.shadow and rid in local):
            called.add(rid)
            if rec.shadow:
                rate = _rate(rec.sample_rate)
                shadow_rates.setdefault(rec.threshold_version, set()).add(rate)
            if attempt.valid and attempt.label is not None:
                strong[rid] = rec
    if not cheap:
        raise CalibrationError("no cheap-tier decisions to calibrate on")
    if not strong:
        raise CalibrationError(
            "no strong-tier answers: run with ESCALATOR_SHADOW_RATE > 0 to measure first"
        )
    ids = sorted(cheap, key=lambda r: (cheap[r].ts_ms, r))
    ids, pending = _settled(ids, cheap, called)
    labels = sorted(
        {
            r.attempt.label
            for r in (*cheap.values(), *strong.values())
            if r.attempt.label is not None
        }
        | set(gold.values())
    )
    code = {label: i for i, label in enumerate(labels)}
    versions = sorted({cheap[r].threshold_version for r in ids})
    vcode = {v: i for i, v in enumerate(versions)}
    n = len(ids)
    conf, ccost, scost = np.zeros(n), np.zeros(n), np.zeros(n)
    tau, srate = np.full(n, np.nan), np.full(n, np.nan)
    clab, slab, glab = (np.full(n, -1, dtype=np.int64) for _ in range(3))
    answered, certain = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    accepted = np.zeros(n, dtype=bool)
    stratum, ts = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    for i, rid in enumerate(ids):
        rec = cheap[rid]
        ca = rec.attempt
        valid = ca.valid and ca.label in code
        conf[i] = ca.confidence if valid else -1.0
        clab[i] = code[ca.label] if valid and ca.label is not None else -1
        ccost[i] = ca.cost_usd
        version = rec.threshold_version
        stratum[i] = vcode[version]
        tau[i] = _rate(rec.threshold)
        srate[i] = _rate(rec.shadow_rate)
        if np.isnan(srate[i]) and len(shadow_rates.get(version, ())) == 1:
            srate[i] = next(iter(shadow_rates[version]))
        accepted[i] = rec.outcome == "accepted"
        certain[i] = not accepted[i] or srate[i] >= 1.0
        ts[i] = rec.ts_ms
        answered[i] = rid in called
        if rid in strong:
            sa = strong[rid].attempt
            slab[i] = code[str(sa.label)]
            scost[i] = sa.cost_usd
        if rid in gold:
            glab[i] = code[gold[rid]]
    first_strong = next(iter(strong.values())).attempt.model
    return Dataset(
        ids=ids,
        labels=labels,
        conf=conf,
        cheap_label=clab,
        cheap_cost=ccost,
        strong_label=slab,
        strong_cost=scost,
        answered=answered,
        accepted=accepted,
        certain=certain,
        stratum=stratum,
        tau=tau,
        shadow_rate=srate,
        gold=glab,
        ts_ms=ts,
        strata=tuple(versions),
        cheap_model=cheap[ids[0]].attempt.model,
        strong_model=first_strong,
        pending=pending,
    )


def _settled(ids: list[str], cheap: dict[str, Decision], called: set[str]) -> tuple[list[str], int]:
    """``ids`` (in decision order) up to and including the first whose batch measurement is
    not in the log yet, which is marked called (no valid strong answer: a disagreement); and
    how many were left out after it."""
    for i, rid in enumerate(ids):
        if cheap[rid].shadow_lane == BATCH and rid not in called:
            called.add(rid)
            return ids[: i + 1], len(ids) - i - 1
    return ids, 0


def default_grid() -> FloatArray:
    return np.asarray([*np.round(np.arange(0, 1.0001, 0.01), 4), STRONG_ONLY])


def grid_arg(spec: str) -> list[float]:
    """``START:STOP:STEP`` (inclusive) -> thresholds, plus the strong-only point."""
    try:
        start, stop, step = (float(x) for x in spec.split(":"))
    except ValueError as exc:
        raise CalibrationError(f"--grid {spec!r} is not START:STOP:STEP") from exc
    if not (0 <= start <= stop <= 1 and step > 0):
        raise CalibrationError(f"--grid {spec!r}: need 0 <= START <= STOP <= 1 and STEP > 0")
    return [*np.round(np.arange(start, stop + step / 2, step), 6), STRONG_ONLY]


def strong_grid_arg(spec: str) -> list[float]:
    """``0,0.5,0.9`` -> strong thresholds (1.01 sends every strong answer to people)."""
    try:
        values = sorted({float(x) for x in spec.split(",") if x.strip()})
    except ValueError as exc:
        raise CalibrationError(f"--strong-grid {spec!r} is not a comma-separated list") from exc
    if not values or not all(0 <= v <= STRONG_ONLY for v in values):
        raise CalibrationError(f"--strong-grid {spec!r}: need values in [0, 1.01]")
    return values


def cheap_grid(grid: Sequence[float] | FloatArray | None) -> FloatArray:
    """The cheap thresholds as searched: ``grid`` (default ``default_grid``), ending at
    escalate-all."""
    tc = np.asarray(grid, dtype=np.float64) if grid is not None else default_grid()
    if tc[-1] < STRONG_ONLY:
        tc = np.append(tc, STRONG_ONLY)
    return tc


def grids(
    grid: Sequence[float] | FloatArray | None, strong_grid: Sequence[float] | None
) -> tuple[FloatArray, FloatArray]:
    """The cheap grid (ending at escalate-all) and the strong grid, as searched."""
    ts = np.asarray(strong_grid if strong_grid is not None else DEFAULT_STRONG_GRID, np.float64)
    return cheap_grid(grid), ts
