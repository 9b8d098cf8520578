"""Kafka clients built from settings: security (TLS, SASL), the idempotent producer (and
produce-and-await for the commands and tools that publish a batch), the manual-commit consumer,
and idempotent topic creation. aiokafka errors are classified here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from typing import Any, Protocol, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import create_conn
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    SaslAuthenticationFailed,
    TopicAlreadyExistsError,
    UnknownProducerId,
    UnsupportedSaslMechanismError,
    for_code,
)
from aiokafka.helpers import create_ssl_context

from escalator.config import KafkaSettings
from escalator.errors import ConfigError, EscalatorError
from escalator.kafka.partitioning import KeyPartitioner, positive_hash
from escalator.observability.logs import log

logger = logging.getLogger("escalator.kafka")

#: Errors after which aiokafka's idempotent producer does not recover by itself: its sender
#: task has died (aiokafka issue 1017) or its producer id is no longer valid.
FATAL_PRODUCER_ERRORS = (OutOfOrderSequenceNumber, ProducerFenced, UnknownProducerId)


def sender_alive(producer: AIOKafkaProducer) -> bool:
    """False once aiokafka's background sender task has died.

    After ``OutOfOrderSequenceNumber`` the sender task re-raises and ends; every later send
    waits in the accumulator until it times out, forever (aiokafka issue 1017). aiokafka has
    no public health check, so this reads its ``_sender`` attribute, defensively.
    """
    sender = getattr(producer, "_sender", None)
    task = getattr(sender, "sender_task", None)
    return task is None or not task.done()


class ProducerHandle:
    """The process's output producer, replaced by a fresh one when it cannot recover.

    Callers take :meth:`get` each time they send, so a replacement is picked up at once.
    :meth:`repair` is single-flight: many failing sends cause one replacement.
    """

    def __init__(
        self,
        factory: Callable[[], AIOKafkaProducer],
        on_recreate: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self._factory = factory
        self._producer = factory()
        self._lock = asyncio.Lock()
        self._on_recreate = on_recreate
        self.generation = 0

    def get(self) -> AIOKafkaProducer:
        return self._producer

    async def start(self) -> None:
        await self._producer.start()

    def healthy(self) -> bool:
        return sender_alive(self._producer)

    async def repair(
        self, error: BaseException | None = None, failed: AIOKafkaProducer | None = None
    ) -> bool:
        """Replace the producer if ``error`` is fatal or its sender died. True if replaced.

        ``failed`` is the producer the error came from. Sends still waiting on a replaced
        producer fail late; their errors must not replace its healthy successor.
        """
        seen = self.generation
        async with self._lock:
            if self.generation != seen or (failed is not None and failed is not self._producer):
                return True  # another caller already replaced it
            if self.healthy() and not isinstance(error, FATAL_PRODUCER_ERRORS):
                return False
            reason = type(error).__name__ if error is not None else "sender_died"
            log(logger, "producer_recreate", logging.WARNING, reason=reason)
            old = self._producer
            with contextlib.suppress(KafkaError, TimeoutError, OSError):
                async with asyncio.timeout(5):
                    await old.stop()
            fresh = self._factory()
            await fresh.start()
            self._producer = fresh
            self.generation += 1
            self._on_recreate(reason)
            return True

    async def stop(self, flush_timeout_s: float = 10.0, stop_timeout_s: float = 10.0) -> None:
        """Flush, then stop; each bounded. In a broker outage neither can finish (aiokafka
        waits for its batches to expire): past the bounds the connections are closed anyway.
        Unacknowledged outputs were never committed past, so their records are redone."""
        with contextlib.suppress(KafkaError, TimeoutError):
            async with asyncio.timeout(flush_timeout_s):
                await self._producer.flush()
        try:
            async with asyncio.timeout(stop_timeout_s):
                await self._producer.stop()
        except TimeoutError:
            log(logger, "producer_stop_timed_out", logging.WARNING, after_s=stop_timeout_s)
            with contextlib.suppress(KafkaError, OSError, TimeoutError):
                async with asyncio.timeout(5):
                    await self._producer.client.close()


class _Addressed(Protocol):
    @property
    def topic(self) -> str: ...

    @property
    def key(self) -> bytes | None: ...


class _Producible(_Addressed, Protocol):
    @property
    def value(self) -> bytes | None: ...

    @property
    def headers(self) -> Any: ...


_R = TypeVar("_R", bound=_Addressed)


async def group_by_partition(
    producer: AIOKafkaProducer, records: Iterable[_R]
) -> dict[tuple[str, int], list[_R]]:
    """Records to produce, grouped by the partition ``producer.send`` would give each, in
    order within a group: the producer's partitioner (kafka/partitioning.py: murmur2 of the key, as
    the Java client; a keyless record to a random available partition). Raises ``KafkaError`` when a
    topic's metadata cannot be had (as ``send`` would)."""
    groups: dict[tuple[str, int], list[_R]] = {}
    layouts: dict[str, tuple[list[int], list[int]]] = {}
    hashes: dict[bytes, int] = {}  # a record's outputs share its key: hash it once
    for record in records:
        topic = record.topic
        layout = layouts.get(topic)
        if layout is None:
            await producer.partitions_for(topic)  # waits for the topic's metadata
            cluster = producer.client.cluster
            every = sorted(cluster.partitions_for_topic(topic) or ())
            available = sorted(cluster.available_partitions_for_topic(topic) or ())
            layout = layouts[topic] = (every, available)
        every, available = layout
        key = record.key
        if key is None:
            partition = random.choice(available or every)
        else:
            h = hashes.get(key)
            if h is None:
                h = hashes[key] = positive_hash(key)
            partition = every[h % len(every)]
        group = groups.get((topic, partition))
        if group is None:
            groups[(topic, partition)] = [record]
        else:
            group.append(record)
    return groups


