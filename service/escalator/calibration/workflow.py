"""The calibration workflow behind ``escalator calibrate``: one flow for every objective.

Numbered as it runs (``calibrate``):
1. pair the window's decisions (``dataset``); read the ledger of earlier attempts for this model
   pair and objective, and spend attempt k's share of delta (``threshold_file.spent``);
2. ``--plan``: print the plan for the next attempt's share and stop (nothing spent);
3. refuse a window that overlaps an earlier attempt's (a window certifies once);
4. run the objective's search and print its table (``Agreement`` or ``People``: the two
   configurations of the same stages);
5. record the attempt in the ledger;
6. on a refusal, one line on stderr sizing the fresh window the next attempt needs, then exit 3
   unless ``--fallback escalate-all``;
7. write the thresholds file and say where.

The CLI (cli/measure.py) parses the flags into a ``Request``, reads the decisions and prints
nothing of its own; everything here writes to the ``out`` and ``err`` streams it is handed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, cast

from escalator.calibration import threshold_file as tfile
from escalator.contract.decisions import Decision
from escalator.errors import EscalatorError

if TYPE_CHECKING:
    from escalator.calibration.adjudications import HumanSample
    from escalator.calibration.dataset import Dataset
    from escalator.calibration.search import Calibration, HumanCalibration, Objective
    from escalator.model.prices import PriceTable as Prices

EXIT_REFUSED = 3  # calibrate: the data cannot certify the target (one line says why)
CERTIFYING = ("quality", "human")
DEFAULT_TARGET = {"quality": 0.98, "human": 0.95}


@dataclass(frozen=True)
class Request:
    """What ``escalator calibrate`` was asked (its flags, as parsed)."""

    objective: str
    target: float | None
    delta: float
    margin: float
    grid: str | None
    per_label: bool
    output: str
    ledger: str | None
    fallback: str
    plan: bool
    power: float
    traffic_per_hour: float | None
    assume_threshold: float | None
    assume_accepted: float | None
    assume_disagreement: float | None
    strong_call_usd: float | None
    assume_strong_tokens: str
    human_budget: float
    review_cost: float | None
    strong_grid: str | None
    review_labels: tuple[str, ...]
    undecided: str
    plot: str | None
    since: str | None
    until: str | None


def check_target(req: Request) -> None:
    """--target's range depends on the objective: checked before any data is read."""
    target = req.target
    if target is None:
        return
    if req.objective in CERTIFYING and not 0 < target <= 1:
        raise EscalatorError(f"--target {target}: agreement or accuracy must be in (0, 1]")
    if req.objective == "rate" and not 0 <= target <= 1:
        raise EscalatorError(f"--target {target}: an escalation rate must be in [0, 1]")
    if req.objective == "budget" and not target > 0:
        raise EscalatorError(f"--target {target}: a budget in USD per 1,000 must be above 0")


def target_of(req: Request) -> float:
    """The target, or the objective's default (rate and budget have none)."""
    if req.target is not None:
        return req.target
    if req.objective not in DEFAULT_TARGET:
        raise EscalatorError(f"--objective {req.objective} needs --target")
    return DEFAULT_TARGET[req.objective]


def ledger_path(req: Request) -> Path | None:
    if req.ledger == "none":
        return None
    if req.ledger:
        return Path(req.ledger)
    return Path(req.output).parent / "calibration-ledger.jsonl"


def window_of(req: Request, data: Dataset) -> dict[str, Any]:
    first, last = int(data.ts_ms.min()), int(data.ts_ms.max())
    return {
        "since": req.since,
        "until": req.until,
        "first_ts_ms": first,
        "last_ts_ms": last,
        "first_ts": _iso(first),
        "last_ts": _iso(last),
    }


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Attempt:
    """One calibration attempt: where it is recorded and what it may spend."""

    ledger: Path | None
    number: int
    delta: float  # the whole error budget (--delta)

    @property
    def share(self) -> float:
        """Attempt ``number``'s share of delta by the spending rule (what a plan sizes for)."""
        return tfile.spent(self.delta, self.number)

    @property
    def spends(self) -> float:
        """What this attempt spends: its share, or all of delta with no ledger."""
        return self.delta if self.ledger is None else self.share

    @property
    def next_share(self) -> float:
        """What the attempt after this one may spend (a refusal sizes the window for it)."""
        return tfile.spent(self.delta, self.number + 1)


