"""The partition an output goes to: the Java client's default for a keyed record (murmur2 of
the key, as aiokafka's ``DefaultPartitioner``), a random available partition for a keyless one.

Results and decisions keep the partitioning their readers expect, so only the speed differs
from aiokafka's: its ``murmur2`` assembles every 4-byte word from single bytes in Python, about
4 µs for a 20-byte request id, and every output pays for it. Here the words are unpacked in one
``struct`` call (about 2 µs), and the partitioner keeps the last key's hash, because a record's
outputs (its result and its decision) share its key and are sent one after the other.
``tests/unit/kafka/test_partitioning.py`` holds it to aiokafka's for every length and to the
Java client's published values.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Sequence

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
#: An unpacker of n little-endian 32-bit words, per n seen.
_WORDS: dict[int, Callable[[bytes], tuple[int, ...]]] = {}


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (``org.apache.kafka.common.utils.Utils.murmur2``), unsigned 32 bits."""
    length = len(data)
    h = _SEED ^ length
    n = length >> 2
    if n:
        words = _WORDS.get(n)
        if words is None:
            words = _WORDS[n] = struct.Struct(f"<{n}I").unpack_from
        for k in words(data):
            k = (k * _M) & _MASK
            k ^= k >> 24
            h = ((h * _M) & _MASK) ^ ((k * _M) & _MASK)
    extra = length & 3
    if extra:
        tail = length - extra
        if extra == 3:
            h ^= data[tail + 2] << 16
        if extra >= 2:
            h ^= data[tail + 1] << 8
        h ^= data[tail]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)


def positive_hash(key: bytes) -> int:
    """The Java client's ``toPositive(murmur2(key))``: what a partition count divides."""
    return murmur2(key) & 0x7FFFFFFF


class KeyPartitioner:
    """aiokafka's ``partitioner`` callable: ``(key, all_partitions, available) -> partition``."""

    __slots__ = ("_hash", "_key")

    def __init__(self) -> None:
        self._key: bytes | None = None
        self._hash = 0

    def __call__(self, key: bytes | None, every: Sequence[int], available: Sequence[int]) -> int:
        if key is None:
            return random.choice(available or every)
        if key != self._key:
            self._hash = positive_hash(key)
            self._key = key
        return every[self._hash % len(every)]