_P = TypeVar("_P", bound=_Producible)


async def send_batches(
    producer: AIOKafkaProducer, records: Iterable[_P]
) -> list[tuple[list[_P], asyncio.Future[Any] | None, KafkaError | None]]:
    """Hand ``records`` to aiokafka as record batches (``send_batch``), one or more per
    partition (as ``group_by_partition`` places them): one future per batch rather than one
    per record, which is most of what a ``send`` costs. Returns each batch's records with its
    future, or with the error that kept it from being queued (its records were not sent). A
    batch is appended by the broker whole or not at all. Raises ``KafkaError`` when a topic's
    metadata cannot be had (nothing was sent)."""
    sent: list[tuple[list[_P], asyncio.Future[Any] | None, KafkaError | None]] = []

    async def send(builder: Any, members: list[_P], topic: str, partition: int) -> None:
        try:
            future = await producer.send_batch(builder, topic, partition=partition)
        except KafkaError as exc:
            sent.append((members, None, exc))
        else:
            sent.append((members, future, None))

    async def one_partition(topic: str, partition: int, group: list[_P]) -> None:
        # In order within the partition: each batch is queued after the one before it.
        builder = producer.create_batch()
        members: list[_P] = []
        for r in group:
            if (
                builder.append(timestamp=None, key=r.key, value=r.value, headers=r.headers) is None
            ):  # full: queue it and start the next (a first record always fits)
                await send(builder, members, topic, partition)
                builder = producer.create_batch()
                members = []
                builder.append(timestamp=None, key=r.key, value=r.value, headers=r.headers)
            members.append(r)
        await send(builder, members, topic, partition)

    # aiokafka queues a batch only once the partition's previous one has left for the broker
    # (a request round trip while one is in flight): the partitions wait side by side.
    groups = await group_by_partition(producer, records)
    await asyncio.gather(*(one_partition(t, p, g) for (t, p), g in groups.items()))
    return sent