@dataclass(frozen=True)
class Context:
    """One calibration run: what was asked, the window's decisions and pairs, the attempt."""

    req: Request
    target: float
    records: list[Decision]
    data: Dataset
    source: str
    prices: Prices
    attempt: Attempt
    out: TextIO
    err: TextIO

    def file_args(self, window: dict[str, Any]) -> dict[str, Any]:
        """What every thresholds file records of the run, whatever the objective."""
        return {
            "source": self.source,
            "delta": self.req.delta,
            "window": window,
            "price_table_version": self.prices.version,
            "ledger": self.attempt.ledger,
            "attempt": self.attempt.number,
        }


@dataclass(frozen=True)
class Outcome:
    """What an objective's search came to, in the shape the common tail (steps 5-7) needs."""

    refused: bool
    ledger_entry: dict[str, Any]
    refusal: Callable[[], str]  # the line on stderr when refused
    body: Callable[[], dict[str, Any]]  # the thresholds file
    after: Callable[[], list[str]] = list  # lines printed after the file is written


def calibrate(
    req: Request,
    target: float,
    records: list[Decision],
    source: str,
    prices: Prices,
    out: TextIO,
    err: TextIO,
) -> int:
    """Steps 1-7 of the module docstring; the exit code."""
    from escalator.calibration.dataset import pair_decisions

    data = pair_decisions(records)
    if data.pending:
        print(
            f"calibrate: {data.pending} request(s) left out after the first whose batch "
            f"measurement is still pending (decided {_iso(int(data.ts_ms.max()))}): the window "
            "ends there (docs/CALIBRATION.md, measurement through the batch lane)",
            file=err,
        )
    ledger = ledger_path(req) if req.objective in CERTIFYING else None
    earlier = (
        []
        if ledger is None
        else tfile.ledger_attempts(ledger, data.cheap_model, data.strong_model, req.objective)
    )
    attempt = Attempt(ledger, len(earlier) + 1, req.delta)
    c = Context(req, target, records, data, source, prices, attempt, out, err)
    objective: Agreement | People = People() if req.objective == "human" else Agreement()
    if req.plan:
        print(objective.plan(c), file=out)
        return 0
    window = window_of(req, data)
    if ledger is not None:
        seen = tfile.overlapping(earlier, window["first_ts_ms"], window["last_ts_ms"])
        if seen is not None:
            print(_overlap(window, seen, ledger), file=err)
            return EXIT_REFUSED
    outcome = objective.run(c, window)
    if outcome is None:
        return EXIT_REFUSED
    if ledger is not None:
        tfile.append_attempt(ledger, outcome.ledger_entry)
    if outcome.refused:
        print(outcome.refusal(), file=err)
        if req.fallback != "escalate-all":
            return EXIT_REFUSED
    version = tfile.write_threshold_file(Path(req.output), outcome.body())
    print(
        f"\nthreshold file: {req.output} (version {version}); "
        f"use it with ESCALATOR_THRESHOLDS_FILE={req.output}",
        file=out,
    )
    for line in outcome.after():
        print(line, file=out)
    return 0


def _overlap(window: dict[str, Any], seen: dict[str, Any], ledger: Path) -> str:
    w = seen["window"]
    return (
        f"calibrate: this window ({window['first_ts']} .. {window['last_ts']}) overlaps "
        f"attempt {seen.get('attempt')} ({w.get('first_ts')} .. {w.get('last_ts')}, "
        f"{seen.get('status')}) in {ledger}: a window certifies once; measure on and "
        f"use --since after {w.get('last_ts')} (to explore without spending the "
        "ledger's error budget: --ledger none --output elsewhere.json, which certifies "
        "nothing you should deploy)"
    )


def _outcome(
    c: Context,
    window: dict[str, Any],
    head: dict[str, Any],
    tail: dict[str, Any],
    refusal: Callable[[], str],
    body: Callable[[], dict[str, Any]],
    after: Callable[[], list[str]] = list,
) -> Outcome:
    """An objective's outcome; its ledger line holds the attempt, the objective's ``head``
    (before the models), the models and window, its ``tail`` (``status`` first), and the
    dataset's hash."""
    entry = {
        "attempt": c.attempt.number,
        **head,
        "models": {"cheap": c.data.cheap_model, "strong": c.data.strong_model},
        "window": window,
        **tail,
        "dataset_sha256": c.data.fingerprint(),
    }
    return Outcome(tail["status"] == "refused", entry, refusal, body, after)


