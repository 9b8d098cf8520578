"""B1p (issue 23): where a cheap-tier record's CPU goes, and what that bounds.

B1 and B1q ask the cheap tier to run at about the bare aiokafka pipe's speed. This bench says
which part of the tier's work stands in the way, so that the choice between a faster Kafka
client and less work per record is made on figures. Two set-ups, each as in B1 (30,000
requests, 6 partitions, the instant in-process model): the model-bound path (B1) and tier 0
answering every record (B1z). For each, the tier runs in a child process (``child`` below)
that py-spy samples from its first request to its last (``py-spy record --pid``, 250 Hz,
``--nonblocking``; py-spy from ``make bench``'s ``.bench/pyspy``, never a runtime dependency,
and it needs ptrace: root, or ``CAP_SYS_PTRACE`` in a container). Each sample is given to the
part its innermost recognised frame belongs to (``PARTS``); "other" is what no rule names.

From the shares and the CPU a record measured in the same run (the child's own, and the bare
pipe's in this process), it prints the tier's CPU a record outside the Kafka client: with a
Kafka client that cost nothing, B1 could not exceed the bare pipe's CPU a record divided by
that (both sides are CPU-bound on one thread). An estimate from samples, labelled as one.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import orjson

PYSPY = os.environ.get("ESCALATOR_PYSPY", ".bench/pyspy/bin/py-spy")

#: The parts of a record's work, each named by substrings of py-spy frame names (function,
#: then file). The innermost frame that any rule names decides a sample's part.
PARTS: list[tuple[str, tuple[str, ...]]] = [
    (
        "Kafka client (aiokafka, record batches, sockets)",
        (
            "aiokafka/",
            "kafka/clients.py",
            "kafka/partitioning.py",
            "selectors.py",
            "selector_events.py",
        ),
    ),
    (
        "model call (caller, admission, breaker, the instant model)",
        ("model/caller.py", "model/admission.py", "model/breaker.py", "InstantModel"),
    ),
    ("tier 0's prediction", ("tier0/",)),
    ("decision record", ("_Base.decision ", "Decision.answer_value", "_tier0 ")),
    ("result record", ("_Base.result ", "result_value")),
    ("decision log line", ("log_decision", "EventLog")),
    ("request parsing", ("parse_request", "request_from_json")),
    ("metrics", ("observability/metrics.py", "hotmetrics.py", "prometheus_client/")),
    (
        "engine: delivery, offsets, commits",
        ("engine/at_least_once.py", "engine/delivery.py", "_deliver_done", "PartitionTracker"),
    ),
    (
        "engine: a task per record and the event loop",
        (
            "asyncio/",
            "TierWorker._answer",
            "TierWorker._finished",
            "TierWorker._spawn",
            "TierWorker._task_done",
            "TierWorker._release_slot",
            "<lambda> (<string>",
        ),
    ),
    ("engine: polling and dispatch", ("TierWorker._poll_once", "TierWorker._dispatch")),
    ("handler: routing and the rest", ("tiers/",)),
]
KAFKA = PARTS[0][0]


def part_of(stack: str) -> str:
    """The part of one sampled stack (frames outermost first, ``;``-separated)."""
    for frame in reversed(stack.split(";")):
        for name, keys in PARTS:
            if any(key in frame for key in keys):
                return name
    return "other"


def split(raw: Iterable[str], within: str = "BaseEventLoop._run_once") -> Counter[str]:
    """Samples by part, from py-spy's raw (collapsed) output: one stack and a count a line.
    Only stacks through ``within`` count (the event loop's thread: py-spy also samples the
    process's helper threads, which wait)."""
    parts: Counter[str] = Counter()
    for line in raw:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if stack and within in stack:
            parts[part_of(stack)] += int(count)
    return parts


# -- the child: the tier alone, sampled ------------------------------------------------------
def child(env_file: str, n: int) -> None:
    """Run the cheap tier (instant model) over the backlog ``env_file`` names, once the parent
    writes a line (py-spy attached); print its msg/s and CPU a record as JSON. With tier 0 on,
    the model answers tier 0's labels, as in B1z, so that its live test keeps it on."""
    from dataclasses import replace

    from escalator.contract.messages import Attempt
    from escalator.observability import logs
    from tests.benchmarks.run import TIER0_LABELS, InstantModel, run_pipeline

    class Agreeing(InstantModel):
        async def classify(self, text: str) -> Attempt:
            return replace(await super().classify(text), label=TIER0_LABELS[text])

    env = orjson.loads(Path(env_file).read_bytes())
    model = Agreeing if "ESCALATOR_TIER0_FILE" in env else InstantModel
    logs.configure("INFO", stream=open(os.devnull, "w"))  # for the process's life
    print("ready", flush=True)
    sys.stdin.readline()

    def factory(tier: str, name: str, task: object, prices: object) -> InstantModel:
        return model(tier, name)

    started = time.process_time()
    rate = asyncio.run(run_pipeline(env, n, factory))
    cpu_us = (time.process_time() - started) / n * 1e6
    print(orjson.dumps({"rate": rate, "cpu_us": cpu_us}).decode(), flush=True)


async def _sampled(env: dict[str, str], n: int, raw: Path) -> dict[str, float]:
    """Run :func:`child` on the backlog ``env`` under py-spy; its figures, the samples in
    ``raw``."""
    env_file = raw.with_suffix(".env.json")
    env_file.write_bytes(orjson.dumps(env))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.benchmarks.b1p", "child", str(env_file), str(n),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    try:
        if await proc.stdout.readline() != b"ready\n":
            raise AssertionError(f"the profiled tier did not start ({await proc.wait()})")
        spy = await asyncio.create_subprocess_exec(
            PYSPY, "record", "-r", "250", "-f", "raw", "--nonblocking", "-o", str(raw),
            "--pid", str(proc.pid),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await asyncio.sleep(2)  # attached
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
        line = b""
        while not line.startswith(b"{"):  # run_pipeline prints a line of its own first
            line = await proc.stdout.readline()
            if not line:
                raise AssertionError(f"the profiled tier exited with {await proc.wait()}")
        figures: dict[str, float] = orjson.loads(line)
        await proc.wait()
        if await spy.wait() != 0:
            raise AssertionError(f"py-spy recorded nothing: is ptrace allowed? ({PYSPY})")
        return figures
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


async def b1p(
    bootstrap: str, sim_url: str, tmp: Path, report: Callable[[str, str, str, str], None]
) -> None:
    from escalator.config import load_settings
    from tests.benchmarks.run import CpuSpent, bare_pipe, throughput_artefact, with_backlog

    n = 30_000
    env = await with_backlog(bootstrap, sim_url, "b1pb", n)
    bare = CpuSpent()
    with bare.counting():
        await bare_pipe(
            bootstrap, env["ESCALATOR_REQUESTS_TOPIC"], env["ESCALATOR_RESULTS_TOPIC"], n
        )
    bare_us = bare.cpu_s / n * 1e6
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
            outside_us = figures["cpu_us"] * (total - parts[KAFKA]) / total
            shares = "; ".join(f"{part} {100 * k / total:.0f}%" for part, k in parts.most_common())
            print(f"    ({name}: {total:,} samples: {shares})", flush=True)
            report(
                "B1p",
                f"{name}: tier {figures['rate']:,.0f} msg/s, CPU a record {figures['cpu_us']:.0f} "
                f"µs, of it outside the Kafka client {outside_us:.0f} µs (sampled); bare pipe "
                f"{bare_us:.0f} µs a record",
                f"ceiling on B1 with a Kafka client costing nothing: {bare_us / outside_us:.2f}",
                "diagnostic (issue 23)",
            )


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        child(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit("usage: python -m tests.benchmarks.b1p child ENV_FILE N (run by run.py's b1p)")
