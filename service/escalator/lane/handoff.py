"""The hand-off: the cheap tier's one call into the lane (``takes``), which answers a request
that can wait with a copy of it on the hand-off topic instead of a model call.

The copy is an output like any other: the engine commits the request's offset only once the
hand-off topic has acknowledged it, so the topic is the lane's ledger and no consumer holds a
requests partition for the hours a batch may take. The copy carries, in reserved headers, the
request's absolute deadline (its record's timestamp + the deadline in force) and where it came
from; the lane worker reads them, and every output of the lane drops them again
(``propagated_headers``).

A record flagged ``x-escalator-lane: realtime`` is never handed off: that is how the lane
sends back what it could not answer in time (an expired or canceled batch item).

Measurement (ESCALATOR_MEASURE_LANE=batch, the default with the lane on): a shadow the cheap
tier draws is handed off too (:meth:`HandOff.measurement`), as its escalation value flagged
``x-escalator-measure: shadow``, instead of going to the escalations topic. It has no
deadline: no reader waits for it. The lane answers it with the strong model in a batch and
writes its shadow decision (``tiers/lane.py``).

Escalation: the lane worker routes a cheap batch answer as the cheap tier routes a real-time
one, and an unsure one whose request still has slack by the same rule (its absolute deadline
less now, against the lane's expected completion, :meth:`LaneRule.ample`) is handed off again
(:meth:`HandOff.escalation`), as its escalation value flagged ``x-escalator-escalate: strong``
with the same deadline: the lane answers it with the strong model in a batch, through the
strong tier's own code. Too little slack: the escalations topic, in real time, as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from escalator.config import LaneSettings
from escalator.contract.messages import BATCH, H_PREFIX, REALTIME, Request, propagated_headers
from escalator.engine.worker import Output, Record
from escalator.lane.deadlines import Choice, CompletionTimes, LaneRule

#: The request's absolute deadline, epoch milliseconds (on the hand-off topic).
DEADLINE_HEADER = H_PREFIX + "deadline-ms"
#: ``<topic>/<partition>/<offset>`` of the request the hand-off copies.
ORIGIN_HEADER = H_PREFIX + "handoff-of"
#: ``realtime`` on a request the lane sent back: answered in real time, never handed off again.
LANE_HEADER = H_PREFIX + "lane"
#: ``shadow`` on a measurement the lane answers with the strong model (an escalation value).
MEASURE_HEADER = H_PREFIX + "measure"
SHADOW = b"shadow"
#: ``strong`` on an escalation the lane answers with the strong model in a batch.
ESCALATE_HEADER = H_PREFIX + "escalate"
STRONG = b"strong"


def measurement(record: Record) -> bool:
    """True when the hand-off ``record`` is a shadow to measure, not a request to answer."""
    return any(k == MEASURE_HEADER and v == SHADOW for k, v in record.headers or ())


def escalated(record: Record) -> bool:
    """True when the hand-off ``record`` is an escalation for a strong-model batch."""
    return any(k == ESCALATE_HEADER and v == STRONG for k, v in record.headers or ())


def flagged_realtime(record: Record) -> bool:
    """True when ``record`` carries ``x-escalator-lane: realtime``."""
    return any(k == LANE_HEADER and v == REALTIME.encode() for k, v in record.headers or ())


def deadline_ms(record: Record) -> int | None:
    """The absolute deadline a hand-off record carries, None when it carries none."""
    for k, v in record.headers or ():
        if k == DEADLINE_HEADER and v:
            try:
                return int(bytes(v))
            except ValueError:
                return None
    return None


class HandOff:
    """The lane rule applied to each request the cheap tier reads."""

    def __init__(
        self,
        rule: LaneRule,
        times: CompletionTimes,
        topic: str,
        *,
        measures: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.rule = rule
        self.times = times
        self.topic = topic
        #: Shadows go through the lane (ESCALATOR_MEASURE_LANE=batch).
        self.measures = measures
        self._clock = clock

    @classmethod
    def of(cls, settings: LaneSettings, topic: str) -> HandOff:
        return cls(
            LaneRule.of(settings),
            CompletionTimes(settings.expected_s),
            topic,
            measures=settings.measure == BATCH,
        )

    def measurement(self, record: Record, escalation: bytes) -> Output:
        """The hand-off of a shadow drawn for ``record`` (its escalation value): an output of
        ``record``, so the request's offset commits only once the measurement is durable."""
        origin = f"{record.topic}/{record.partition}/{record.offset}"
        headers = [
            *propagated_headers(record.headers),
            (MEASURE_HEADER, SHADOW),
            (ORIGIN_HEADER, origin.encode()),
        ]
        return Output(self.topic, escalation, record.key, headers)

    def escalation(self, record: Record, escalation: Output) -> Output | None:
        """The hand-off of ``escalation`` (an output of the lane's ``record``, bound for the
        escalations topic) for a strong-model batch, with ``record``'s deadline, when its
        slack still meets the rule; else None (escalate in real time)."""
        deadline = deadline_ms(record)
        if deadline is None:
            return None
        slack_s = deadline / 1000 - self._clock()
        if not self.rule.ample(slack_s, self.times.expected_s()):
            return None
        origin = f"{record.topic}/{record.partition}/{record.offset}"
        headers = [
            *propagated_headers(record.headers),
            (DEADLINE_HEADER, str(deadline).encode()),
            (ORIGIN_HEADER, origin.encode()),
            (ESCALATE_HEADER, STRONG),
        ]
        return Output(self.topic, escalation.value, escalation.key, headers)

    def choose(self, record: Record, request: Request) -> Choice:
        waited_s = self._clock() - record.timestamp / 1000
        return self.rule.choose(request, waited_s=waited_s, expected_s=self.times.expected_s())

    def takes(self, record: Record, request: Request) -> list[Output] | None:
        """The hand-off of ``record`` when the rule sends it to the lane, else None (answer
        it in real time)."""
        if flagged_realtime(record):
            return None
        choice = self.choose(record, request)
        if choice.lane != BATCH or choice.deadline_s is None:
            return None
        deadline = record.timestamp + int(choice.deadline_s * 1000)
        origin = f"{record.topic}/{record.partition}/{record.offset}"
        headers = [
            *propagated_headers(record.headers),
            (DEADLINE_HEADER, str(deadline).encode()),
            (ORIGIN_HEADER, origin.encode()),
        ]
        return [Output(self.topic, record.value or b"", record.key, headers)]
