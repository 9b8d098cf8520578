"""A single-node broker with a SASL_SSL listener, a throwaway CA and one SCRAM-SHA-512 user.

The CA and the broker's certificate are made here with trustme; the broker reads them from a
PKCS#12 keystore (Kafka's PEM keystore rejects the traditional "EC PRIVATE KEY" form that most
tools write). The PLAINTEXT listener stays for inter-broker traffic and for the test's own
producers and readers; only the service under test goes through the SECURE listener.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    load_pem_private_key,
    pkcs12,
)

from escalator_dev.kafka_local import LocalKafkaCluster

LISTENER = "SECURE"
USER = "escalator-svc"


@dataclass
class SecureKafka:
    cluster: LocalKafkaCluster
    cafile: Path
    password: str

    @property
    def plaintext_bootstrap(self) -> str:
        return self.cluster.bootstrap_servers

    @property
    def secure_bootstrap(self) -> str:
        return self.cluster.listener_bootstrap(LISTENER)

    def client_env(self, **overrides: str) -> dict[str, str]:
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.secure_bootstrap,
            "ESCALATOR_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "ESCALATOR_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "ESCALATOR_KAFKA_SASL_USERNAME": USER,
            "ESCALATOR_KAFKA_SASL_PASSWORD": self.password,
            "ESCALATOR_KAFKA_SSL_CAFILE": str(self.cafile),
        }
        env.update(overrides)
        return env


def _keystore(cert: trustme.LeafCert, path: Path, password: str) -> None:
    key = load_pem_private_key(cert.private_key_pem.bytes(), password=None)
    leaf, *chain = (x509.load_pem_x509_certificate(b.bytes()) for b in cert.cert_chain_pems)
    path.write_bytes(
        pkcs12.serialize_key_and_certificates(
            b"broker",
            key,  # type: ignore[arg-type]
            leaf,
            chain or None,
            BestAvailableEncryption(password.encode()),
        )
    )


def start_secure_kafka(workdir: Path) -> SecureKafka:
    workdir.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    cafile = workdir / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    store_password = secrets.token_hex(8)
    keystore = workdir / "broker.p12"
    _keystore(ca.issue_cert("127.0.0.1", "localhost"), keystore, store_password)
    user_password = secrets.token_hex(12)
    prefix = f"listener.name.{LISTENER.lower()}"
    cluster = LocalKafkaCluster(
        workdir / "kafka",
        extra_listeners={LISTENER: "SASL_SSL"},
        scram_users=[f"SCRAM-SHA-512=[name={USER},password={user_password}]"],
        extra_props={
            f"{prefix}.sasl.enabled.mechanisms": "SCRAM-SHA-512",
            f"{prefix}.scram-sha-512.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            ),
            f"{prefix}.ssl.keystore.type": "PKCS12",
            f"{prefix}.ssl.keystore.location": str(keystore),
            f"{prefix}.ssl.keystore.password": store_password,
            f"{prefix}.ssl.key.password": store_password,
        },
    )
    cluster.start(120)
    return SecureKafka(cluster, cafile, user_password)
