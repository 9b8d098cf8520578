"""The lane worker's runner as ``lane/assemble.py`` builds it from settings."""

from __future__ import annotations

import anthropic
import pytest

from escalator.config import Settings, load_settings
from escalator.errors import ConfigError
from escalator.lane.assemble import lane_runner
from escalator.observability.metrics import Metrics


def settings(**env: str) -> Settings:
    return load_settings({"KAFKA_BOOTSTRAP_SERVERS": "k:9092", "ESCALATOR_BATCH_LANE": "on", **env})


@pytest.mark.parametrize(("waiting", "cut_at"), [(None, 10_000), ("500", 500)])
async def test_no_batch_is_cut_larger_than_the_worker_may_hold(
    waiting: str | None, cut_at: int
) -> None:
    """ESCALATOR_LANE_MAX_WAITING below a batch's 10,000: a worker holding its most cuts its
    batch at once, rather than waiting for the batch's age with nothing more able to join."""
    env = {} if waiting is None else {"ESCALATOR_LANE_MAX_WAITING": waiting}
    client = anthropic.AsyncAnthropic(api_key="sk-test", base_url="http://127.0.0.1:9")
    runner = lane_runner(
        settings(**env),
        client,
        producer=object(),  # type: ignore[arg-type]
        handoff=None,
        metrics=Metrics(),
    )
    assert runner._assembly.max_requests == cut_at
    await client.close()


def test_the_lane_needs_the_api_client() -> None:
    """No client (no key and no emulator): refused, naming the setting."""
    with pytest.raises(ConfigError, match="ESCALATOR_BATCH_LANE"):
        lane_runner(
            settings(),
            None,
            producer=object(),  # type: ignore[arg-type]
            handoff=None,
            metrics=Metrics(),
        )
