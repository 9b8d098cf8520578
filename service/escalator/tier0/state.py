"""Tier 0's withdrawals, remembered across restarts: a compacted topic keyed by artefact version.

When the live test withdraws tier 0 (tier0/watch.py), the cheap tier records a
:class:`Withdrawal` on the tier-0 state topic (ESCALATOR_TIER0_STATE_TOPIC, compacted, key the
artefact's version, ``acks=all`` through the process's producer). At start-up, before any tier
consumes, a cheap tier with tier 0 on reads that topic without a consumer group; if the
artefact it loaded is recorded as withdrawn, tier 0 starts withdrawn (``escalator_tier0_active``
0, every request to the models) and stays so until ESCALATOR_TIER0_FILE names another artefact.
A newly certified artefact has a new version (the version is derived from the manifest's
content, certification window included, and the ledger lets a window certify once), so it is
never covered by an older withdrawal.

Why a compacted topic rather than a file beside the artefact or the decisions log: the
artefact is usually mounted read-only and each pod has its own disk, so a file would neither
be writable nor seen by the next pod; the decisions log is per request, has a schema its
readers rely on, and would have to be read in full at every start. The compacted topic is how
the service already keeps state (the batch lane's, lane/state_topic.py): it outlives pods,
every cheap pod reads every other's withdrawals at start-up, and compaction keeps one record
per artefact version.

A record that cannot be written (the broker down for longer than the retries) is logged as an
ERROR (``tier0_withdrawal_not_recorded``): that process stays withdrawn, but a restart would
answer with the artefact again (docs/OPERATIONS.md, "Tier 0 under watch").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Protocol, Self

import orjson
from aiokafka.errors import KafkaError

from escalator.observability.logs import log

if TYPE_CHECKING:
    from escalator.config import KafkaSettings
    from escalator.kafka.clients import ProducerHandle

logger = logging.getLogger("escalator.tier0")

#: Tries to record a withdrawal, and the pause before each retry (s), doubling.
RECORD_TRIES = 5
RECORD_PAUSE_S = 0.5
#: How long closing waits for a withdrawal still being recorded (s).
CLOSE_WAIT_S = 10.0


@dataclass(frozen=True, slots=True)
class Withdrawal:
    """One artefact version withdrawn by its live test: the state topic's value."""

    version: str
    at_ms: int
    target: float
    evalue: float | None = None
    observations: int | None = None

    def value(self) -> bytes:
        return orjson.dumps(asdict(self))

    @property
    def key(self) -> bytes:
        return self.version.encode()

    @classmethod
    def from_value(cls, raw: bytes) -> Withdrawal | None:
        """The record's withdrawal, or None for one this version cannot read."""
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(doc, dict):
            return None
        version, at_ms, target = doc.get("version"), doc.get("at_ms"), doc.get("target")
        evalue, observations = doc.get("evalue"), doc.get("observations")
        if (
            not isinstance(version, str)
            or not isinstance(at_ms, int)
            or not isinstance(target, int | float)
            or not (evalue is None or isinstance(evalue, int | float))
            or not (observations is None or isinstance(observations, int))
        ):
            return None
        return cls(
            version,
            at_ms,
            float(target),
            None if evalue is None else float(evalue),
            observations,
        )


def latest(records: list[tuple[bytes, bytes | None]], version: str) -> Withdrawal | None:
    """The withdrawal of ``version`` that compaction would keep: its key's last record (a
    tombstone, a null value, clears it). A value under the key that this code cannot read (a
    later format) still withdraws it, with what is unknown left out: tier 0 fails closed."""
    found: Withdrawal | None = None
    key = version.encode()
    for k, v in records:
        if k != key:
            continue
        read = None if v is None else Withdrawal.from_value(v)
        if v is not None and (read is None or read.version != version):
            read = Withdrawal(version, 0, float("nan"))
        found = read
    return found


class WithdrawalLog(Protocol):
    """Where withdrawals are kept (:class:`KafkaWithdrawals`; a fake in the unit tests)."""

    async def record(self, withdrawal: Withdrawal) -> None: ...
    async def withdrawn(self, version: str) -> Withdrawal | None: ...


class Withdrawable(Protocol):
    """What :class:`Remembered` needs of the watched artefact (``watch.Watched``)."""

    @property
    def version(self) -> str: ...

    on_withdraw: Callable[[Withdrawal], None] | None

    def withdraw(self, remembered: Withdrawal | None = None) -> None: ...


class Remembered:
    """Runs beside the cheap tier (built by ``running.py``, entered by app.py): on entry,
    before any tier consumes, starts tier 0 withdrawn if its version is recorded so;
    afterwards, records each withdrawal its live test makes, and on exit waits up to
    :data:`CLOSE_WAIT_S` for that record."""

    def __init__(
        self,
        tier0: Withdrawable,
        withdrawals: WithdrawalLog,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.tier0 = tier0
        self.withdrawals = withdrawals
        self._sleep = sleep
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Self:
        found = await self.withdrawals.withdrawn(self.tier0.version)
        if found is not None:
            self.tier0.withdraw(remembered=found)
        self.tier0.on_withdraw = self._record
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.tier0.on_withdraw = None
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_WAIT_S):
                    await asyncio.gather(*self._tasks)

    def _record(self, withdrawal: Withdrawal) -> None:
        task = asyncio.get_running_loop().create_task(self._write(withdrawal))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, withdrawal: Withdrawal) -> None:
        pause = RECORD_PAUSE_S
        for attempt in range(1, RECORD_TRIES + 1):
            try:
                await self.withdrawals.record(withdrawal)
            except (KafkaError, OSError) as exc:  # the broker's trouble: retried, then logged
                if attempt == RECORD_TRIES:
                    log(
                        logger,
                        "tier0_withdrawal_not_recorded",
                        logging.ERROR,
                        version=withdrawal.version,
                        error=type(exc).__name__,
                        tries=attempt,
                    )
                    return
                await self._sleep(pause)
                pause *= 2
            else:
                log(logger, "tier0_withdrawal_recorded", version=withdrawal.version)
                return


class KafkaWithdrawals:
    """:class:`WithdrawalLog` on the compacted tier-0 state topic."""

    def __init__(self, kafka: KafkaSettings, topic: str, producer: ProducerHandle) -> None:
        self._kafka = kafka
        self.topic = topic
        self._producer = producer

    async def record(self, withdrawal: Withdrawal) -> None:
        await self._producer.get().send_and_wait(self.topic, withdrawal.value(), key=withdrawal.key)

    async def withdrawn(self, version: str) -> Withdrawal | None:
        from escalator.kafka.clients import read_to_end

        records = [
            (r.key or b"", r.value)
            async for r in read_to_end(self._kafka, self.topic, isolation_level="read_committed")
        ]
        return latest(records, version)
