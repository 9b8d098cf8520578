"""Real, human-labelled texts for the demo and calibration: PyRIT's harm scorer evaluations.

The ``pyrit`` wheel on PyPI (MIT licence, Microsoft) ships
``pyrit/datasets/scorer_evals/harm/*.csv``: LLM responses to harmful objectives with human
harm scores from 0 to 1 (some rows by three annotators). We fetch the pinned wheel once with
``pip download --no-deps`` into the cache and read the CSVs straight from the zip; pyrit itself
is never installed. Its licence notice is kept next to the cached wheel and printed by the demo.

Gold labels (mean human score s): s <= 0.25 -> safe; s >= 0.75 -> unsafe; else review-needed.
They travel in request metadata (``gold_label``) so that calibration can report accuracy; the
simulator never reads metadata.
"""

from __future__ import annotations

import csv
import hashlib
import io
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from escalator.errors import EscalatorError
from escalator_dev.kafka_local import cache_root

PYRIT_VERSION = "1.1.0"
HARM_PREFIX = "pyrit/datasets/scorer_evals/harm/"


@dataclass(frozen=True, slots=True)
class Sample:
    id: str
    text: str
    gold_label: str
    harm_score: float
    source: str


def gold_label(score: float) -> str:
    if score <= 0.25:
        return "safe"
    if score >= 0.75:
        return "unsafe"
    return "review-needed"


def fetch_pyrit_wheel(cache: Path | None = None) -> Path:
    root = (cache or cache_root()) / f"pyrit-{PYRIT_VERSION}"
    wheels = sorted(root.glob("pyrit-*.whl"))
    if wheels:
        return wheels[0]
    root.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "-q",
            "-d",
            str(root),
            f"pyrit=={PYRIT_VERSION}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    wheels = sorted(root.glob("pyrit-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise EscalatorError(f"could not download pyrit=={PYRIT_VERSION}: {proc.stderr[-500:]}")
    return wheels[0]


def license_notice(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if name.endswith("dist-info/licenses/LICENSE") or name.endswith("dist-info/LICENSE"):
                return zf.read(name).decode("utf-8", "replace")
    return "MIT License, Copyright (c) Microsoft Corporation."


def load_harm_samples(wheel: Path | None = None) -> list[Sample]:
    """Every row with at least one human score, in a stable order."""
    wheel = wheel or fetch_pyrit_wheel()
    samples: list[Sample] = []
    with zipfile.ZipFile(wheel) as zf:
        for name in sorted(zf.namelist()):
            if not name.startswith(HARM_PREFIX) or not name.endswith(".csv"):
                continue
            if "/mini_" in name:
                continue  # a subset of hate_speech_multi_score
            lines = zf.read(name).decode("utf-8").splitlines(keepends=True)
            body = "".join(line for line in lines if not line.startswith("#"))
            for row in csv.DictReader(io.StringIO(body)):
                scores = [
                    float(v) for k, v in row.items() if k and k.startswith("human_score") and v
                ]
                text = (row.get("assistant_response") or "").strip()
                if not scores or not text:
                    continue
                score = sum(scores) / len(scores)
                source = name.removeprefix(HARM_PREFIX)
                digest = hashlib.sha256(f"{source}:{text}".encode()).hexdigest()[:12]
                samples.append(Sample(f"pyrit-{digest}", text, gold_label(score), score, source))
    return samples


def sample(samples: list[Sample], n: int, seed: str = "escalator") -> list[Sample]:
    """A deterministic subset of n samples (by hash order), without duplicates of ids."""
    unique = {s.id: s for s in samples}
    ranked = sorted(
        unique.values(), key=lambda s: hashlib.sha256(f"{seed}:{s.id}".encode()).digest()
    )
    return ranked[:n]
