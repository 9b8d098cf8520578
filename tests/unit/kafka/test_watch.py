"""BrokerWatch: readiness turns on a broker silent for ESCALATOR_KAFKA_UNREACHABLE_S, with the
reason; its log is one line when the broker goes, one per summary interval while it stays
away, one when it is back. Driven by a fake probe and a fake clock."""

from __future__ import annotations

import logging

import pytest

from escalator.config import KafkaSettings
from escalator.kafka.clients import KafkaUnreachable
from escalator.kafka.watch import BrokerWatch


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Probe:
    """Answers like check_connection: fine, or KafkaUnreachable."""

    def __init__(self) -> None:
        self.up = True
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if not self.up:
            raise KafkaUnreachable("nothing listens at 127.0.0.1:9092 (connection refused)")
        return "127.0.0.1:9092"


def _watch(clock: Clock, probe: Probe, unreachable_s: float = 30.0) -> BrokerWatch:
    kafka = KafkaSettings(bootstrap_servers="127.0.0.1:9092", unreachable_s=unreachable_s)
    return BrokerWatch(kafka, probe=probe, summary_interval_s=60.0, clock=clock)


def _events(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "escalator.kafka"]


async def test_not_ready_only_after_the_bound_and_with_the_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Ready while the broker answers and during the first unreachable_s of silence; then
    not ready, saying how long and why; ready again at the first answer."""
    caplog.set_level(logging.INFO)
    clock, probe = Clock(), Probe()
    watch = _watch(clock, probe)
    assert watch.interval_s == 10.0  # three probes within the bound
    assert await watch.probe_once() and watch.outage() is None
    probe.up = False
    for _ in range(3):  # 29 s of silence: still within the bound
        clock.now += 9.5
        assert not await watch.probe_once()
        assert watch.outage() is None and watch.down
    clock.now += 1.5
    await watch.probe_once()
    reason = watch.outage()
    assert reason is not None
    assert reason.startswith("no Kafka broker has answered for 30 s (4 probes failed; last:")
    assert "connection refused" in reason
    probe.up = True
    clock.now += 10
    assert await watch.probe_once()
    assert watch.outage() is None and not watch.down


async def test_one_line_when_it_goes_one_per_interval_one_when_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Ten minutes of failed probes every 10 s (60 failures): 1 line when the broker goes,
    one per minute while it is away, one when it answers again."""
    caplog.set_level(logging.INFO)
    clock, probe = Clock(), Probe()
    watch = _watch(clock, probe)
    probe.up = False
    for _ in range(60):
        clock.now += 10
        await watch.probe_once()
    probe.up = True
    clock.now += 10
    await watch.probe_once()
    events = _events(caplog)
    assert events[0] == "kafka_unreachable"
    assert events[-1] == "kafka_reachable_again"
    assert events[1:-1] == ["kafka_still_unreachable"] * 9
    assert probe.calls == 61


def test_the_probe_interval_follows_the_bound() -> None:
    """At most 10 s between probes, and three within a short bound."""
    clock, probe = Clock(), Probe()
    assert _watch(clock, probe, unreachable_s=6).interval_s == 2.0
    assert _watch(clock, probe, unreachable_s=600).interval_s == 10.0
