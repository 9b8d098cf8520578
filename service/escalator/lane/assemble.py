"""The lane's part of the service, built from settings: a ``BatchRunner`` (``runner.py``)
on the Message Batches API of the process's API client, recording its batches on the state
topic through the process's producer. The lane row of the tier table asks for it
(``tiers/table.py``); ``app.py`` enters it beside the workers."""

from __future__ import annotations

import anthropic

from escalator.config import Settings
from escalator.errors import ConfigError
from escalator.kafka.clients import ProducerHandle
from escalator.lane.assembly import MAX_REQUESTS
from escalator.lane.batches import AnthropicBatches
from escalator.lane.handoff import HandOff
from escalator.lane.runner import BatchRunner
from escalator.lane.state_topic import KafkaStateLog
from escalator.observability.metrics import Metrics


def lane_runner(
    settings: Settings,
    client: anthropic.AsyncAnthropic | None,
    producer: ProducerHandle,
    *,
    handoff: HandOff | None,
    metrics: Metrics,
) -> BatchRunner:
    if client is None:
        raise ConfigError("ESCALATOR_BATCH_LANE: the batch lane needs the Anthropic API client")
    lane = settings.lane
    return BatchRunner(
        AnthropicBatches(client),
        KafkaStateLog(
            settings.kafka,
            settings.topics.lane_state,
            producer,
            handoff=settings.topics.handoff,
            group=lane.group,
        ),
        max_age_s=lane.max_age_s,
        poll_s=lane.poll_s,
        times=handoff.times if handoff is not None else None,
        metrics=metrics,
        rpm=lane.rpm,
        queue_limit=lane.queue_limit,
        # A worker that holds its most cuts its batch at once rather than at its age.
        max_requests=min(MAX_REQUESTS, lane.max_waiting),
        fallback_s=lane.fallback_s,
    )
