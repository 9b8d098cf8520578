"""Reliability scenarios run against the real broker; `make reliability` runs them at full
scale (ESCALATOR_RELIABILITY_SCALE=full), `make test` at the reduced CI scale."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.reliability)
