"""B1p (issue 23): where a cheap-tier record's CPU goes, and what that bounds.

B1 and B1q ask the cheap tier to run at about the bare aiokafka pipe's speed. This bench says
which part of the tier's work stands in the way, so that the choice between a faster Kafka
client and less work per record is made on figures. Two set-ups, each as in B1 (30,000
requests, 6 partitions, the instant in-process model): the model-bound path (B1) and tier 0
answering every record (B1z). For each, the tier runs in a child process (``child``), and
py-spy samples its event-loop thread from its first request to its last (``py-spy record
--pid``, 250 Hz, stopped with SIGINT when the child has counted its last record; py-spy pauses
the process for each sample, which slows it by about a tenth: ``--nonblocking`` lost more than
half of the samples here, and not evenly, which moved the shares by up to ten points. py-spy
comes from ``make profile``'s ``.bench/pyspy``, never a runtime dependency, and attaching
needs ptrace: root, or ``CAP_SYS_PTRACE`` in a container).

Each sample goes to the part its innermost recognised frame belongs to (``PARTS``); frames no
rule names (the standard library's: ``asyncio``, a namedtuple's ``__new__``; a helper such as
``iso_from``) pass the sample to their caller; a stack no rule names goes to its innermost
Escalator (or bench) frame (``FALLBACK``), else to the event loop itself. Sockets and the
selector count as the Kafka client's (the tier has no other socket busy), and this bench's
own polling of the metrics counts as neither side.

From the shares and the loop thread's CPU over the same window (``time.thread_time``) it
prints the tier's CPU a record outside the Kafka client, and the **ceiling** that puts on B1
with a Kafka client that cost nothing: the loop thread doing only that work, fully busy, makes
``1e6 / outside_us`` msg/s, over the bare pipe's msg/s measured in this run. Generous to the
client: a C client would still cost something. An estimate from samples, labelled as one.

    python -m tests.benchmarks.run b1p          # `make profile` installs py-spy and runs it
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import orjson

PYSPY = os.environ.get("ESCALATOR_PYSPY", ".bench/pyspy/bin/py-spy")

KAFKA = "Kafka client (aiokafka, record batches, sockets, the selector)"
LOOP = "the event loop itself (no recognised frame)"
#: The parts of a record's work, each named by substrings of py-spy's frame names
#: (``Class.function (path/file.py:line)``). The innermost frame a rule names decides.
PARTS: list[tuple[str, tuple[str, ...]]] = [
    (
        KAFKA,
        (
            "aiokafka/",
            "kafka/clients.py",
            "kafka/partitioning.py",
            "selectors.py",
            "selector_events.py",
            "asyncio/streams.py",
            "sslproto.py",
        ),
    ),
    (
        "model call (caller, admission, breaker, the instant model)",
        ("model/caller.py", "model/admission.py", "model/breaker.py", "InstantModel"),
    ),
    ("tier 0's prediction", ("tier0/",)),
    ("decision record", ("_Base.decision ", "Decision.answer_value")),
    ("result record", ("_Base.result ", "result_value")),
    ("decision log line", ("log_decision", "EventLog")),
    ("request parsing", ("parse_request", "request_from_json")),
    ("metrics", ("observability/metrics.py", "hotmetrics.py", "prometheus_client/")),
    (
        "engine: delivery, offsets, commits",
        ("engine/at_least_once.py", "engine/delivery.py", "_deliver_done", "PartitionTracker"),
    ),
    (
        "engine: a task per model-bound record",
        (
            "TierWorker._answer",
            "TierWorker._finished",
            "TierWorker._spawn",
            "TierWorker._task_done",
            "TierWorker._release_slot",
        ),
    ),
    ("engine: polling and dispatch", ("TierWorker._poll_once", "TierWorker._dispatch")),
    ("handler: routing and the rest", ("tiers/",)),
]
HARNESS = "this bench's own polling"
#: Where no frame of the stack is named above: the innermost frame of these.
FALLBACK: list[tuple[str, tuple[str, ...]]] = [
    ("other Escalator code", ("escalator/",)),
    (HARNESS, ("<locals>.run (tests/benchmarks/b1p.py",)),  # not ``child``: every stack's root
]


def part_of(stack: str) -> str:
    """The part of one sampled stack (frames outermost first, ``;``-separated)."""
    frames = stack.split(";")
    for rules in (PARTS, FALLBACK):
        for frame in reversed(frames):
            for name, keys in rules:
                if any(key in frame for key in keys):
                    return name
    return LOOP


def split(raw: Iterable[str], within: str = "BaseEventLoop._run_once") -> Counter[str]:
    """Samples by part, from py-spy's raw (collapsed) output: one stack and a count a line.
    Only stacks through ``within`` count (the event loop's thread; the process's helper
    threads wait)."""
    parts: Counter[str] = Counter()
    for line in raw:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if stack and within in stack:
            parts[part_of(stack)] += int(count)
    return parts


# -- the child: the tier alone, sampled ------------------------------------------------------
def child(env_file: str, n: int) -> None:
    """Run the cheap tier (instant model) over the backlog ``env_file`` names. Prints
    ``first`` at its first request, then its msg/s and the loop thread's CPU a record from
    there to the n-th as JSON, and stops once the parent writes a line (py-spy stopped). With
    tier 0 on, the model answers tier 0's labels, as in B1z, so that its live test keeps it on."""
    from dataclasses import replace

    from escalator.app import build_service
    from escalator.config import load_settings
    from escalator.contract.messages import Attempt
    from escalator.observability import logs
    from tests.benchmarks.run import TIER0_LABELS, InstantModel

    class Agreeing(InstantModel):
        async def classify(self, text: str) -> Attempt:
            return replace(await super().classify(text), label=TIER0_LABELS[text])

    env = orjson.loads(Path(env_file).read_bytes())
    model = Agreeing if "ESCALATOR_TIER0_FILE" in env else InstantModel
    logs.configure("INFO", stream=open(os.devnull, "w"))  # for the process's life

    def factory(tier: str, name: str, task: object, prices: object) -> InstantModel:
        return model(tier, name)

    async def run() -> None:
        service = build_service(load_settings(env), ["cheap"], model_factory=factory)
        task = asyncio.create_task(service.run(install_signals=False))
        registry = service.metrics.registry
        requests = ("escalator_requests_total", {"tier": "cheap"})
        done = ("escalator_processing_seconds_count", {"tier": "cheap"})
        try:
            while not registry.get_sample_value(*requests):  # noqa: ASYNC110 (a metric, no event)
                await asyncio.sleep(0.01)
            wall, cpu = time.perf_counter(), time.thread_time()
            print("first", flush=True)
            while (registry.get_sample_value(*done) or 0) < n:
                if task.done():
                    task.result()
                await asyncio.sleep(0.2)  # the polling is sampled too: its own part
            wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
            figures = {"rate": n / wall, "cpu_us": cpu / n * 1e6}
            print(orjson.dumps(figures).decode(), flush=True)
            await asyncio.to_thread(sys.stdin.readline)
        finally:
            service.stop()
            await task

    asyncio.run(run())


