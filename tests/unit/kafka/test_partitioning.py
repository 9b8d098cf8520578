"""kafka/partitioning.py: the same partitions as aiokafka's default partitioner, faster."""

from __future__ import annotations

import random

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from escalator.kafka.partitioning import KeyPartitioner, murmur2


def _signed(h: int) -> int:
    return h - (1 << 32) if h >= 1 << 31 else h


@pytest.mark.parametrize(
    ("key", "java"),
    [
        # org.apache.kafka.common.utils.UtilsTest#testMurmur2 (Java ints: signed).
        (b"21", -973932308),
        (b"foobar", -790332482),
        (b"a-little-bit-long-string", -985981536),
        (b"a-little-bit-longer-string", -1486304829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        (b"abc", 479470107),
    ],
)
def test_murmur2_gives_the_java_clients_values(key: bytes, java: int) -> None:
    assert _signed(murmur2(key)) == java


def test_murmur2_equals_aiokafkas_for_every_length_and_byte() -> None:
    rng = random.Random(23)
    for length in range(0, 300):
        for _ in range(20):
            key = rng.randbytes(length)
            assert murmur2(key) == aiokafka_murmur2(key), key
    for byte in range(256):  # every value in every tail position
        for length in (1, 2, 3, 5, 6, 7):
            key = bytes([byte]) * length
            assert murmur2(key) == aiokafka_murmur2(key), key


def test_the_partitioner_picks_what_aiokafkas_picks_and_keeps_the_last_hash_right() -> None:
    ours, theirs = KeyPartitioner(), DefaultPartitioner()
    rng = random.Random(7)
    keys = [rng.randbytes(rng.randint(0, 40)) for _ in range(2_000)]
    for count in (1, 3, 6, 7, 64):
        every = list(range(count))
        for key in keys + keys[::-1]:  # repeats, and a key right after itself
            assert ours(key, every, every) == theirs(key, every, every)
            assert ours(key, every, every) == theirs(key, every, every)


def test_a_keyless_record_goes_to_an_available_partition_else_to_any() -> None:
    pick = KeyPartitioner()
    assert {pick(None, [0, 1, 2, 3], [2]) for _ in range(50)} == {2}
    assert {pick(None, [0, 1, 2], []) for _ in range(200)} == {0, 1, 2}
