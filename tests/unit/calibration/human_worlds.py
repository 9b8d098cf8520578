"""A synthetic world with human truth, whose accuracy at every threshold pair is known exactly.

Cheap confidences take 100 values off the 0.01 grid (``CONF``), strong confidences 20 values
off the strong grid (``SCONF``), independently. Given them, a person's label is "neither" with
probability ``neither`` and otherwise one of three labels; the cheap answer is right with
probability ``cheap_right(c)`` and the strong one with ``strong_right(s)``, independently (a
wrong answer is one of the other labels at random, so two wrong answers agree half the time).
Truth is then a finite sum over the two confidence grids. ``draw`` writes the log of one window
under a design (threshold in force, shadow rate p, adjudication rates) as the paired cheap and
strong answers (a ``Dataset``) and the adjudicated requests (a ``HumanSample``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from escalator.calibration import bounds
from escalator.calibration.adjudications import HumanSample, assemble
from escalator.calibration.dataset import Dataset
from escalator.calibration.estimators import cell_counts
from tests.unit.calibration.worlds import attempt_record, one_stratum

FloatArray = npt.NDArray[np.float64]
LABELS = ["review-needed", "safe", "unsafe"]
CONF = np.arange(0.005, 1.0, 0.01)
SCONF = np.arange(0.025, 1.0, 0.05)


def _beta(x: FloatArray, a: float, b: float) -> FloatArray:
    w = x ** (a - 1) * (1 - x) ** (b - 1)
    return np.asarray(w / w.sum())


@dataclass(frozen=True)
class HumanWorld:
    name: str
    w_cheap: FloatArray  # P(cheap conf = CONF[k])
    w_strong: FloatArray  # P(strong conf = SCONF[j])
    cheap_right: FloatArray  # P(cheap right | conf, the person gave a label)
    strong_right: FloatArray
    neither: float
    target: float
    budget: float

    def _err(self, right: FloatArray) -> FloatArray:
        return np.asarray(1.0 - (1.0 - self.neither) * right)

    def accuracy(self, t_c: float, t_s: float) -> float:
        """True accuracy against people of routed answers at (t_c, t_s); people are right."""
        by_cheap = CONF >= t_c
        e_cheap = (self.w_cheap * by_cheap * self._err(self.cheap_right)).sum()
        e_strong = (self.w_strong * (SCONF >= t_s) * self._err(self.strong_right)).sum()
        return float(1.0 - e_cheap - (self.w_cheap * ~by_cheap).sum() * e_strong)

    def human_share(self, t_c: float, t_s: float) -> float:
        return float((self.w_cheap * (CONF < t_c)).sum() * (self.w_strong * (SCONF < t_s)).sum())


def moderation() -> HumanWorld:
    """A cheap model right about 90% of the time when confident, a strong one right about 93%,
    2% of items for which no label is right; target 0.94 with at most 15% to people."""
    return HumanWorld(
        name="moderation",
        w_cheap=0.6 * _beta(CONF, 20.0, 1.2) + 0.4 * _beta(CONF, 4.0, 2.0),
        w_strong=_beta(SCONF, 6.0, 1.3),
        cheap_right=np.asarray(0.995 - 0.5 * (1.0 - CONF) ** 0.8),
        strong_right=np.asarray(0.70 + 0.295 * SCONF),
        neither=0.01,
        target=0.94,
        budget=0.15,
    )


@dataclass(frozen=True)
class Window:
    data: Dataset
    human: HumanSample
    strong_conf: FloatArray
    strong_review: npt.NDArray[np.bool_]
    adjudicated: npt.NDArray[np.int64]  # request indices put before a person
    gold: npt.NDArray[np.int64]  # every request's human label (-1: neither)
    q_agree: float
    q_disagree: float
    #: Per adjudicated request (aligned with ``adjudicated``): no decision yet.
    undecided: npt.NDArray[np.bool_]


def draw(
    world: HumanWorld,
    rng: np.random.Generator,
    n: int,
    *,
    p: float,
    q_disagree: float,
    q_agree: float,
    tau: float = 0.7,
    undecided: float = 0.0,
    delay_s: float | None = None,
    seconds_apart: float = 1.0,
) -> Window:
    """One window of ``n`` requests under threshold ``tau``, shadow rate ``p`` and the
    adjudication rates; nobody's labels are review labels here (the strong grid does it all).

    Backlog: each sampled adjudication is undecided at calibration time with probability
    ``undecided`` (at random); or, with ``delay_s``, its decision comes an exponential delay
    after its request (mean ``delay_s``, twice that when the answers differ: hard cases take
    longer; requests ``seconds_apart``), and calibration runs when a share ``undecided`` of
    them is still undecided: the latest and the hardest are the likeliest to be missing."""
    kc = rng.choice(len(CONF), size=n, p=world.w_cheap)
    ks = rng.choice(len(SCONF), size=n, p=world.w_strong)
    conf, sconf = CONF[kc], SCONF[ks]
    neither = rng.random(n) < world.neither
    gold = np.where(neither, -1, rng.integers(0, 3, n))
    base = np.where(neither, rng.integers(0, 3, n), gold)

    def answer(right_p: FloatArray) -> npt.NDArray[np.int64]:
        right = ~neither & (rng.random(n) < right_p)
        other = (np.maximum(gold, 0) + rng.integers(1, 3, n)) % 3
        wrong = np.where(neither, rng.integers(0, 3, n), other)
        return np.asarray(np.where(right, base, wrong), np.int64)

    cheap = answer(world.cheap_right[kc])
    strong = answer(world.strong_right[ks])
    escalated = conf < tau
    certain = escalated | (p >= 1.0)
    answered = escalated | (rng.random(n) < p)
    agree = cheap == strong
    adjudicated = answered & (rng.random(n) < np.where(agree, q_agree, q_disagree))
    unlabelled = np.full(n, -1, dtype=np.int64)
    d = one_stratum(conf, cheap, strong, unlabelled, escalated, certain, answered, tau, p)
    idx = np.flatnonzero(adjudicated)
    if delay_s is not None:
        mean = np.where(agree[idx], delay_s, 2.0 * delay_s)
        decided_at = idx * seconds_apart + rng.exponential(mean)
        cut = np.quantile(decided_at, 1.0 - undecided) if len(idx) and undecided > 0 else np.inf
        late = decided_at > cut
    else:
        late = rng.random(len(idx)) < undecided
    cell = np.where(certain[idx], 0, 2) + np.where(agree[idx], 0, 1)
    recorded = np.where(certain[idx], 1.0, p) * np.where(agree[idx], q_agree, q_disagree)
    h = assemble(
        d,
        idx.astype(np.int64),
        cell.astype(np.int64),
        cheap=(conf[idx], cheap[idx]),
        strong=(sconf[idx], strong[idx], np.zeros(len(idx), dtype=bool)),
        gold=np.where(late, -1, gold[idx]),
        pending=late,
        recorded=recorded,
        rates=(q_agree, q_disagree),
        neither=int((neither[idx] & ~late).sum()),
    )
    strong_conf = np.where(answered, sconf, -1.0)
    return Window(d, h, strong_conf, np.zeros(n, dtype=bool), idx, gold, q_agree, q_disagree, late)


def without_pending(win: Window) -> HumanSample:
    """The sample as a calibrator that cannot see undecided adjudications reads it (no draws
    recorded, or decisions after --until cut): the decided rows alone."""
    h = win.human
    keep = ~h.pending
    idx = win.adjudicated[keep]
    return assemble(
        win.data,
        idx.astype(np.int64),
        h.cell[keep],
        cheap=(h.cheap_conf[keep], h.cheap_label[keep]),
        strong=(h.strong_conf[keep], h.strong_label[keep], h.strong_review[keep]),
        gold=h.gold[keep],
        pending=np.zeros(int(keep.sum()), dtype=bool),
        recorded=h.pi[h.stratum[keep], h.cell[keep]],
        rates=(win.q_agree, win.q_disagree),
        neither=h.neither,
        draws_recorded=False,
    )


def records(
    win: Window,
    *,
    start_ms: int = 1_795_000_000_000,
    delays_ms: npt.NDArray[np.int64] | None = None,
    draws: bool = True,
) -> list[dict[str, object]]:
    """The window as decisions-log records: cheap, strong and human decisions, as the service
    writes them (contract/reviews.py's human_decision_value). The strong records carry the
    adjudication draw (``draws``); an undecided adjudication has no decision; a decided one
    comes ``delays_ms[k]`` after its request (default 2 ms), so it may fall after --until."""
    d = win.data
    out: list[dict[str, object]] = []
    position = {int(i): k for k, i in enumerate(win.adjudicated.tolist())}
    for i in range(d.n):
        ts = start_ms + i * 1000
        rid = d.ids[i]
        escalated = not bool(d.accepted[i])
        p = float(d.shadow_rate[i])
        common = {"schema_version": 1, "id": rid, "threshold_version": "v1", "ts_ms": ts}
        cheap = attempt_record("cheap", LABELS[int(d.cheap_label[i])], float(d.conf[i]))
        out.append(
            {
                **common,
                "attempt": cheap,
                "outcome": "escalated" if escalated else "accepted",
                "threshold": float(d.tau[i]),
                "shadow_rate": p,
                "shadow": False,
                "sample_rate": None,
            }
        )
        if not d.answered[i]:
            continue
        strong = attempt_record("strong", LABELS[int(d.strong_label[i])], float(win.strong_conf[i]))
        s_rate = 1.0 if escalated else p
        agree = cheap["label"] == strong["label"]
        q = win.q_agree if agree else win.q_disagree
        k = position.get(i)
        strong_rec: dict[str, object] = {
            **common,
            "ts_ms": ts + 1,
            "attempt": strong,
            "outcome": "final" if escalated else "shadow",
            "threshold": None,
            "shadow_rate": None,
            "shadow": not escalated,
            "sample_rate": s_rate,
        }
        if draws:
            strong_rec["adjudication"] = {"sampled": k is not None, "rate": q}
        out.append(strong_rec)
        if k is None or bool(win.undecided[k]):
            continue
        gold = None if win.gold[i] < 0 else LABELS[int(win.gold[i])]
        human = {
            **attempt_record("human", gold or "", 1.0),
            "model": "human",
            "label": gold,
            "valid": gold is not None,
            "cost_usd": 0.0,
            "input_tokens": 0,
            "output_tokens": 0,
            "latency_ms": 4200.0,
        }
        out.append(
            {
                **common,
                "ts_ms": ts + (2 if delays_ms is None else int(delays_ms[k])),
                "attempt": human,
                "outcome": "human",
                "threshold": None,
                "shadow_rate": None,
                "shadow": not escalated,
                "sample_rate": s_rate * q,
                "gold_label": gold,
                "gold_source": "human",
                "review": {
                    "queue": "adjudication",
                    "review_id": f"adjudication:{rid}",
                    "reason": "sampled_agree" if agree else "sampled_disagree",
                    "reviewer": "alice",
                    "verdict": "label" if gold is not None else "neither",
                    "note": None,
                    "seconds": 4.2,
                    "cheap": cheap,
                    "strong": strong,
                    "agree": agree,
                    "escalation_reason": "low_confidence" if escalated else "shadow",
                    "strong_sample_rate": s_rate,
                    "review_rate": q,
                    "item": f"escalator.adjudications/0/{i}",
                },
            }
        )
    return out


def v1_lower(h: HumanSample, t_c: FloatArray, t_s: FloatArray, alpha: float) -> FloatArray:
    """The lower bounds the human objective used before the backlog fix (v1): a sum of exact
    per-cell Clopper-Pearson limits over pi, on the decided adjudications alone (pending ones,
    which v1 could not see, simply absent), at ``alpha`` per pair. Kept here, in the tests, to
    show that it fails when reviewers lag."""
    z, _ = cell_counts(h, t_c, t_s)
    share = h.n / max(int(h.n.sum()), 1) * alpha
    parts = h.possible.sum(axis=1) + (h.uncovered > 0)
    per = np.where(parts > 0, share / np.maximum(parts, 1), 0.0)
    a_cell = np.where(h.possible, per[:, None], 0.0)
    a_unc = np.where(h.uncovered > 0, per, 0.0)
    nn = np.broadcast_to(h.n[:, None, None, None], z.shape)
    al = np.broadcast_to(a_cell[:, :, None, None], z.shape)
    zz = np.rint(z).astype(np.int64)
    limits = bounds.exact_upper(zz.ravel(), nn.ravel(), al.ravel()).reshape(z.shape)
    pi = h.pi[:, :, None, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        per_cell = np.where(al > 0, np.minimum(limits / pi, 1.0), 0.0)
    unc = np.where(a_unc > 0, bounds.exact_upper(h.uncovered, h.n, a_unc), 0.0)
    stratum_err = np.minimum(per_cell.sum(axis=1) + unc[:, None, None], 1.0)
    total = (stratum_err * h.n[:, None, None]).sum(axis=0) / max(int(h.n.sum()), 1)
    return np.asarray(1.0 - np.minimum(total, 1.0), np.float64)
