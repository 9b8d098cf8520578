"""The delivery strategy the settings ask for (``ESCALATOR_PROCESSING_GUARANTEE``): the one
place the guarantee is looked at, for every worker the service runs (the tiers' and the
review console's)."""

from __future__ import annotations

from collections.abc import Callable

from aiokafka import AIOKafkaProducer, TopicPartition

from escalator.config import Settings
from escalator.engine.at_least_once import AtLeastOnce
from escalator.engine.delivery import Delivery
from escalator.engine.transactional import Transactional
from escalator.kafka.clients import ProducerHandle, make_producer


def delivery_for(settings: Settings, group: str, producer: ProducerHandle) -> Delivery:
    """Exactly-once: transactions per input partition of ``group``; else at-least-once over
    the shared ``producer``."""
    if settings.pipeline.processing_guarantee == "exactly_once":
        return Transactional(transactional_factory(settings, group), group)
    return AtLeastOnce(producer)


def transactional_factory(
    settings: Settings, group: str
) -> Callable[[TopicPartition], AIOKafkaProducer]:
    """One transactional id per input partition, stable across restarts and owners.

    A new owner of a partition reuses its id, so ``init_transactions`` fences the previous
    owner and aborts its open transaction. aiokafka sends TxnOffsetCommit v0 (no KIP-447
    generation fencing), which is why the id is per partition, not per process.
    """
    prefix = settings.pipeline.transactional_id_prefix

    def make(tp: TopicPartition) -> AIOKafkaProducer:
        return make_producer(
            settings.kafka,
            transactional_id=f"{prefix}-{group}-{tp.topic}-{tp.partition}",
            transaction_timeout_ms=60_000,
        )

    return make