def _grid(req: Request) -> list[float] | None:
    from escalator.calibration.dataset import grid_arg

    return grid_arg(req.grid) if req.grid else None


class Agreement:
    """The agreement objectives (quality, which certifies; rate and budget, which choose by
    estimate): one threshold per cheap answer, against the strong model."""

    def _search(self, c: Context, delta: float) -> Calibration:
        from escalator.calibration.search import calibrate as search

        req = c.req
        return search(
            c.data,
            objective=cast("Objective", req.objective),
            target=c.target,
            delta=delta,
            margin=req.margin,
            grid=_grid(req),
            per_label=req.per_label,
        )

    def plan(self, c: Context) -> str:
        from escalator.calibration.render import plan_table
        from escalator.calibration.search import calibrate as search

        req = c.req
        # The search the plan reads its grid, target and margin from (quality: per_label off).
        result = search(
            c.data, target=c.target, delta=c.attempt.spends, margin=req.margin, grid=_grid(req)
        )
        return plan_table(
            c.data,
            result,
            call_usd=req.strong_call_usd or strong_call_usd(c.records, c.prices),
            delta=c.attempt.share,
            power=req.power,
            assume_threshold=req.assume_threshold,
            traffic_per_hour=req.traffic_per_hour,
        )

    def run(self, c: Context, window: dict[str, Any]) -> Outcome:
        from escalator.calibration import render, sizing
        from escalator.calibration.curves import baselines

        req = c.req
        result = self._search(c, c.attempt.spends)
        base = baselines(c.data, float(result.curve.escalation[result.chosen]))
        print(render.calibration_table(c.data, result, base, c.source), file=c.out)
        people = _people_table(c, result.curve.thresholds, result.curve.delta)
        if people is not None:
            print(people, file=c.out)
        return _outcome(
            c,
            window,
            {},
            {
                "status": result.status,
                "target": c.target,
                "delta_spent": c.attempt.spends,
                "threshold": None if result.status == "refused" else result.threshold,
            },
            refusal=lambda: render.refusal(
                result, sizing.needed(c.data, result, c.attempt.next_share, req.power)
            ),
            body=lambda: tfile.threshold_body(
                result,
                c.data,
                **c.file_args(window),
                base=base,
                fallback=req.fallback == "escalate-all",
            ),
            after=lambda: [render.plot(Path(req.plot), result, base)] if req.plot else [],
        )


def _people_table(c: Context, t: Any, delta: float) -> str | None:
    """The against-people table, when the window has adjudicated human decisions (only then:
    the output without human decisions is what it always was)."""
    from escalator.calibration import adjudications
    from escalator.calibration.curves import people_curve
    from escalator.calibration.render import people_table

    h = adjudications.human_sample(c.records, c.data, list(c.req.review_labels))
    if h is None or h.m == 0:
        return None
    return people_table(h, people_curve(h, t, delta))


