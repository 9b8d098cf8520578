"""Is a broker there, and are the topics? The service's view of a Kafka outage, and of topics
that do not exist yet, for readiness and the log.

aiokafka retries on its own through an outage and reports nothing a caller can read, only log
lines (which the log configuration summarises, ``observability/logs.py``). So the service
asks for itself: every few seconds :class:`BrokerWatch` connects to the bootstrap servers the
way ``escalator run`` did at start-up (``clients.check_connection``: TCP, TLS and SASL, one
ApiVersions round trip) and closes the connection.

- the first failed probe is logged once (``kafka_unreachable``, with the cause);
- while it lasts, one line per summary interval (``kafka_still_unreachable``: how long, how
  many probes failed);
- after ``ESCALATOR_KAFKA_UNREACHABLE_S`` without an answer, :meth:`BrokerWatch.outage` says
  why, and ``/readyz`` answers 503 with it;
- the first probe that succeeds ends it (``kafka_reachable_again``, with the downtime).

Nothing here stops or restarts the tiers: aiokafka reconnects by itself, and the engine holds
records whose outputs are not acknowledged (nothing is committed past them).

:class:`TopicWatch` holds the start of the tiers until their topics exist: one
``topics_missing`` line, then one a minute, while :attr:`TopicWatch.missing` tells readiness
why (a subscription to a missing topic made aiokafka log about 13 lines a second, forever).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from aiokafka.errors import KafkaError

from escalator.config import KafkaSettings
from escalator.errors import EscalatorError
from escalator.observability.logs import log

logger = logging.getLogger("escalator.kafka")

#: Probe at most this often, and at least three times within ESCALATOR_KAFKA_UNREACHABLE_S.
MAX_PROBE_INTERVAL_S = 10.0
#: While the broker stays away, one summary line per this many seconds.
SUMMARY_INTERVAL_S = 60.0
#: While topics are missing at start-up: look again this often.
TOPICS_POLL_S = 5.0


class BrokerWatch:
    """Probes the bootstrap servers; knows since when none has answered."""

    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        probe: Callable[[], Awaitable[object]] | None = None,
        probe_interval_s: float | None = None,
        summary_interval_s: float = SUMMARY_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.unreachable_s = kafka.unreachable_s
        self.interval_s = probe_interval_s or min(
            MAX_PROBE_INTERVAL_S, max(0.5, kafka.unreachable_s / 3)
        )
        if probe is None:
            from escalator.kafka.clients import check_connection

            timeout = min(5.0, self.interval_s)

            def probe() -> Awaitable[object]:
                return check_connection(kafka, timeout_s=timeout)

        self._probe = probe
        self._summary_s = summary_interval_s
        self._clock = clock
        self._last_ok = clock()  # the service has just connected (or is about to)
        self._down_since: float | None = None
        self._failed = 0
        self._cause = ""
        self._last_summary = 0.0

    @property
    def down(self) -> bool:
        """True from the first failed probe until one succeeds."""
        return self._down_since is not None

    def outage(self) -> str | None:
        """Why the service is not ready (no broker answered for ESCALATOR_KAFKA_UNREACHABLE_S),
        or None."""
        if self._down_since is None:
            return None
        silent = self._clock() - self._last_ok
        if silent < self.unreachable_s:
            return None
        return (
            f"no Kafka broker has answered for {silent:.0f} s ({self._failed} probes failed; "
            f"last: {self._cause})"
        )

    async def run(self) -> None:
        """Probe until cancelled."""
        while True:
            await asyncio.sleep(self.interval_s)
            await self.probe_once()

    async def probe_once(self) -> bool:
        try:
            await self._probe()
        except (EscalatorError, OSError) as exc:
            self._on_failure(str(exc))
            return False
        self._on_success()
        return True

    def _on_failure(self, cause: str) -> None:
        now = self._clock()
        self._failed += 1
        self._cause = cause
        if self._down_since is None:
            self._down_since = now
            self._last_summary = now
            log(
                logger,
                "kafka_unreachable",
                logging.WARNING,
                error=cause,
                not_ready_after_s=self.unreachable_s,
            )
        elif now - self._last_summary >= self._summary_s:
            self._last_summary = now
            log(
                logger,
                "kafka_still_unreachable",
                logging.WARNING,
                silent_s=round(now - self._last_ok, 1),
                failed_probes=self._failed,
                ready=self.outage() is None,
                error=cause,
            )

    def _on_success(self) -> None:
        now = self._clock()
        if self._down_since is not None:
            log(
                logger,
                "kafka_reachable_again",
                logging.WARNING,
                silent_s=round(now - self._last_ok, 1),
                failed_probes=self._failed,
            )
        self._last_ok = now
        self._down_since = None
        self._failed = 0


class TopicWatch:
    """The topics a process needs; :meth:`wait` returns once they all exist."""

    def __init__(
        self,
        kafka: KafkaSettings,
        names: list[str],
        *,
        poll_s: float = TOPICS_POLL_S,
        summary_interval_s: float = SUMMARY_INTERVAL_S,
    ) -> None:
        self._kafka = kafka
        self.names = names
        #: Those not found at the last look (readiness says so while it is not empty).
        self.missing: list[str] = []
        self._poll_s = poll_s
        self._summary_s = summary_interval_s

    async def wait(self, stop: asyncio.Event) -> bool:
        """True once every topic exists; False if ``stop`` is set first."""
        from escalator.kafka.clients import missing_topics

        started = time.monotonic()
        last: float | None = None
        while not stop.is_set():
            error: str | None = None
            try:
                self.missing = await missing_topics(self._kafka, self.names)
            except (KafkaError, OSError) as exc:
                self.missing, error = list(self.names), repr(exc)
            now = time.monotonic()
            if not self.missing:
                if last is not None:
                    log(logger, "topics_found", waited_s=round(now - started, 1))
                return True
            if last is None or now - last >= self._summary_s:
                last = now
                log(
                    logger,
                    "topics_missing",
                    logging.ERROR,
                    topics=self.missing,
                    waited_s=round(now - started, 1),
                    hint="create them: escalator topics create (or your topic tooling)",
                    error=error,
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_s):
                    await stop.wait()
        return False