async def _sampled(env: dict[str, str], n: int, raw: Path) -> dict[str, float]:
    """Run :func:`child` on the backlog ``env`` under py-spy; its figures, the samples in
    ``raw``."""
    env_file = raw.with_suffix(".env.json")
    env_file.write_bytes(orjson.dumps(env))
    spy_log = raw.with_suffix(".pyspy.log")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.benchmarks.b1p", "child", str(env_file), str(n),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    spy: asyncio.subprocess.Process | None = None
    try:
        if await proc.stdout.readline() != b"first\n":
            raise AssertionError(f"the profiled tier did not start ({await proc.wait()})")
        with spy_log.open("wb") as log:
            spy = await asyncio.create_subprocess_exec(
                PYSPY, "record", "-r", "250", "-f", "raw", "-o", str(raw),
                "--pid", str(proc.pid),
                stdout=log,
                stderr=log,
            )  # fmt: skip
        line = await proc.stdout.readline()
        if not line:
            raise AssertionError(f"the profiled tier exited with {await proc.wait()}")
        figures: dict[str, float] = orjson.loads(line)
        if spy.returncode is None:
            spy.send_signal(signal.SIGINT)  # py-spy writes what it sampled and ends
        if await spy.wait() != 0 or not await asyncio.to_thread(raw.exists):
            raise AssertionError(
                f"py-spy sampled nothing (ptrace allowed?): {spy_log.read_text()[-500:]}"
            )
        proc.stdin.write(b"stop\n")
        await proc.stdin.drain()
        await proc.wait()
        return figures
    finally:
        for process in (spy, proc):
            if process is not None and process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
                await process.wait()


async def b1p(
    bootstrap: str, sim_url: str, tmp: Path, report: Callable[[str, str, str, str], None]
) -> None:
    from escalator.config import load_settings
    from tests.benchmarks.run import bare_pipe, throughput_artefact, with_backlog

    n = 30_000
    env = await with_backlog(bootstrap, sim_url, "b1pb", n)
    bare = await bare_pipe(
        bootstrap, env["ESCALATOR_REQUESTS_TOPIC"], env["ESCALATOR_RESULTS_TOPIC"], n
    )
    with tempfile.TemporaryDirectory(dir=tmp) as scratch:
        artefact = Path(scratch) / "tier0.json"
        setups: dict[str, dict[str, str]] = {"model-bound (B1)": {}, "tier 0 answers (B1z)": {}}
        for name, extra in setups.items():
            if "B1z" in name:
                throughput_artefact(artefact, load_settings(env))
                extra["ESCALATOR_TIER0_FILE"] = str(artefact)
            backlog = await with_backlog(bootstrap, sim_url, "b1p", n, **extra)
            raw = Path(scratch) / f"{len(extra)}.raw"
            figures = await _sampled(backlog, n, raw)
            with raw.open() as lines:
                parts = split(lines)
            total = sum(parts.values())
            tier = total - parts[HARNESS]
            if tier <= 0 or parts[KAFKA] == tier:
                raise AssertionError(f"{name}: no sample outside the Kafka client ({parts})")
            outside_us = figures["cpu_us"] * (tier - parts[KAFKA]) / total
            shares = "; ".join(f"{part} {100 * k / total:.0f}%" for part, k in parts.most_common())
            print(f"    ({name}: {total:,} samples: {shares})", flush=True)
            report(
                "B1p",
                f"{name}: tier {figures['rate']:,.0f} msg/s, loop thread's CPU a record "
                f"{figures['cpu_us']:.0f} µs, of it outside the Kafka client {outside_us:.0f} µs "
                f"(sampled); bare pipe {bare:,.0f} msg/s",
                f"ceiling on B1 with a Kafka client costing nothing: {1e6 / outside_us / bare:.2f}",
                "diagnostic (issue 23)",
            )


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        child(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit("usage: python -m tests.benchmarks.b1p child ENV_FILE N (run by run.py's b1p)")