def security_kwargs(kafka: KafkaSettings) -> dict[str, Any]:
    """aiokafka keyword arguments for the configured security protocol."""
    kwargs: dict[str, Any] = {"security_protocol": kafka.security_protocol}
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        if kafka.ssl_cafile is not None:
            try:  # alone first, so that the error names the file at fault
                ssl.create_default_context(cafile=str(kafka.ssl_cafile))
            except (ssl.SSLError, OSError) as exc:
                raise ConfigError(
                    f"ESCALATOR_KAFKA_SSL_CAFILE={kafka.ssl_cafile}: not a PEM CA bundle ({exc})"
                ) from exc
        try:
            context: ssl.SSLContext = create_ssl_context(
                cafile=str(kafka.ssl_cafile) if kafka.ssl_cafile else None,
                certfile=str(kafka.ssl_certfile) if kafka.ssl_certfile else None,
                keyfile=str(kafka.ssl_keyfile) if kafka.ssl_keyfile else None,
            )
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                "ESCALATOR_KAFKA_SSL_CERTFILE / ESCALATOR_KAFKA_SSL_KEYFILE: cannot load the "
                f"client certificate and key ({exc})"
            ) from exc
        kwargs["ssl_context"] = context
    if kafka.security_protocol.startswith("SASL"):
        kwargs["sasl_mechanism"] = kafka.sasl_mechanism
        kwargs["sasl_plain_username"] = kafka.sasl_username
        kwargs["sasl_plain_password"] = kafka.sasl_password.get() if kafka.sasl_password else None
    return kwargs


class KafkaUnreachable(EscalatorError):
    """No bootstrap server accepted a connection with the configured security settings."""


