"""Batch assembly (lane/assembly.py): custom ids, the documented limits, the age bound."""

from __future__ import annotations

import pytest

from escalator.lane.assembly import (
    CUSTOM_ID_RE,
    ENVELOPE_BYTES,
    MAX_REQUESTS,
    Assembly,
    Member,
    custom_id,
    place_of,
)


def member(offset: int, size: int = 100, joined: float = 0.0, partition: int = 0) -> Member:
    return Member(partition, offset, size, joined)


@pytest.mark.parametrize(("partition", "offset"), [(0, 0), (5, 123), (2**31 - 1, 2**63 - 1)])
def test_custom_ids_are_valid_unique_and_map_back(partition: int, offset: int) -> None:
    """Any hand-off place gives an id the API accepts (at most 64 of [a-zA-Z0-9_-]), and the
    id gives the place back."""
    cid = custom_id(partition, offset)
    assert CUSTOM_ID_RE.fullmatch(cid) and len(cid) <= 64
    assert place_of(cid) == (partition, offset)


def test_distinct_places_never_share_an_id() -> None:
    """p1o23 and p12o3 differ: the separator keeps the numbers apart."""
    ids = {custom_id(p, o) for p in range(30) for o in range(300)}
    assert len(ids) == 30 * 300


@pytest.mark.parametrize("bad", ["", "p1", "p-1o2", "x1o2", "p1o2 ", "p1o2/x"])
def test_a_custom_id_that_is_not_ours_is_refused(bad: str) -> None:
    """place_of reads only what custom_id writes."""
    with pytest.raises(ValueError, match="custom id"):
        place_of(bad)


def test_a_batch_is_cut_at_the_request_limit() -> None:
    """10,000 requests (the stricter documented limit) cut the batch at once."""
    a = Assembly(max_age_s=60.0)
    cut = [b for i in range(MAX_REQUESTS + 1) for b in a.add("m", member(i, size=10))]
    assert [len(b.members) for b in cut] == [MAX_REQUESTS]
    assert a.waiting() == 1


def test_a_batch_is_cut_before_a_member_that_would_not_fit() -> None:
    """The open batch goes before the member that would take it past the byte limit; that
    member starts the next."""
    a = Assembly(max_age_s=60.0, max_bytes=ENVELOPE_BYTES + 250)
    assert a.add("m", member(0)) == [] and a.add("m", member(1)) == []
    [cut] = a.add("m", member(2))
    assert [m.offset for m in cut.members] == [0, 1] and cut.size_bytes == ENVELOPE_BYTES + 200
    assert a.waiting() == 1
    with pytest.raises(ValueError, match="larger than a whole batch"):
        a.add("m", member(3, size=251))


def test_batches_are_per_model_and_cut_by_age() -> None:
    """Each model has its own batch; due() cuts those whose oldest member waited max_age."""
    a = Assembly(max_age_s=60.0)
    a.add("haiku", member(0, joined=100.0))
    a.add("sonnet", member(1, joined=130.0))
    a.add("haiku", member(2, joined=150.0))
    assert a.due(159.0) == []
    [old] = a.due(160.0)
    assert old.model == "haiku" and [m.offset for m in old.members] == [0, 2]
    [late] = a.due(190.0)
    assert late.model == "sonnet" and a.waiting() == 0


def test_a_redelivered_record_joins_its_open_batch_once() -> None:
    """The same hand-off place twice in an open batch would be a duplicate custom id (a 400
    for the whole batch) and a second bill: it joins once."""
    a = Assembly(max_age_s=1.0)
    a.add("m", member(7))
    a.add("m", member(7))
    a.add("m", member(7, partition=1))
    [batch] = a.due(10.0)
    assert [m.custom_id for m in batch.members] == ["p0o7", "p1o7"]


def test_members_taken_out_leave_their_batch_and_free_their_place() -> None:
    """drop (revoked partitions) and withdraw (answered another way) take members out of the
    open batches: the rest stay, with their size; a batch left empty is gone; a place taken out
    is free to join again; withdrawing one in no open batch says so."""
    a = Assembly(max_age_s=60.0)
    a.add("haiku", member(1))
    a.add("haiku", member(2, size=50, partition=1))
    a.add("haiku", member(4, size=30))
    a.add("sonnet", member(3, partition=1))
    assert a.drop({1}) == ["p1o2", "p1o3"] and a.waiting() == 2
    assert a.withdraw(0, 4) and not a.withdraw(0, 4) and not a.withdraw(1, 2)
    assert a.drop({1}) == [] and a.due(59.0) == []  # no empty batch left behind
    a.add("sonnet", member(3, partition=1))
    haiku, sonnet = sorted(a.due(60.0), key=lambda b: b.model)
    assert [m.custom_id for m in haiku.members] == ["p0o1"]
    assert haiku.size_bytes == ENVELOPE_BYTES + 100
    assert [m.custom_id for m in sonnet.members] == ["p1o3"]


@pytest.mark.parametrize(
    ("requests", "size"), [(0, 10**6), (MAX_REQUESTS + 1, 10**6), (10, 256_000_001), (10, 10)]
)
def test_limits_beyond_the_documented_ones_are_refused(requests: int, size: int) -> None:
    """Lower limits are allowed (tests); higher ones, or none, are not."""
    with pytest.raises(ValueError, match="documented"):
        Assembly(max_age_s=1.0, max_requests=requests, max_bytes=size)
