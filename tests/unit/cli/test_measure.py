"""The measure commands' flags (cli/measure.py)."""

from __future__ import annotations

import io
from contextlib import redirect_stdout

import pytest

from escalator.cli.main import main


def test_calibrate_help_documents_every_flag_and_default() -> None:
    """--help names each option with its default, including --output's thresholds.json."""
    buf = io.StringIO()
    with redirect_stdout(buf), pytest.raises(SystemExit):
        main(["calibrate", "--help"])
    text = " ".join(buf.getvalue().split())
    for flag in (
        "--objective", "--target", "--delta", "--margin", "--grid", "--per-label", "--output",
        "--ledger", "--fallback", "--plan", "--power", "--traffic-per-hour", "--assume-threshold",
        "--assume-accepted", "--assume-disagreement", "--strong-call-usd",
        "--assume-strong-tokens", "--plot", "--input", "--since", "--until",
    ):  # fmt: skip
        assert flag in text
    assert "(default: thresholds.json)" in text and "(default: 0.05)" in text