class People:
    """The human objective: a cheap and a strong threshold, against people's labels."""

    def _search(
        self, c: Context, h: HumanSample, delta: float, review_cost: float
    ) -> HumanCalibration:
        from escalator.calibration.adjudications import strong_confidences
        from escalator.calibration.dataset import strong_grid_arg
        from escalator.calibration.search import calibrate_human

        req = c.req
        strong_conf, strong_review = strong_confidences(c.records, c.data, list(req.review_labels))
        return calibrate_human(
            c.data,
            h,
            strong_conf,
            strong_review,
            target=c.target,
            budget=req.human_budget,
            delta=delta,
            review_cost=review_cost,
            grid=_grid(req),
            strong_grid=strong_grid_arg(req.strong_grid) if req.strong_grid else None,
        )

    def plan(self, c: Context) -> str:
        from escalator.calibration.adjudications import human_sample
        from escalator.calibration.plan import plan_adjudication
        from escalator.calibration.render import adjudication_plan

        h = human_sample(c.records, c.data, list(c.req.review_labels))
        if h is None or h.decided == 0:
            raise EscalatorError(
                "--objective human --plan needs a pilot with adjudicated human decisions "
                "(ESCALATOR_ADJUDICATE_DISAGREE / _AGREE > 0)"
            )
        result = self._search(c, h, c.attempt.share, 0.0)
        ap = plan_adjudication(c.data, h, result, c.attempt.share, c.req.power)
        return adjudication_plan(ap, result)

    def run(self, c: Context, window: dict[str, Any]) -> Outcome | None:
        """None: refused before any person's label was read (undecided adjudications)."""
        from escalator.calibration import render, sizing
        from escalator.calibration.adjudications import human_sample

        req = c.req
        labels = list(req.review_labels)
        h = human_sample(c.records, c.data, labels)
        if h is None:
            raise EscalatorError(
                "--objective human needs human decisions in the decisions log (adjudications: "
                "ESCALATOR_ADJUDICATE_DISAGREE / _AGREE > 0)"
            )
        if not h.draws_recorded:
            raise EscalatorError(
                "the window's strong decisions record no adjudication draw, so undecided "
                "adjudications cannot be told apart from unsampled requests: calibrate on a "
                "window measured since the strong tier records them (--since)"
            )
        if h.pending.any() and req.undecided == "refuse":
            # Before any person's label is read: nothing is spent, the window stays usable.
            print(render.pending_refusal(h), file=c.err)
            return None
        result = self._search(c, h, c.attempt.spends, req.review_cost or 0.0)
        print(render.human_table(c.data, h, result, c.source), file=c.out)
        chosen = result.chosen is not None
        return _outcome(
            c,
            window,
            {"objective": "human"},
            {
                "status": result.status,
                "target": result.target,
                "human_budget": result.budget,
                "delta_spent": c.attempt.spends,
                "undecided": result.pending,
                "threshold": result.cheap_threshold if chosen else None,
                "strong_threshold": result.strong_threshold if chosen else None,
            },
            refusal=lambda: render.human_refusal(
                result,
                sizing.needed_human(c.data, h, result, c.attempt.next_share, req.power),
            ),
            body=lambda: tfile.human_threshold_body(
                result,
                c.data,
                h,
                **c.file_args(window),
                review_labels=labels,
            ),
        )


def strong_call_usd(records: list[Decision], prices: Prices) -> float | None:
    """Mean cost of one strong call in the window, re-priced from its tokens."""
    from escalator.calibration.report import usage_of

    costs = [
        prices.cost_usd(r.attempt.model, usage_of(r.attempt)) for r in records if r.tier == "strong"
    ]
    return sum(costs) / len(costs) if costs else None


def plan_assumed(
    req: Request, target: float, prices: Prices, strong_model: str, out: TextIO, err: TextIO
) -> int:
    """``--plan`` without a log, from an assumed accepted share and disagreement."""
    from escalator.calibration import sizing
    from escalator.calibration.render import plan_rows
    from escalator.model.prices import Usage

    if req.objective == "human":
        raise EscalatorError("--objective human --plan needs a pilot log (--input or the topic)")
    if req.assume_accepted is None or req.assume_disagreement is None:
        raise EscalatorError("--assume-accepted needs --assume-disagreement")
    prof = sizing.assumed(req.assume_accepted, req.assume_disagreement)
    call = req.strong_call_usd
    if call is None:
        tokens_in, _, tokens_out = req.assume_strong_tokens.partition(":")
        call = prices.cost_usd(
            strong_model, Usage(input_tokens=int(tokens_in), output_tokens=int(tokens_out or 0))
        )
    if 1 - prof.disagree[0] < target:
        print(
            f"calibrate --plan: agreement {1 - prof.disagree[0]:.4f} at that threshold is below "
            f"the target {target}: no measurement can certify it",
            file=err,
        )
        return EXIT_REFUSED
    print(
        f"Plan from assumptions: {req.assume_accepted:.0%} of traffic accepted, "
        f"{req.assume_disagreement:.2%} of those disagree with the strong model; target "
        f"{target}, delta {req.delta:g}, power {req.power:.0%}; strong call ${call:.6f}",
        file=out,
    )
    lines = plan_rows(prof, prof, 0.0, target, req.delta, req.traffic_per_hour, call, 0, req.power)
    print("\n".join(lines), file=out)
    return 0
