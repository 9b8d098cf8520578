"""A real Jaeger (v2 all-in-one, ``.tools/bin/jaeger``, built by ``make tools``) on loopback,
with in-memory storage and free ports, for the tracing test and the tracing benchmark.

Never started without this config: its built-in one listens on fixed ports, some on every
interface (README, "Development", Jaeger).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx

ROOT = Path(__file__).resolve().parents[2]
CONFIG = """
service:
  extensions: [jaeger_storage, jaeger_query, healthcheckv2]
  pipelines:
    traces: {receivers: [otlp], processors: [batch], exporters: [jaeger_storage_exporter]}
  telemetry: {metrics: {level: none}, logs: {level: warn}}
extensions:
  jaeger_storage: {backends: {memory_store: {memory: {max_traces: 10000}}}}
  jaeger_query:
    storage: {traces: memory_store}
    enable_tracing: false
    http: {endpoint: "127.0.0.1:${env:JAEGER_QUERY_PORT}"}
    grpc: {endpoint: "127.0.0.1:${env:JAEGER_QUERY_GRPC_PORT}"}
  healthcheckv2: {use_v2: true, http: {endpoint: "127.0.0.1:${env:JAEGER_HEALTH_PORT}"}}
receivers:
  otlp: {protocols: {http: {endpoint: "127.0.0.1:${env:JAEGER_OTLP_HTTP_PORT}"}}}
processors: {batch: {}}
exporters: {jaeger_storage_exporter: {trace_storage: memory_store}}
"""


class JaegerMissing(RuntimeError):
    """No Jaeger binary, or it did not start."""


@dataclass(frozen=True)
class Jaeger:
    #: Where OTLP/HTTP goes (OTEL_EXPORTER_OTLP_ENDPOINT).
    otlp: str
    #: The query API (``/api/traces``, ``/api/v3/traces/{id}``).
    query: str


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def binary() -> Path:
    found = Path(shutil.which("jaeger") or ROOT / ".tools" / "bin" / "jaeger")
    if not found.is_file():
        raise JaegerMissing(f"{found} is missing: run `make tools` (Jaeger v1.75.0, Go proxy)")
    return found


@contextlib.contextmanager
def running_jaeger(workdir: Path, ui_assets: Path | None = None) -> Iterator[Jaeger]:
    """Jaeger on 127.0.0.1 with free ports for the block (its config and log in ``workdir``);
    with ``ui_assets`` (a jaeger-ui build), it serves that UI (``trace_screenshot.py``)."""
    query, grpc, health, otlp = free_ports(4)
    config = workdir / "jaeger.yaml"
    text = CONFIG
    if ui_assets is not None:
        text = text.replace(
            "    enable_tracing: false\n",
            f"    enable_tracing: false\n    ui: {{assets_path: {str(ui_assets)!r}}}\n",
        )
    config.write_text(text)
    env = {
        **os.environ,
        "JAEGER_QUERY_PORT": str(query),
        "JAEGER_QUERY_GRPC_PORT": str(grpc),
        "JAEGER_HEALTH_PORT": str(health),
        "JAEGER_OTLP_HTTP_PORT": str(otlp),
    }
    log_path = workdir / "jaeger.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(binary()), "--config", f"file:{config}"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    status = httpx.get(f"http://127.0.0.1:{health}/status", timeout=1)
                    if status.status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise JaegerMissing(f"jaeger did not start: {log_path.read_text()}")
                time.sleep(0.1)
            yield Jaeger(otlp=f"http://127.0.0.1:{otlp}", query=f"http://127.0.0.1:{query}")
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
