"""Kafka over TLS with SASL/SCRAM-SHA-512, for real: a broker with a SASL_SSL listener, a CA
made here, a SCRAM user created at format time. The service must work with the right
credentials, and refuse to start, in one clear line, with a wrong password or without TLS."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from escalator.config import load_settings
from escalator.kafka.clients import KafkaUnreachable, check_connection
from tests.integration.harness import collect, make_env, produce, requests, running_service
from tests.integration.secure_kafka import SecureKafka, start_secure_kafka
from tests.integration.test_measure import run_cli
from tests.integration.test_pipeline import TEXTS

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafka]:
    kafka = start_secure_kafka(tmp_path_factory.mktemp("secure-kafka"))
    try:
        yield kafka
    finally:
        kafka.cluster.stop()


@pytest.mark.timeout(240)
async def test_service_classifies_over_sasl_ssl(
    secure_kafka: SecureKafka, sim_url: str, unique: str
) -> None:
    env = {
        **make_env(secure_kafka.secure_bootstrap, sim_url, unique, ESCALATOR_SHADOW_RATE="0"),
        **secure_kafka.client_env(),
    }
    settings = load_settings(env)
    n = 20
    # The test's own clients use the PLAINTEXT listener; only the service goes through TLS.
    async with running_service(env, ["cheap", "strong"]):
        await produce(
            secure_kafka.plaintext_bootstrap,
            settings.topics.requests,
            requests(n, unique, TEXTS),
        )
        got = await collect(
            secure_kafka.plaintext_bootstrap,
            [settings.topics.results],
            lambda c: len(c.results_by_id(settings.topics.results)) >= n,
            timeout_s=120,
        )
    assert len(got.results_by_id(settings.topics.results)) == n


@pytest.mark.timeout(240)
async def test_wrong_password_fails_at_startup_naming_the_problem(
    secure_kafka: SecureKafka, sim_url: str, unique: str
) -> None:
    wrong = "not-the-password-" + unique
    env = {
        **make_env(secure_kafka.secure_bootstrap, sim_url, unique),
        **secure_kafka.client_env(ESCALATOR_KAFKA_SASL_PASSWORD=wrong),
    }
    proc = await asyncio.to_thread(run_cli, env, "run", "--tier", "cheap")
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "rejected the credentials" in lines[0]
    assert "ESCALATOR_KAFKA_SASL_PASSWORD" in lines[0]
    assert wrong not in proc.stderr + proc.stdout
    assert secure_kafka.password not in proc.stderr + proc.stdout


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SASL_PLAINTEXT"])
async def test_without_tls_the_secure_listener_cannot_be_used(
    secure_kafka: SecureKafka, protocol: str
) -> None:
    settings = load_settings(
        {
            **secure_kafka.client_env(ESCALATOR_KAFKA_SECURITY_PROTOCOL=protocol),
            "ANTHROPIC_BASE_URL": "http://127.0.0.1:9",
        }
    )
    with pytest.raises(KafkaUnreachable, match="closed the connection during the handshake"):
        await check_connection(settings.kafka, timeout_s=10)


async def test_untrusted_certificate_is_refused(secure_kafka: SecureKafka) -> None:
    settings = load_settings(
        {
            **secure_kafka.client_env(ESCALATOR_KAFKA_SSL_CAFILE=""),
            "ANTHROPIC_BASE_URL": "http://127.0.0.1:9",
        }
    )
    with pytest.raises(KafkaUnreachable, match="ESCALATOR_KAFKA_SSL_CAFILE"):
        await check_connection(settings.kafka, timeout_s=10)