def _explain(kafka: KafkaSettings, address: str, exc: BaseException) -> tuple[bool, str]:
    """(definitive, one-line explanation naming the variable to check) for a failed connect.

    aiokafka's own bootstrap reports every cause as "Unable to bootstrap from [...]"; this is
    what an operator needs instead. Definitive causes (credentials, certificates) stop the
    search at once; the others let the next bootstrap server be tried.
    """
    protocol = kafka.security_protocol
    if isinstance(exc, SaslAuthenticationFailed):
        return True, (
            f"Kafka at {address} rejected the credentials of SASL user {kafka.sasl_username!r}"
            f" ({kafka.sasl_mechanism}): check ESCALATOR_KAFKA_SASL_USERNAME and"
            " ESCALATOR_KAFKA_SASL_PASSWORD"
        )
    if isinstance(exc, UnsupportedSaslMechanismError):
        return True, (
            f"Kafka at {address} does not enable SASL mechanism {kafka.sasl_mechanism} on this"
            " listener: check ESCALATOR_KAFKA_SASL_MECHANISM"
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        return True, (
            f"TLS: the certificate of Kafka at {address} failed verification"
            f" ({exc.verify_message}): check ESCALATOR_KAFKA_SSL_CAFILE"
        )
    if isinstance(exc, ssl.SSLError):
        return False, (
            f"TLS handshake with Kafka at {address} failed ({exc.reason}): does this listener"
            f" speak TLS? ESCALATOR_KAFKA_SECURITY_PROTOCOL is {protocol}"
        )
    if isinstance(exc, (KafkaConnectionError, ConnectionResetError)) and not isinstance(
        exc.__cause__, OSError
    ):
        return False, (
            f"Kafka at {address} closed the connection during the handshake: the listener"
            f" expects another protocol than ESCALATOR_KAFKA_SECURITY_PROTOCOL={protocol}"
            " (TLS or SASL?)"
        )
    if isinstance(exc, TimeoutError):
        return False, f"no answer from Kafka at {address}: check KAFKA_BOOTSTRAP_SERVERS"
    if isinstance(exc, ConnectionRefusedError):
        return False, (
            f"nothing listens at {address} (connection refused): is the broker running? "
            "check KAFKA_BOOTSTRAP_SERVERS"
        )
    if isinstance(exc, socket.gaierror):
        return False, (
            f"cannot resolve {address.rpartition(':')[0]!r} ({exc.strerror}): check "
            "KAFKA_BOOTSTRAP_SERVERS"
        )
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else repr(exc)
    return False, f"cannot connect to Kafka at {address} ({reason}): check KAFKA_BOOTSTRAP_SERVERS"


async def check_connection(kafka: KafkaSettings, timeout_s: float = 15.0) -> str:
    """Connect to the bootstrap servers with the configured security; return the one reached.

    Raises :class:`KafkaUnreachable` with a one-line cause when none can be used.
    """
    security = security_kwargs(kafka)
    reasons: list[str] = []
    for host, port in kafka.addresses:
        address = f"{host}:{port}"
        try:
            async with asyncio.timeout(timeout_s):
                conn = await create_conn(
                    host,
                    port,
                    client_id=kafka.client_id,
                    request_timeout_ms=int(timeout_s * 1000),
                    **security,
                )
        except (KafkaError, OSError, TimeoutError) as exc:
            definitive, reason = _explain(kafka, address, exc)
            if definitive:
                raise KafkaUnreachable(reason) from exc
            reasons.append(reason)
            continue
        conn.close()
        return address
    raise KafkaUnreachable("; ".join(reasons))


def make_producer(kafka: KafkaSettings, **overrides: Any) -> AIOKafkaProducer:
    """Idempotent, acks=all: an acknowledged output is on every in-sync replica."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "client_id": kafka.client_id,
        "enable_idempotence": True,
        "acks": "all",
        "linger_ms": 0,
        # Many concurrent senders: small batches make aiokafka's accumulator spin on drain.
        "max_batch_size": 256 * 1024,
        "request_timeout_ms": 30_000,
        # The default partitioning, hashed faster (kafka/partitioning.py).
        "partitioner": KeyPartitioner(),
        **security_kwargs(kafka),
    }
    kwargs.update(overrides)
    return AIOKafkaProducer(**kwargs)


#: One record to produce: topic, key, value, headers.
Outgoing = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]


async def produce_and_await(
    kafka: KafkaSettings, records: Iterable[Outgoing] | AsyncIterable[Outgoing]
) -> int:
    """Send every record, then wait for every acknowledgement (``acks=all``, idempotent).

    ``records`` may be produced while they are sent (an async iterable: a scan). Returns how
    many were acknowledged, which is all of them; raises the first KafkaError, after which
    none of the records should be assumed delivered or lost: the caller reports the failure.
    The engine does not use this: it produces per partition, with commits (engine/).
    """
    producer = make_producer(kafka)
    futures = []
    try:
        await producer.start()
        if isinstance(records, AsyncIterable):
            async for topic, key, value, headers in records:
                futures.append(await producer.send(topic, value, key=key, headers=headers or None))
        else:
            for topic, key, value, headers in records:
                futures.append(await producer.send(topic, value, key=key, headers=headers or None))
        for fut in futures:
            await fut
    finally:
        await producer.stop()
    return len(futures)


def make_consumer(kafka: KafkaSettings, group_id: str | None, **overrides: Any) -> AIOKafkaConsumer:
    """Manual commits only: offsets are committed by the pipeline's watermark, never auto.

    ``group_id=None`` makes a group-less reader that assigns its partitions itself.
    """
    kwargs: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "client_id": kafka.client_id,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        **security_kwargs(kafka),
    }
    kwargs.update(overrides)
    return AIOKafkaConsumer(**kwargs)


async def topic_partitions(kafka: KafkaSettings, topic: str) -> list[int]:
    """The topic's partition numbers, sorted, from the broker (not aiokafka's metadata cache)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers, **security_kwargs(kafka))
    try:
        await admin.start()
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    for entry in described:
        if entry.get("topic") == topic and entry.get("error_code", 0) == 0:
            found = sorted(int(p["partition"]) for p in entry.get("partitions", []))
            if found:
                return found
    raise EscalatorError(f"topic {topic!r} does not exist")


