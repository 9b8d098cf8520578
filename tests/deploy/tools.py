"""Where the deployment checks find their pinned tools (installed by `make tools`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = Path(os.environ.get("ESCALATOR_TOOLS", ROOT / ".tools"))


def tool(name: str) -> str:
    """The path of a command-line tool; fail (never skip) when it is missing."""
    for candidate in (TOOLS / "bin" / name, shutil.which(name)):
        if candidate and Path(candidate).exists():
            return str(candidate)
    pytest.fail(f"{name} is not installed: run `make tools`")


def crd_file(name: str) -> Path:
    path = TOOLS / "crds" / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make tools`")
    return path
