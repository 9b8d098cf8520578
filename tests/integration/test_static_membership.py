"""Static membership (ESCALATOR_GROUP_INSTANCE_ID): a static member that stops sends no
LeaveGroup, so the broker keeps its place (and its partitions) for the session timeout, and
the same instance coming back takes them without a rebalance. A dynamic member leaves at once.
This is what docs/OPERATIONS.md tells operators about when to use it."""

from __future__ import annotations

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from escalator.config import load_settings
from tests.integration.harness import collect, make_env, produce, requests, running_service
from tests.integration.test_pipeline import TEXTS

pytestmark = pytest.mark.integration


async def _members(bootstrap: str, group: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (response,) = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    (described,) = response.groups
    # (error_code, group_id, state, protocol_type, protocol, members[, authorized_operations])
    members = next(field for field in described if isinstance(field, list))
    return len(members)


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("instance_id", "members_after_stop"), [("pod-0", 1), (None, 0)])
async def test_a_static_member_keeps_its_place_across_a_restart(
    kafka_bootstrap: str,
    sim_url: str,
    unique: str,
    instance_id: str | None,
    members_after_stop: int,
) -> None:
    overrides = {"ESCALATOR_SESSION_TIMEOUT_MS": "45000"}
    if instance_id:
        overrides["ESCALATOR_GROUP_INSTANCE_ID"] = instance_id
    env = make_env(kafka_bootstrap, sim_url, unique, **overrides)
    settings = load_settings(env)
    group = settings.pipeline.cheap_group
    async with running_service(env, ["cheap"]):
        assert await _members(kafka_bootstrap, group) == 1
    assert await _members(kafka_bootstrap, group) == members_after_stop
    # Back again, well within the session timeout: it consumes at once.
    async with running_service(env, ["cheap"]):
        await produce(kafka_bootstrap, settings.topics.requests, requests(5, unique, TEXTS))
        got = await collect(
            kafka_bootstrap,
            [settings.topics.results, settings.topics.escalations],
            lambda c: len(c.records) >= 5,
            30,
        )
        assert len(got.records) >= 5
        assert await _members(kafka_bootstrap, group) == 1
