import os
import time
import uuid

import pytest

from app.ids import POOL_BYTES, issued_at, new_ids


def test_ids_stay_unique_across_refills_of_the_random_pool() -> None:
    ids = [i for _ in range(POOL_BYTES // 10 * 3) for i in new_ids(1)]
    ids += new_ids(POOL_BYTES)  # more than one pool's worth at once
    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(i).version == 7 and uuid.UUID(i).variant == uuid.RFC_4122 for i in ids)


def test_a_forked_child_does_not_reuse_its_parents_random_bytes() -> None:
    new_ids(1)  # the parent's pool holds bytes it has not handed out yet
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        os.write(write, new_ids(1)[0].encode())
        os._exit(0)
    os.waitpid(child, 0)
    theirs = os.read(read, 64).decode()
    ours = new_ids(1)[0]
    os.close(read)
    os.close(write)
    assert theirs[13:] != ours[13:]  # past the timestamp and version digit: the random bits


def test_every_random_bit_of_an_id_varies_and_the_rest_is_time_version_and_variant() -> None:
    before = time.time_ns() // 1_000_000
    ids = new_ids(2000)
    after = time.time_ns() // 1_000_000
    values = [uuid.UUID(i).int for i in ids]
    assert all(before <= v >> 80 <= after for v in values)  # the millisecond timestamp
    assert {v >> 76 & 0xF for v in values} == {7}
    assert {v >> 62 & 0b11 for v in values} == {0b10}
    random_bits = [*range(64, 76), *range(62)]  # rand_a (12 bits) and rand_b (62 bits)
    assert len(random_bits) == 74
    for bit in random_bits:  # each is 1 in about half the ids: none is stuck
        ones = sum(v >> bit & 1 for v in values)
        assert 800 < ones < 1200, bit


def test_an_ids_issue_time_is_its_leading_millisecond_timestamp() -> None:
    before = time.time_ns() // 1_000_000
    (made,) = new_ids(1)
    after = time.time_ns() // 1_000_000
    issued = issued_at(made)
    assert issued is not None
    assert before <= round(issued * 1000) <= after
    assert issued_at("018f2b3c4d5e7abc8def0123456789ab") == 0x018F2B3C4D5E / 1000
    assert issued_at("000000000000" + "7000" + "8000" + "000000000000") == 0.0
    assert issued_at("ffffffffffff" + "7fff" + "bfff" + "ffffffffffff") == 0xFFFFFFFFFFFF / 1000


@pytest.mark.parametrize(
    "other",
    [
        uuid.UUID("0e6f8f6a-3b1e-4c8a-9f3e-2b1c0d9e8f7a").hex,  # version 4: no timestamp
        "018f2b3c4d5e1abc8def0123456789ab",  # version 1
        "018f2b3c4d5e7abc0def0123456789ab",  # variant 0 (NCS)
        "018f2b3c4d5e7abccdef0123456789ab",  # variant 110 (Microsoft)
        "018F2B3C4D5E7ABC8DEF0123456789AB",  # upper case: not the stored form
        "018f2b3c-4d5e-7abc-8def-0123456789ab",  # dashed: not the stored form
        "018f2b3c4d5e7abc8def0123456789a",  # 31 digits
        "018f2b3c4d5e7abc8def0123456789abc",  # 33 digits
        "018f2b3c4d5e7abc8def0123456789ag",  # not hex
        "018f2b3c4d5e7abc8def0123456789a\n",  # a trailing newline
        "",
        "x" * 100_000,
    ],
)
def test_an_id_not_made_by_new_ids_has_no_issue_time(other: str) -> None:
    assert issued_at(other) is None
