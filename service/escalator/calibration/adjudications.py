"""The adjudication sample: which requests were put before people, decided or not yet, and
the design that drew them (``estimators.py`` measures routed answers against their labels).

Data. Human decisions (``attempt.tier == "human"``, contract/reviews.py) come from two queues.
Only the **adjudication** queue is a random sample: the strong tier puts a request that has
both model answers before a person with probability ``q_agree`` or ``q_disagree`` (by whether
the answers agree), so a request's inclusion probability is ``pi = s * q`` where ``s`` is the
probability that it got a strong answer at all (1 when escalated, the shadow rate ``p`` when
accepted). **Review** items are chosen by rule (low strong confidence, a review label, ...): they
are counted (cost, items) and never used as a sample. A decision's ``review_id`` may repeat
(at-least-once delivery); the first one counts.

The draw. The strong tier records its adjudication coin on its decision record
(``adjudication: {sampled, rate}``), so the log knows which requests were sampled even before
anyone decides them. A sampled request with no decision yet is **pending** (reviewers lag; the
item may expire). ``human_sample`` keeps pending requests as rows with no label: the search
counts them as wrong (every pair that does not send them to people), or the CLI refuses
before reading any label (``--undecided``). Without recorded draws (logs written before them)
pending requests are invisible, and the sample says so (``draws_recorded``).

Design. Within a stratum ``v`` (threshold version, ``N_v`` requests) the design has four cells
``g``: (escalated or p = 1, shadowed) x (answers agree, differ), each with one inclusion
probability ``pi_vg`` fixed by the design (``q`` from the draws, ``p`` from the cheap records).
Each stratum's requests fall, in time order, into the betting bound's blocks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from escalator.calibration import betting
from escalator.calibration.dataset import CalibrationError, Dataset
from escalator.contract.decisions import HUMAN, Decision
from escalator.contract.messages import Attempt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

#: Labels a strong answer cannot settle (the moderation task's); matched only if in the log.
DEFAULT_REVIEW_LABELS = ("review-needed",)
CELLS = ("certain-agree", "certain-differ", "shadow-agree", "shadow-differ")
#: The strong tier's decision outcomes that carry the adjudication draw (its final answer).
DRAWN = ("final", "shadow", "review", "refused")
#: Reviewers' recent pace is measured over this many hours of decisions (for the refusal).
PACE_HOURS = 6.0


def human_decisions(records: Iterable[Decision]) -> tuple[list[Decision], int]:
    """The human decisions of the log, first one per ``review_id``; and how many repeats."""
    seen: set[str] = set()
    out: list[Decision] = []
    repeats = 0
    for rec in records:
        if rec.tier != HUMAN:
            continue
        review = rec.review
        queue = review.queue if review is not None else None
        key = (review.review_id if review is not None else "") or f"{queue}:{rec.id}"
        if key in seen:
            repeats += 1
            continue
        seen.add(key)
        out.append(rec)
    return out, repeats


@dataclass(frozen=True)
class Backlog:
    """The sampled adjudications still undecided, and how fast people are deciding."""

    sampled: int  # requests of the window sampled for adjudication
    pending: int  # ... of which no decision is in the log
    oldest_pending_ms: int | None  # when the oldest pending one was sampled (strong tier clock)
    newest_pending_ms: int | None
    last_decision_ms: int | None  # the latest adjudication decision read
    per_hour: float | None  # adjudication decisions per hour over the last PACE_HOURS

    def retry_after_ms(self) -> int | None:
        """When the pending ones should be decided at the recent pace (None: no pace)."""
        if self.pending == 0 or self.per_hour is None or self.per_hour <= 0:
            return None
        start = self.last_decision_ms or self.newest_pending_ms or 0
        return int(start + self.pending / self.per_hour * 3.6e6)


@dataclass(frozen=True)
class HumanSample:
    """The adjudicated requests (one row each, pending ones included), and their design."""

    stratum: IntArray  # index into the Dataset's strata
    cell: IntArray  # index into CELLS
    cheap_conf: FloatArray  # -1: invalid cheap answer
    cheap_label: IntArray  # -1: invalid
    strong_conf: FloatArray
    strong_label: IntArray  # -1: invalid or refused
    strong_review: BoolArray  # the strong label is a review label
    gold: IntArray  # the person's label; -1: "neither", a label no model can give, or pending
    n: IntArray  # (S,) requests per stratum (all traffic, from the cheap records)
    pi: FloatArray  # (S, 4) inclusion probability per cell; 0: not covered by the design
    possible: BoolArray  # (S, 4) the cell can hold requests (by the design in force)
    uncovered: IntArray  # (S,) accepted requests no adjudication could reach (p = 0)
    q_agree: float
    q_disagree: float
    neither: int = 0  # adjudications whose verdict was "neither"
    review_items: dict[str, int] = field(default_factory=dict)  # review queue, per reason
    repeats: int = 0  # repeated review_ids ignored
    unmatched: int = 0  # adjudications of requests with no cheap record in the window
    #: Per row: sampled, and no decision yet (counted wrong by the bound; gold is -1).
    pending: BoolArray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    #: Per row: its time block within its stratum (betting.BLOCKS).
    block: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    #: (S, B) requests, and uncovered requests, per stratum and block.
    block_n: IntArray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int64))
    block_uncovered: IntArray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int64))
    backlog: Backlog | None = None
    #: The log records the strong tier's adjudication draws (else pending ones are invisible).
    draws_recorded: bool = True

    @property
    def m(self) -> int:
        return len(self.cell)

    @property
    def decided(self) -> int:
        return int(self.m - self.pending.sum())


def _num(value: object, default: float = math.nan) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return default


@dataclass
class _Draw:
    sampled: bool
    rate: float
    s_rate: float
    ts_ms: int
    agree: bool
    strong: Attempt


def _draws(
    records: Sequence[Decision], d: Dataset, index: dict[str, int], code: dict[str, int]
) -> tuple[dict[int, _Draw], int]:
    """Per request of ``d``: the strong tier's adjudication draw (a sampled one wins over an
    unsampled repeat); and how many final strong answers carry none."""
    out: dict[int, _Draw] = {}
    missing = 0
    for rec in records:
        a = rec.attempt
        if a.tier != "strong" or rec.outcome not in DRAWN:
            continue
        i = index.get(rec.id)
        if i is None:
            continue
        draw = rec.adjudication
        if draw is None:
            missing += 1
            continue
        label = a.label
        strong = code.get(label, -1) if a.valid and label is not None else -1
        agree = strong >= 0 and strong == int(d.cheap_label[i])
        new = _Draw(
            sampled=draw.sampled,
            rate=draw.rate,
            s_rate=_num(rec.sample_rate, 1.0),
            ts_ms=rec.ts_ms,
            agree=agree,
            strong=a,
        )
        if i not in out or (new.sampled and not out[i].sampled):
            out[i] = new
    return out, missing


def _rates(draws: dict[int, _Draw]) -> tuple[float, float]:
    """(q_agree, q_disagree) from the draws: one rate each, or a CalibrationError."""
    found: dict[bool, set[float]] = {True: set(), False: set()}
    for draw in draws.values():
        found[draw.agree].add(draw.rate)
    out = []
    for agree, name in ((True, "AGREE"), (False, "DISAGREE")):
        rates = found[agree]
        if not rates:
            out.append(0.0)
            continue
        if len(rates) > 1:
            # One rate per window: with a changed rate the requests seen before the change
            # would be weighted by the wrong probability. Fail closed.
            what = "was off for part of" if min(rates) <= 0 else "changed within"
            raise CalibrationError(
                f"ESCALATOR_ADJUDICATE_{name} {what} the window (rates {min(rates):g} to "
                f"{max(rates):g}): calibrate on a window with one rate (--since after the change)"
            )
        out.append(next(iter(rates)))
    return out[0], out[1]


def human_sample(
    records: Sequence[Decision],
    d: Dataset,
    review_labels: Sequence[str] = DEFAULT_REVIEW_LABELS,
) -> HumanSample | None:
    """The adjudication sample of ``records`` against the paired cheap/strong ``d``, pending
    requests included (from the recorded draws); None when the log has no human decisions and
    no sampled draw. CalibrationError when the design cannot be known."""
    humans, repeats = human_decisions(records)
    index = {rid: i for i, rid in enumerate(d.ids)}
    code = {label: i for i, label in enumerate(d.labels)}
    draws, missing = _draws(records, d, index, code)
    if not humans and not any(x.sampled for x in draws.values()):
        return None
    if draws and missing:
        raise CalibrationError(
            f"{missing} strong answer(s) in the window carry no adjudication draw (written "
            "before the draw was recorded): undecided adjudications cannot be told apart; "
            "calibrate on a window measured since (--since)"
        )
    review = {code[x] for x in review_labels if x in code}
    review_items: dict[str, int] = {}
    decided: dict[int, Decision] = {}
    unmatched = 0
    for rec in humans:
        block = rec.review
        if block is None or block.queue != "adjudication":
            reason = block.reason if block is not None else "None"
            review_items[reason] = review_items.get(reason, 0) + 1
            continue
        i = index.get(rec.id)
        if i is None:
            unmatched += 1
        else:
            decided.setdefault(i, rec)
    if draws:
        q_a, q_d = _rates(draws)
    else:
        q_a, q_d = _legacy_rates(decided)
    if not decided and not draws:
        if unmatched:
            raise CalibrationError(
                f"{unmatched} adjudication(s), none of a request in the window's cheap records"
            )
        return _empty(d, review_items, repeats)
    for q, name in ((q_a, "AGREE"), (q_d, "DISAGREE")):
        if not 0 < q <= 1:
            which = "agreeing" if name == "AGREE" else "differing"
            raise CalibrationError(
                f"no adjudication rate in (0, 1] for {which} answers: the design is unknown "
                f"(set ESCALATOR_ADJUDICATE_{name} > 0)"
            )
    pending = sorted(i for i, x in draws.items() if x.sampled and i not in decided)
    rows = sorted(decided) + pending
    m = len(rows)

    def answer(a: Attempt | None) -> tuple[float, int]:
        if a is None or not a.valid or a.label is None or a.label not in code:
            return -1.0, -1
        return a.confidence, code[a.label]

    cell, gold = np.zeros(m, np.int64), np.zeros(m, np.int64)
    cc, sc, recorded = np.zeros(m), np.zeros(m), np.zeros(m)
    cl, sl = np.zeros(m, np.int64), np.zeros(m, np.int64)
    is_pending = np.zeros(m, dtype=bool)
    neither = 0
    for k, i in enumerate(rows):
        found = decided.get(i)
        if found is not None:
            rec = found
            block = rec.review
            agree = block is not None and block.agree
            label = rec.gold_label
            neither += label is None
            gold[k] = code.get(label, -1) if label is not None else -1
            cc[k], cl[k] = answer(block.cheap if block is not None else None)
            sc[k], sl[k] = answer(block.strong if block is not None else None)
            recorded[k] = _num(rec.sample_rate)
        else:
            draw = draws[i]
            agree, gold[k], is_pending[k] = draw.agree, -1, True
            cc[k], cl[k] = (float(d.conf[i]), int(d.cheap_label[i])) if d.conf[i] >= 0 else (-1, -1)
            sc[k], sl[k] = answer(draw.strong)
            recorded[k] = draw.s_rate * draw.rate
        cell[k] = (0 if d.certain[i] else 2) + (0 if agree else 1)
    return assemble(
        d,
        np.asarray(rows, dtype=np.int64),
        cell,
        cheap=(cc, cl),
        strong=(sc, sl, np.isin(sl, sorted(review))),
        gold=gold,
        pending=is_pending,
        recorded=recorded,
        rates=(q_a, q_d),
        neither=neither,
        review_items=review_items,
        repeats=repeats,
        unmatched=unmatched,
        backlog=_backlog(draws, decided, pending) if draws else None,
        draws_recorded=bool(draws),
    )


def assemble(
    d: Dataset,
    rows: IntArray,
    cell: IntArray,
    *,
    cheap: tuple[FloatArray, IntArray],
    strong: tuple[FloatArray, IntArray, BoolArray],
    gold: IntArray,
    pending: BoolArray,
    recorded: FloatArray,
    rates: tuple[float, float],
    neither: int = 0,
    review_items: dict[str, int] | None = None,
    repeats: int = 0,
    unmatched: int = 0,
    backlog: Backlog | None = None,
    draws_recorded: bool = True,
) -> HumanSample:
    """A HumanSample from its rows (``rows``: their requests' indices in ``d``), with the
    design and time blocks that ``d`` implies; the test worlds build theirs with it too."""
    stratum = d.stratum[rows].astype(np.int64)
    n, pi, possible, uncovered = design(d, rates[0], rates[1], stratum, cell, recorded)
    block_n, block_unc = blocks(d, uncovered > 0)
    return HumanSample(
        stratum=stratum,
        cell=cell.astype(np.int64),
        cheap_conf=cheap[0],
        cheap_label=cheap[1],
        strong_conf=strong[0],
        strong_label=strong[1],
        strong_review=strong[2],
        gold=gold,
        n=n,
        pi=pi,
        possible=possible,
        uncovered=uncovered,
        q_agree=rates[0],
        q_disagree=rates[1],
        neither=neither,
        review_items=review_items or {},
        repeats=repeats,
        unmatched=unmatched,
        pending=pending,
        block=betting.block_of(within_stratum_rank(d)[rows]),
        block_n=block_n,
        block_uncovered=block_unc,
        backlog=backlog,
        draws_recorded=draws_recorded,
    )


def _legacy_rates(decided: dict[int, Decision]) -> tuple[float, float]:
    """(q_agree, q_disagree) from the decisions' review rates (logs without draws)."""
    found: dict[bool, set[float]] = {True: set(), False: set()}
    for rec in decided.values():
        block = rec.review
        agree = block is not None and block.agree
        found[agree].add(_num(block.review_rate if block is not None else None))
    out = []
    for agree, name in ((True, "AGREE"), (False, "DISAGREE")):
        rates = found[agree]
        if len(rates) > 1:
            raise CalibrationError(
                f"ESCALATOR_ADJUDICATE_{name} changed within the window (review rates "
                f"{min(rates):g} to {max(rates):g}): calibrate on a window with one rate "
                "(--since after the change)"
            )
        out.append(next(iter(rates)) if rates else 0.0)
    return out[0], out[1]


def _backlog(draws: dict[int, _Draw], decided: dict[int, Decision], pending: list[int]) -> Backlog:
    times = [draws[i].ts_ms for i in pending]
    made = sorted(r.ts_ms for r in decided.values())
    per_hour = None
    if made:
        recent = [t for t in made if t >= made[-1] - PACE_HOURS * 3.6e6]
        span_h = (recent[-1] - recent[0]) / 3.6e6
        per_hour = len(recent) / span_h if span_h > 0 else None
    return Backlog(
        sampled=sum(1 for x in draws.values() if x.sampled),
        pending=len(pending),
        oldest_pending_ms=min(times) if times else None,
        newest_pending_ms=max(times) if times else None,
        last_decision_ms=made[-1] if made else None,
        per_hour=per_hour,
    )


def _empty(d: Dataset, review_items: dict[str, int], repeats: int) -> HumanSample:
    """Human decisions, but none from adjudication: counts for the report, no estimates."""
    z, f = np.zeros(0, np.int64), np.zeros(0)
    return HumanSample(
        stratum=z,
        cell=z,
        cheap_conf=f,
        cheap_label=z,
        strong_conf=f,
        strong_label=z,
        strong_review=np.zeros(0, bool),
        gold=z,
        n=np.bincount(d.stratum, minlength=len(d.strata)),
        pi=np.zeros((len(d.strata), 4)),
        possible=np.zeros((len(d.strata), 4), bool),
        uncovered=np.zeros(len(d.strata), np.int64),
        q_agree=0.0,
        q_disagree=0.0,
        review_items=review_items,
        repeats=repeats,
        draws_recorded=False,
    )


def within_stratum_rank(d: Dataset) -> FloatArray:
    """Per request: its rank among its stratum's requests in time order, as a share in [0, 1)
    (the Dataset is in time order)."""
    rank = np.zeros(d.n)
    for v in range(len(d.strata)):
        idx = np.flatnonzero(d.stratum == v)
        rank[idx] = np.arange(len(idx)) / max(len(idx), 1)
    return rank


def blocks(d: Dataset, uncovered_strata: BoolArray) -> tuple[IntArray, IntArray]:
    """(S, B) requests per stratum and time block; and the uncovered ones (accepted requests
    of a stratum without shadow sampling: no adjudication can reach them)."""
    s_count, b_count = len(d.strata), len(betting.BLOCKS)
    n = np.zeros((s_count, b_count), np.int64)
    unc = np.zeros((s_count, b_count), np.int64)
    block = betting.block_of(within_stratum_rank(d))
    for v in range(s_count):
        mine = d.stratum == v
        n[v] = np.bincount(block[mine], minlength=b_count)
        if uncovered_strata[v]:
            unc[v] = np.bincount(block[mine & ~d.certain], minlength=b_count)
    return n, unc


def design(
    d: Dataset,
    q_agree: float,
    q_disagree: float,
    stratum: IntArray,
    cell: IntArray,
    recorded: FloatArray,
) -> tuple[IntArray, FloatArray, BoolArray, IntArray]:
    """Per stratum: requests, inclusion probability and possibility per cell, uncovered count.

    The probabilities come from the design (p from the cheap records, q from the draws or the
    review rates), never from which requests happened to be adjudicated; a cell's smallest
    recorded ``sample_rate`` lowers it (shadows shed under rate-limit pressure were kept at
    p * k < p), which only makes the bound more cautious."""
    s_count = len(d.strata)
    n = np.bincount(d.stratum, minlength=s_count).astype(np.int64)
    pi = np.zeros((s_count, 4))
    possible = np.zeros((s_count, 4), dtype=bool)
    uncovered = np.zeros(s_count, dtype=np.int64)
    for v in range(s_count):
        inv = d.stratum == v
        unc = inv & ~d.certain
        rates = d.shadow_rate[unc]
        p = float(np.nanmin(rates)) if unc.any() and not np.all(np.isnan(rates)) else math.nan
        if math.isnan(p):  # no shadow rate recorded: treat the accepted ones as uncovered
            p = 0.0
        possible[v] = [bool((inv & d.certain).any())] * 2 + [bool(unc.any())] * 2
        pi[v] = [q_agree, q_disagree, p * q_agree, p * q_disagree]
        for g in range(4):
            mine = recorded[(stratum == v) & (cell == g)]
            if len(mine) and np.all(np.isfinite(mine)):
                pi[v, g] = min(pi[v, g], float(mine.min()))
        if possible[v, 2] and p <= 0:
            uncovered[v] = int(unc.sum())
            possible[v, 2:] = False
    pi = np.where(possible, np.clip(pi, 0.0, 1.0), 0.0)
    return n, pi, possible, uncovered


def strong_confidences(
    records: Iterable[Decision], d: Dataset, review_labels: Sequence[str]
) -> tuple[FloatArray, BoolArray]:
    """Per request of ``d``: the strong answer's confidence (-1: none valid) and whether its
    label is a review label."""
    index = {rid: i for i, rid in enumerate(d.ids)}
    conf = np.full(d.n, -1.0)
    review = np.zeros(d.n, dtype=bool)
    for rec in records:
        a = rec.attempt
        i = index.get(rec.id)
        if a.tier != "strong" or i is None or not a.valid:
            continue
        if a.label is None:
            continue
        conf[i] = a.confidence
        review[i] = a.label in review_labels
    return conf, review
