"""The lane's state topic on the real broker (lane/state_topic.py): what a worker reads back is
the last record per key over every partition, a tombstone closing its batch."""

from __future__ import annotations

from escalator.config import KafkaSettings
from escalator.kafka.clients import ProducerHandle, create_topics, make_producer
from escalator.lane.state import BatchState
from escalator.lane.state_topic import KafkaStateLog


async def test_the_state_topic_reads_back_the_open_batches_last_record_per_key(
    kafka_bootstrap: str, unique: str
) -> None:
    """An intent then its batch id under one key, a batch closed by its tombstone and one left
    open, on a topic of three partitions: the read gives the submitted record and the open one, and
    nothing for the closed batch; an empty state topic reads as no batch."""
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    topic, empty = f"lane-state-{unique}", f"lane-state-empty-{unique}"
    compact = {"cleanup.policy": "compact"}
    await create_topics(kafka, [topic, empty], 3, 1, {topic: compact, empty: compact})
    producer = ProducerHandle(lambda: make_producer(kafka))
    await producer.start()
    try:
        log = KafkaStateLog(kafka, topic, producer, handoff=f"handoff-{unique}", group=unique)
        submitted = BatchState("m", ("p0o1", "p0o2"), 1000).submitted("b1", 2000)
        closed = BatchState("m", ("p1o1",), 1001)
        still_open = BatchState("n", ("p2o5",), 1002)
        await log.write(BatchState("m", ("p0o1", "p0o2"), 1000))
        await log.write(closed)
        await log.write(submitted)
        await log.close(closed.key)
        await log.write(still_open)
        assert await log.read() == {submitted.key: submitted, still_open.key: still_open}
        assert await KafkaStateLog(kafka, empty, producer, handoff="h", group="g").read() == {}
    finally:
        await producer.stop()
