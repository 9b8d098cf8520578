"""Shared parts of the reliability scenarios: scale, service processes, the ledger, the feeder,
the report.

Every scenario ends with a :class:`Ledger`: for every request id sent, how many results it got
(0 = lost, >1 = duplicated) and which went to the dead-letter topic with what reason. A
:class:`LedgerReader` fills one live; a :class:`Feeder` reads it to keep a backlog of
outstanding requests while a scenario's faults run, so the faults always meet work, whatever
the machine's speed, and the scenario then drains what was produced. Each scenario appends
one row to the report (``ESCALATOR_RELIABILITY_REPORT``, JSON lines), which
``docs/RELIABILITY.md`` is written from.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from escalator.contract.messages import H_PREFIX
from tests.integration.test_pipeline import TEXTS

#: "ci" (default, reduced) or "full" (`make reliability`).
SCALE = os.environ.get("ESCALATOR_RELIABILITY_SCALE", "ci")
FULL = SCALE == "full"


def scaled(full: int, ci: int) -> int:
    return full if FULL else ci


def request_values(n: int, prefix: str, start: int = 0) -> list[bytes]:
    """Requests ``<prefix>-<start>`` to ``<prefix>-<start + n - 1>``."""
    return [
        orjson.dumps({"id": f"{prefix}-{i}", "text": TEXTS[i % len(TEXTS)]})
        for i in range(start, start + n)
    ]


class ServiceProcess:
    """``escalator run --tier T`` in its own process, so it can be SIGKILLed."""

    def __init__(self, env: dict[str, str], tier: str, log_path: Path) -> None:
        self.env = {**os.environ, **env}
        self.tier = tier
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._log_read = 0  # bytes of the log counted by assignments() so far
        self._assignments = 0

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "escalator", "run", "--tier", self.tier],
                env=self.env,
                stdout=log,
                stderr=log,
            )
        self.starts += 1

    def assignments(self) -> int:
        """How many partition assignments this process (all its runs) has logged.

        Reads only what was appended since the last call (whole lines): the log grows by a
        line per decision, and scenarios ask this several times a second."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_read)
                new = log.read()
        except FileNotFoundError:
            return 0
        whole = new.rfind(b"\n") + 1
        self._assignments += new[:whole].count(b'"event":"partitions_assigned"')
        self._log_read += whole
        return self._assignments

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self, timeout_s: float = 40) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@dataclass
class Ledger:
    """What happened to every id: results per id, dead letters by reason.

    ``expected`` may grow while the ledger is being filled (:meth:`expect`); ``outstanding``
    is the number of expected ids with no outcome yet, kept up to date as records arrive.
    """

    expected: set[str]
    results: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    dead: Counter[str] = field(default_factory=Counter)
    dead_ids: set[str] = field(default_factory=set)
    # Outputs written by the cheap tier (results it decided, escalations), per id: where the
    # duplicates of a cheap-tier crash appear first, stamped when that tier wrote them.
    cheap_outputs: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    records: int = 0
    _pending: set[str] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        self.expected = set(self.expected)
        self._pending = {i for i in self.expected if not self._accounted(i)}

    def _accounted(self, request_id: str) -> bool:
        return bool(self.results.get(request_id)) or request_id in self.dead_ids

    def expect(self, ids: Iterable[str]) -> None:
        """Add ids that were (or are about to be) produced."""
        for i in ids:
            self.expected.add(i)
            if not self._accounted(i):
                self._pending.add(i)

    @property
    def outstanding(self) -> int:
        """Expected ids with neither a result nor a dead letter yet."""
        return len(self._pending)

    def add_result(self, value: bytes, timestamp_ms: int) -> None:
        self.records += 1
        result = orjson.loads(value)
        self.results[result["id"]].append(timestamp_ms)
        self._pending.discard(result["id"])
        if result.get("tier") == "cheap":
            self.cheap_outputs[result["id"]].append(timestamp_ms)

    def add_escalation(self, value: bytes, timestamp_ms: int) -> None:
        escalation = orjson.loads(value)
        if not escalation.get("shadow"):
            self.cheap_outputs[escalation["request"]["id"]].append(timestamp_ms)

    def add_dead_letter(self, value: bytes, headers: Any) -> None:
        reason = dict(headers or ()).get(H_PREFIX + "reason", b"?").decode()
        self.dead[reason] += 1
        try:
            request_id = str(orjson.loads(value)["id"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return
        self.dead_ids.add(request_id)
        self._pending.discard(request_id)

    @property
    def lost(self) -> list[str]:
        return sorted(i for i in self.expected if not self._accounted(i))

    @property
    def duplicated(self) -> int:
        """Extra results beyond one per id."""
        return sum(len(v) - 1 for v in self.results.values() if len(v) > 1)

    def complete(self) -> bool:
        return not self._pending

    def cheap_duplicates_per_interval(self, marks_ms: list[int]) -> list[int]:
        """Extra cheap-tier outputs whose later copy was written after mark k (a kill) and
        before mark k+1: the work each kill made the group redo."""
        counts = [0] * len(marks_ms)
        for stamps in self.cheap_outputs.values():
            for stamp in sorted(stamps)[1:]:
                k = max((j for j, m in enumerate(marks_ms) if m <= stamp), default=None)
                if k is not None:
                    counts[k] += 1
        return counts


class LedgerReader:
    """Reads the results and dead-letter topics (and the escalations, if given) from the
    start into :attr:`ledger`, live, until stopped. Scenarios look at the ledger while it
    fills (how much produced work has no outcome yet) and wait for it to be complete."""

    def __init__(
        self,
        bootstrap: str,
        results_topic: str,
        dead_letter_topic: str,
        expected: Iterable[str] = (),
        *,
        escalations_topic: str | None = None,
        isolation_level: str = "read_uncommitted",
        **client: Any,
    ) -> None:
        self.ledger = Ledger(expected=set(expected))
        self._results_topic = results_topic
        self._escalations_topic = escalations_topic
        topics = [results_topic, dead_letter_topic]
        if escalations_topic:
            topics.append(escalations_topic)
        self._consumer = AIOKafkaConsumer(
            *topics,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            isolation_level=isolation_level,
            **client,
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=200, max_records=5000)
            for records in batch.values():
                for r in records:
                    if r.topic == self._results_topic:
                        self.ledger.add_result(r.value, r.timestamp)
                    elif r.topic == self._escalations_topic:
                        self.ledger.add_escalation(r.value, r.timestamp)
                    else:
                        self.ledger.add_dead_letter(r.value, r.headers)

    def check(self) -> None:
        """Raise what ended the reading task, if it ended."""
        if self._task is not None and self._task.done():
            self._task.result()
            raise RuntimeError("the ledger reader stopped")

    async def wait_complete(self, timeout_s: float, linger_s: float = 3.0) -> Ledger:
        """Wait until every expected id is accounted for, then ``linger_s`` more (to catch
        late duplicates), or until ``timeout_s`` passes; the ledger as it is then."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not self.ledger.complete() and loop.time() < deadline:
            self.check()
            await asyncio.sleep(0.1)
        if self.ledger.complete():
            await asyncio.sleep(max(0.0, min(linger_s, deadline - loop.time())))
        self.check()
        return self.ledger

    async def stop(self) -> None:
        task, self._task = self._task, None
        try:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        finally:
            await self._consumer.stop()


async def read_ledger(
    bootstrap: str,
    results_topic: str,
    dead_letter_topic: str,
    expected: set[str],
    *,
    timeout_s: float,
    escalations_topic: str | None = None,
    isolation_level: str = "read_uncommitted",
    linger_s: float = 3.0,
    **client: Any,
) -> Ledger:
    """Read results and dead letters from the start until every id is accounted for (then
    linger, to catch late duplicates) or the timeout passes."""
    reader = LedgerReader(
        bootstrap,
        results_topic,
        dead_letter_topic,
        expected,
        escalations_topic=escalations_topic,
        isolation_level=isolation_level,
        **client,
    )
    await reader.start()
    try:
        return await reader.wait_complete(timeout_s, linger_s)
    finally:
        await reader.stop()


class Feeder:
    """Produces requests until stopped, keeping ``floor`` of them outstanding.

    Whenever fewer than ``floor`` produced ids have an outcome missing in ``reader``'s ledger,
    the next ``chunk`` requests (ids ``<prefix>-<n>``, numbered on) are added to the ledger and
    produced, each acknowledged. So the service always has work, however fast it runs, and a
    scenario can put its faults on its own schedule (kills, time), then :meth:`stop` the feeder
    and wait for the ledger to be complete.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        reader: LedgerReader,
        prefix: str,
        *,
        floor: int,
        chunk: int = 200,
        **client: Any,
    ) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", **client
        )
        self._topic = topic
        self._ledger = reader.ledger
        self._prefix = prefix
        self.floor = floor
        self._chunk = chunk
        self.produced = 0
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._producer.start()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._stopping.is_set():
            if self._ledger.outstanding >= self.floor:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 0.05)
                continue
            first = self.produced
            values = request_values(self._chunk, self._prefix, start=first)
            self._ledger.expect(f"{self._prefix}-{i}" for i in range(first, first + len(values)))
            futures = [await self._producer.send(self._topic, v) for v in values]
            await asyncio.gather(*futures)
            self.produced += len(values)

    def check(self) -> None:
        """Raise what ended the producing task, if it ended before :meth:`stop`."""
        if self._task is not None and self._task.done() and not self._stopping.is_set():
            self._task.result()
            raise RuntimeError("the feeder stopped")

    async def wait_produced(self, n: int) -> None:
        """Return once at least ``n`` requests were produced."""
        while self.produced < n:
            self.check()
            await asyncio.sleep(0.1)

    async def stop(self) -> int:
        """Stop after the chunk being produced (all of it acknowledged); the count produced."""
        self._stopping.set()
        task, self._task = self._task, None
        try:
            if task is not None:
                await task
        finally:
            await self._producer.stop()
        return self.produced


