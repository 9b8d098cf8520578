"""Replacing a producer whose sender died (aiokafka issue 1017)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.errors import KafkaTimeoutError, OutOfOrderSequenceNumber

from escalator.kafka.clients import ProducerHandle


class _Task:
    def __init__(self) -> None:
        self.dead = False

    def done(self) -> bool:
        return self.dead


class FakeProducer:
    """Stands in for AIOKafkaProducer: only what ProducerHandle touches."""

    def __init__(self) -> None:
        self._sender = type("S", (), {})()
        self._sender.sender_task = _Task()
        self.started = self.stopped = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def flush(self) -> None:
        return None


def test_handle_replaces_producer_whose_sender_died() -> None:
    made: list[FakeProducer] = []
    reasons: list[str] = []

    def factory() -> Any:
        made.append(FakeProducer())
        return made[-1]

    async def scenario() -> None:
        handle = ProducerHandle(factory, on_recreate=reasons.append)
        await handle.start()
        # A timeout on a healthy producer is not a reason to replace it.
        assert not await handle.repair(KafkaTimeoutError())
        assert handle.get() is made[0]
        made[0]._sender.sender_task.dead = True  # what OutOfOrderSequenceNumber does
        assert not handle.healthy()
        # Many failing sends at once: one replacement.
        results = await asyncio.gather(*(handle.repair(KafkaTimeoutError()) for _ in range(5)))
        assert all(results)
        assert len(made) == 2 and made[0].stopped and made[1].started
        assert handle.get() is made[1] and handle.healthy()
        # A fatal error replaces even a producer whose sender still runs.
        assert await handle.repair(OutOfOrderSequenceNumber())
        assert len(made) == 3
        # A send that was waiting on a replaced producer fails late: the healthy successor stays.
        assert await handle.repair(OutOfOrderSequenceNumber(), failed=made[1])  # type: ignore[arg-type]
        assert len(made) == 3 and handle.get() is made[2]

    asyncio.run(scenario())
    assert reasons == ["KafkaTimeoutError", "OutOfOrderSequenceNumber"]
