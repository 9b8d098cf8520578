"""Tier 0's withdrawals remembered (tier0/state.py): recorded when the live test withdraws it,
read before the tiers consume, so a restart with the same artefact stays withdrawn and a new
artefact (a new version) answers."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from aiokafka.errors import KafkaConnectionError

from escalator.config import load_settings
from escalator.observability.metrics import Metrics
from escalator.tier0.state import RECORD_TRIES, Remembered, Withdrawal, latest
from escalator.tier0.watch import Watched, watched
from escalator.tiers.table import tier_table, topics_needed
from tests.unit.tier0.test_watch import Fixed

W = Withdrawal("t0-abcdef0123", 1_700_000_000_000, 0.95, 123.4, 812)


class FakeWithdrawals:
    """A compacted topic in memory: (key, value) records in order; ``fail`` writes refused."""

    def __init__(self, fail: int = 0) -> None:
        self.records: list[tuple[bytes, bytes | None]] = []
        self.fail = fail
        self.tries = 0

    async def record(self, withdrawal: Withdrawal) -> None:
        self.tries += 1
        if self.fail:
            self.fail -= 1
            raise KafkaConnectionError("broker down")
        self.records.append((withdrawal.key, withdrawal.value()))

    async def withdrawn(self, version: str) -> Withdrawal | None:
        return latest(self.records, version)


def test_a_withdrawal_round_trips_and_a_record_it_cannot_read_is_none() -> None:
    assert Withdrawal.from_value(W.value()) == W
    assert Withdrawal.from_value(replace(W, evalue=None, observations=None).value()) == replace(
        W, evalue=None, observations=None
    )
    for raw in (b"not json", b"[1]", b'{"version": 3, "at_ms": 1, "target": 0.9}', b"{}"):
        assert Withdrawal.from_value(raw) is None


def test_latest_is_what_compaction_keeps_for_the_version() -> None:
    """The key's last record wins; a tombstone clears it; other versions do not count."""
    other = replace(W, version="t0-ffffffffff")
    assert latest([], W.version) is None
    assert latest([(other.key, other.value())], W.version) is None
    assert latest([(W.key, W.value()), (other.key, other.value())], W.version) == W
    assert latest([(W.key, W.value()), (W.key, None)], W.version) is None
    later = replace(W, at_ms=W.at_ms + 1)
    assert latest([(W.key, W.value()), (W.key, later.value())], W.version) == later
    # A value under the key that cannot be read (or names another version) still withdraws.
    for raw in (b"a later format", other.value()):
        unread = latest([(W.key, raw)], W.version)
        assert unread is not None and unread.version == W.version and unread.at_ms == 0


def _tier0(metrics: Metrics, version: str = W.version) -> Watched:
    return watched(Fixed(version=version), sample_rate=1.0, alpha=0.01, metrics=metrics)


def _reject(tier0: Watched) -> int:
    """Feed differing units until the live test withdraws tier 0; how many it took."""
    for n in range(1, 1000):
        tier0.observe(1.0, 1.0)
        if not tier0.active:
            return n
    raise AssertionError("never withdrawn")


async def test_a_withdrawal_is_recorded_and_a_restart_with_the_same_artefact_stays_off() -> None:
    """The live test withdraws tier 0: the withdrawal is recorded under its version (with the
    e-value and units). A new process with the same artefact starts withdrawn (metric 0, the
    withdrawal not counted again); one with a new artefact version answers."""
    log = FakeWithdrawals()
    metrics = Metrics()
    first = _tier0(metrics)
    async with Remembered(first, log):
        assert first.active
        units = _reject(first)
    assert first.on_withdraw is None  # the exit unhooked it
    (recorded,) = [Withdrawal.from_value(v) for _, v in log.records if v is not None]
    assert recorded is not None and recorded.version == W.version
    assert recorded.target == 0.95 and recorded.observations == units
    assert recorded.evalue is not None and recorded.evalue >= 100  # 1/alpha: rejected

    metrics = Metrics()
    again = _tier0(metrics)
    async with Remembered(again, log):
        assert not again.active
    text = metrics.exposition().decode()
    assert f'escalator_tier0_active{{version="{W.version}"}} 0.0' in text
    assert "escalator_tier0_withdrawals_total{" not in text
    assert len(log.records) == 1  # a remembered withdrawal is not recorded again

    metrics = Metrics()
    fresh = _tier0(metrics, version="t0-0123456789")
    async with Remembered(fresh, log):
        assert fresh.active
    assert 'escalator_tier0_active{version="t0-0123456789"} 1.0' in metrics.exposition().decode()


async def test_a_refused_record_is_retried_then_logged_and_the_process_stays_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A write the broker refuses is tried again (RECORD_TRIES in all); past that an ERROR
    line says the withdrawal was not recorded, and this process stays withdrawn."""
    pauses: list[float] = []

    async def sleep(s: float) -> None:
        pauses.append(s)

    ok_later = FakeWithdrawals(fail=2)
    tier0 = _tier0(Metrics())
    async with Remembered(tier0, ok_later, sleep=sleep):
        _reject(tier0)
    assert ok_later.tries == 3 and len(ok_later.records) == 1 and pauses == [0.5, 1.0]

    never = FakeWithdrawals(fail=RECORD_TRIES)
    tier0 = _tier0(Metrics())
    async with Remembered(tier0, never, sleep=sleep):
        _reject(tier0)
    assert never.tries == RECORD_TRIES and never.records == []
    assert not tier0.active
    assert "tier0_withdrawal_not_recorded" in caplog.text


def test_the_state_topic_is_needed_only_by_a_cheap_tier_with_tier0_on(tmp_path: Path) -> None:
    base = {"KAFKA_BOOTSTRAP_SERVERS": "k:9092", "ANTHROPIC_API_KEY": "x"}
    artefact = tmp_path / "t.json"
    artefact.write_text("{}")
    off = load_settings(base)
    on = load_settings({**base, "ESCALATOR_TIER0_FILE": str(artefact)})
    for settings, tiers, needed in (
        (off, ["cheap"], False),
        (on, ["cheap"], True),
        (on, ["strong"], False),
        (on, ["cheap", "strong"], True),
    ):
        rows = [tier_table(settings)[t] for t in tiers]
        assert (settings.topics.tier0_state in topics_needed(settings, rows)) is needed