def report(scenario: str, **row: Any) -> None:
    """Append one row to the reliability report and print it (pytest -s shows it)."""
    line = {"scenario": scenario, "scale": SCALE, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ")}
    line.update(row)
    path = os.environ.get("ESCALATOR_RELIABILITY_REPORT")
    if path:
        with open(path, "ab") as f:
            f.write(orjson.dumps(line, option=orjson.OPT_NON_STR_KEYS) + b"\n")
    print("RELIABILITY " + orjson.dumps(line, option=orjson.OPT_NON_STR_KEYS).decode())


def ledger_row(ledger: Ledger) -> dict[str, Any]:
    return {
        "requests": len(ledger.expected),
        "lost": len(ledger.lost),
        "duplicated": ledger.duplicated,
        "dead_lettered": dict(ledger.dead),
    }


__all__ = [
    "Feeder",
    "Ledger",
    "LedgerReader",
    "ServiceProcess",
    "asdict",
    "ledger_row",
    "read_ledger",
    "report",
]


def metric_sum(service: Any, name: str, **labels: str) -> float:
    """Sum of every sample called ``name`` whose labels include ``labels`` (in-process)."""
    total = 0.0
    for family in service.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


@dataclass
class Sampler:
    """Samples a few metric sums every ``every_s`` while a scenario runs."""

    service: Any
    series: dict[str, tuple[str, dict[str, str]]]
    every_s: float = 0.5
    rows: list[dict[str, float]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        start = time.monotonic()
        while True:
            row = {"t": round(time.monotonic() - start, 2)}
            for key, (name, labels) in self.series.items():
                row[key] = metric_sum(self.service, name, **labels)
            self.rows.append(row)
            await asyncio.sleep(self.every_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def column(self, key: str) -> list[float]:
        return [row[key] for row in self.rows]


async def paced_produce(
    bootstrap: str, topic: str, values: list[bytes], rate_per_s: float, **client: Any
) -> None:
    """Produce ``values`` at about ``rate_per_s``, waiting for every acknowledgement."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", **client
    )
    await producer.start()
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        futures = []
        for i, value in enumerate(values):
            delay = start + i / rate_per_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            futures.append(await producer.send(topic, value))
        for fut in futures:
            await fut
    finally:
        await producer.stop()


async def set_sim(sim_url: str, **config: Any) -> None:
    """Change the simulator's faults or latency while it runs."""
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{sim_url}/_sim/config", json=config) as response:
            response.raise_for_status()


async def sim_stats(sim_url: str) -> dict[str, int]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{sim_url}/_sim/config") as response:
            body: dict[str, Any] = await response.json()
            stats: dict[str, int] = body["stats"]
            return stats
