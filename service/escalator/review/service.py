"""``escalator review serve``: the review queues over Kafka, the web page in front of them,
and the operator's port (``/metrics``, ``/healthz``, ``/readyz``), in one
:class:`~escalator.process.Service` (its lifecycle is the tiers').

On SIGTERM or SIGINT: stop serving decisions, commit what is decided, leave the group, exit 0.
Leased, undecided items are not committed: they go back to the queue, for this console's
next start or another one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from escalator.calibration import live
from escalator.calibration.threshold_file import load_promise
from escalator.config import Settings
from escalator.contract.reviews import Queue
from escalator.observability.logs import log
from escalator.observability.metrics import Metrics
from escalator.review.assemble import build_console
from escalator.review.auth import Authenticator
from escalator.review.queues import Lease, Outcome, QueueStat, ReviewQueues
from escalator.review.web import LoginOutcome, ReviewConsole

logger = logging.getLogger("escalator.review")


class MetricsObserver:
    """What the page reports that the queues do not see: sign-ins and skips."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def on_login(self, outcome: LoginOutcome) -> None:
        self._metrics.review_logins.labels(outcome).inc()

    def on_decision(
        self, queue: Queue, reviewer: str, seconds: float | None, outcome: Outcome
    ) -> None:
        return None  # the queues count decisions (review_decisions_total), once

    def on_skip(self, queue: Queue, reviewer: str) -> None:
        self._metrics.review_skips.labels(queue).inc()


class WatchedQueues:
    """The queues, with every adjudication decision also fed to the live test of a human
    thresholds file (``calibration/live.py``): the console is where those decisions are made."""

    def __init__(self, inner: ReviewQueues, watch: live.PeopleWatch) -> None:
        self._inner = inner
        self._watch = watch

    def stats(self) -> list[QueueStat]:
        return self._inner.stats()

    def lease(self, queue: Queue, reviewer: str) -> Lease | None:
        return self._inner.lease(queue, reviewer)

    def lease_of(self, lease_id: str, reviewer: str) -> Lease | None:
        return self._inner.lease_of(lease_id, reviewer)

    def release(self, lease_id: str, reviewer: str) -> None:
        self._inner.release(lease_id, reviewer)

    async def decide(
        self, lease_id: str, reviewer: str, label: str | None, note: str | None
    ) -> Outcome:
        held = self._inner.lease_of(lease_id, reviewer)
        outcome = await self._inner.decide(lease_id, reviewer, label, note)
        if outcome == "done" and held is not None:
            self._watch.observe(held.item, label)
        return outcome


def watched(settings: Settings, queues: ReviewQueues, metrics: Metrics) -> ReviewQueues:
    """The queues, watched when the thresholds file in force makes a human promise."""
    path = settings.routing.thresholds_file
    if path is None:
        return queues
    rv = settings.review
    watch = live.people_watch(
        load_promise(path),
        alpha=settings.routing.monitor_alpha,
        shadow_rate=settings.routing.shadow_rate,
        adjudicate=(rv.adjudicate_agree, rv.adjudicate_disagree),
        metrics=metrics,
    )
    return queues if watch is None else WatchedQueues(queues, watch)


async def serve(
    settings: Settings,
    auth: Authenticator,
    *,
    install_signals: bool = True,
    on_ready: Callable[[str, int], None] | None = None,
) -> None:
    """Run the console until a signal (or ``stop`` through ``on_ready``'s caller): its
    :class:`~escalator.process.Service` (``assemble.py``) with the page beside the queues."""
    metrics = Metrics()
    console = build_console(settings, metrics)
    rv, service = settings.review, console.service
    page = ReviewConsole(
        watched(settings, console.queues, metrics),
        auth,
        host=rv.host,
        port=rv.port,
        secure_cookies=rv.secure_cookies,
        observer=MetricsObserver(metrics),
    )
    console.serve_page(page)
    try:
        await service.start(install_signals=install_signals)
        log(
            logger,
            "review_console_started",
            url=page.url,
            metrics_port=service.health_port,
            reviewers=len(auth.reviewers),
            sign_in=auth.kind,
        )
        if on_ready is not None:
            on_ready(page.url, service.health_port)
        await service.wait()
    finally:
        await service.close()
        log(logger, "review_console_stopped")