async def read_to_end(
    kafka: KafkaSettings, topic: str, *, since_ms: int | None = None, **overrides: Any
) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic`` (from ``since_ms`` if given) up to the end offsets seen at the
    start, read group-less: nothing is committed and no group is joined. Tombstones (value
    None) are yielded like any record (the lane's state topic reads them to close batches)."""
    consumer = make_consumer(kafka, None, **overrides)
    try:
        await consumer.start()
        tps = [TopicPartition(topic, p) for p in await topic_partitions(kafka, topic)]
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)
        if since_ms is None:
            await consumer.seek_to_beginning(*tps)
        else:
            found = await consumer.offsets_for_times({tp: since_ms for tp in tps})
            for tp in tps:
                hit = found.get(tp)
                consumer.seek(tp, hit.offset if hit is not None else end[tp])
        remaining = {tp for tp in tps if await consumer.position(tp) < end[tp]}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in batch.items():
                for record in records:
                    if record.offset < end[tp]:
                        yield record
            # Positions, not the last offset read: transaction markers and aborted records
            # occupy offsets that are never returned.
            for tp in list(remaining):
                if await consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
    finally:
        await stop_consumer(consumer)


async def create_topics(
    kafka: KafkaSettings,
    names: list[str],
    partitions: int,
    replication: int,
    configs: dict[str, dict[str, str]] | None = None,
) -> list[str]:
    """Create the topics that do not exist yet (with ``configs[name]``, if given); return the
    names created. Idempotent: an existing topic's configs are left as they are."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers, **security_kwargs(kafka))
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        if missing:
            response = await admin.create_topics(
                [
                    NewTopic(n, partitions, replication, topic_configs=(configs or {}).get(n, {}))
                    for n in missing
                ],
                timeout_ms=30_000,
            )
            for entry in response.topic_errors:
                topic, code = entry[0], entry[1]
                # A concurrent creator may win the race: "already exists" is the goal reached.
                if code not in (0, TopicAlreadyExistsError.errno):
                    message = entry[2] if len(entry) > 2 else ""
                    raise EscalatorError(
                        f"creating topic {topic!r} failed: {for_code(code).__name__} {message}"
                    )
        for _ in range(100):
            if set(names) <= set(await admin.list_topics()):
                break
            await asyncio.sleep(0.1)
        return missing
    finally:
        await admin.close()


async def missing_topics(kafka: KafkaSettings, names: list[str]) -> list[str]:
    """Those of ``names`` the cluster does not have (one metadata request, no group)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers, **security_kwargs(kafka))
    try:
        await admin.start()
        existing = set(await admin.list_topics())
    finally:
        await admin.close()
    return [n for n in names if n not in existing]


async def stop_consumer(consumer: AIOKafkaConsumer, timeout_s: float | None = None) -> None:
    """``consumer.stop()`` (leave the group, close the connections), safe in a broker outage.

    aiokafka 0.14's fetcher cancels its fetch tasks on close and awaits them without catching
    their ``CancelledError``; a fetch task sleeping in its retry back-off (which happens only
    while the broker is unreachable) re-raises it out of ``stop()``, which then leaves its
    network client open. That cancellation is told apart from one of the caller (which is
    re-raised) and the close is finished here. ``timeout_s`` bounds the whole close (leaving
    the group cannot succeed without a broker); past it the connections are closed anyway.
    """
    current = asyncio.current_task()
    try:
        # wait_for, not asyncio.timeout: stop() runs in a task of its own, so a cancellation
        # it raises itself is told apart from ours by ``cancelling()`` (a one-shot close: a
        # cancellation of ours lost as stop() ends, Python 3.11's wait_for race, only lets the
        # close finish).
        await asyncio.wait_for(consumer.stop(), timeout_s)
    except asyncio.CancelledError:
        if current is not None and current.cancelling():
            raise
        await _finish_close(consumer)
    except TimeoutError:
        await _finish_close(consumer)


async def _finish_close(consumer: AIOKafkaConsumer) -> None:
    """What ``stop()`` left undone: the fetch tasks and the network client (private parts of
    aiokafka 0.14, read defensively: there is no public way)."""
    fetcher = getattr(consumer, "_fetcher", None)
    for task in list(getattr(fetcher, "_pending_tasks", ())):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, KafkaError):
            await task
    client = getattr(consumer, "_client", None)
    if client is not None:
        with contextlib.suppress(KafkaError, OSError):
            async with asyncio.timeout(5):
                await client.close()
