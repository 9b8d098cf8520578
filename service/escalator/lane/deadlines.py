"""Each request's deadline, and the rule that picks its lane: batch or real time.

A request may say how long its answer may take (``deadline_s``, seconds from its record's
timestamp; docs/CONTRACT.md). A request that says nothing gets the requests topic's default
(ESCALATOR_DEADLINE_S); with neither it has no deadline and is answered in real time, as
before the lane existed.

The rule (docs/OPERATIONS.md, "The batch lane"). A request goes to the batch lane only when

1. the lane is on (ESCALATOR_BATCH_LANE, off by default: batches are not eligible for Zero
   Data Retention);
2. it has a deadline; and
3. its slack, the deadline less what it has already waited, is at least
   ``factor x (max_age + expected) + fallback``:
   ``max_age`` is the assembly bound (a batch is submitted once its oldest request has
   waited ESCALATOR_BATCH_MAX_AGE_S), ``expected`` the lane's completion time as observed
   (:class:`CompletionTimes`), ``factor`` ESCALATOR_BATCH_SLACK_FACTOR (2: the lane may take
   twice its usual time and still be in time), and ``fallback`` ESCALATOR_BATCH_FALLBACK_S,
   the time kept back to answer in real time a request whose batch item expired, was
   canceled or errored.

Everything else goes real time. The rule errs towards real time: a request sent there too
eagerly costs full price; one sent to the lane too eagerly may miss its deadline.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from escalator.config import BATCH_EXPIRY_S, LaneSettings
from escalator.contract.messages import BATCH, REALTIME, Request

#: Why a request went the way it did (a metric label, and the log's ``lane_reason``).
LANE_OFF = "lane_off"
NO_DEADLINE = "no_deadline"
SLACK_SHORT = "slack_short"
SLACK_AMPLE = "slack_ample"


@dataclass(frozen=True, slots=True)
class Choice:
    """A request's lane, and why."""

    lane: str
    reason: str
    #: The deadline in force (seconds from the record's timestamp), None: none.
    deadline_s: float | None
    #: The slack the rule asked for, None when it did not get that far.
    required_s: float | None = None


class CompletionTimes:
    """The batch lane's completion time as observed: submission to ``ended`` per batch.

    :meth:`expected_s` is the slowest of the last ``window`` batches, and never less than the
    prior (ESCALATOR_BATCH_EXPECTED_S) until ``min_observed`` have ended: a lane that has not
    shown its speed is assumed slow. A batch still running counts with its age so far, so that
    a stalled API stops the lane taking work before any batch of it ends."""

    def __init__(self, prior_s: float, *, window: int = 20, min_observed: int = 5) -> None:
        if prior_s <= 0 or window < 1 or not 0 <= min_observed <= window:
            raise ValueError("prior_s > 0, window >= 1, 0 <= min_observed <= window")
        self.prior_s = prior_s
        self.min_observed = min_observed
        self._seen: deque[float] = deque(maxlen=window)

    def observe(self, seconds: float) -> None:
        """One batch ended, ``seconds`` after its submission."""
        self._seen.append(max(0.0, seconds))

    @property
    def observed(self) -> int:
        return len(self._seen)

    def expected_s(self, running_ages_s: Iterable[float] = ()) -> float:
        slowest = max((*self._seen, *running_ages_s), default=0.0)
        if len(self._seen) < self.min_observed:
            slowest = max(slowest, self.prior_s)
        return min(slowest, BATCH_EXPIRY_S)


@dataclass(frozen=True, slots=True)
class LaneRule:
    """The rule above, with the deployment's settings."""

    enabled: bool = False
    default_deadline_s: float | None = None
    slack_factor: float = 2.0
    fallback_s: float = 300.0
    max_age_s: float = 60.0

    @classmethod
    def of(cls, settings: LaneSettings) -> LaneRule:
        return cls(
            enabled=settings.enabled,
            default_deadline_s=settings.deadline_s,
            slack_factor=settings.slack_factor,
            fallback_s=settings.fallback_s,
            max_age_s=settings.max_age_s,
        )

    def deadline_s(self, request: Request) -> float | None:
        """The deadline in force: the request's own, else the topic default, else None."""
        return request.deadline_s if request.deadline_s is not None else self.default_deadline_s

    def required_slack_s(self, expected_s: float) -> float:
        return self.slack_factor * (self.max_age_s + expected_s) + self.fallback_s

    def ample(self, slack_s: float, expected_s: float) -> bool:
        """True when ``slack_s`` seconds left before a deadline are enough for the lane."""
        return self.enabled and slack_s >= self.required_slack_s(expected_s)

    def choose(self, request: Request, *, waited_s: float, expected_s: float) -> Choice:
        """The lane for ``request``, which has waited ``waited_s`` since its record's
        timestamp, with the lane's completion time ``expected_s``."""
        deadline = self.deadline_s(request)
        if not self.enabled:
            return Choice(REALTIME, LANE_OFF, deadline)
        if deadline is None:
            return Choice(REALTIME, NO_DEADLINE, None)
        required = self.required_slack_s(expected_s)
        if self.ample(deadline - max(0.0, waited_s), expected_s):
            return Choice(BATCH, SLACK_AMPLE, deadline, required)
        return Choice(REALTIME, SLACK_SHORT, deadline, required)
