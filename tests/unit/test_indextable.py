"""IndexTable: random unique 32-bit indices, with scripted and seeded rngs."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wgdisco.errors import LocalError
from wgdisco.proto.indextable import IndexTable


def scripted(*indices: int):
    """An rng that returns the given indices (as 4 little-endian bytes), in order."""
    it = iter(indices)
    calls: list[int] = []

    def rng(n: int) -> bytes:
        calls.append(n)
        return next(it).to_bytes(4, "little")

    rng.calls = calls  # type: ignore[attr-defined]
    return rng


def seeded(seed: int):
    r = random.Random(seed)
    return lambda n: r.randbytes(n)


def test_index_is_rng_bytes_little_endian():
    t = IndexTable()
    assert t.new_index("hs", lambda n: bytes([1, 2, 3, 4])) == 0x04030201
    assert t.lookup(0x04030201) == "hs"


def test_extremes_are_valid_indices():
    t = IndexTable()
    assert t.new_index("zero", scripted(0)) == 0
    assert t.new_index("max", scripted(0xFFFFFFFF)) == 0xFFFFFFFF
    assert t.lookup(0) == "zero"
    assert t.lookup(0xFFFFFFFF) == "max"


def test_collision_draws_again():
    t = IndexTable()
    assert t.new_index("a", scripted(7)) == 7
    assert t.new_index("b", scripted(9)) == 9
    rng = scripted(7, 9, 7, 11)
    assert t.new_index("c", rng) == 11  # 7 and 9 are live: skipped
    assert rng.calls == [4, 4, 4, 4]
    assert (t.lookup(7), t.lookup(9), t.lookup(11)) == ("a", "b", "c")
    assert len(t) == 3


def test_deleted_index_can_be_drawn_again():
    t = IndexTable()
    t.new_index("a", scripted(5))
    t.delete(5)
    assert t.lookup(5) is None
    assert 5 not in t
    assert t.new_index("b", scripted(5)) == 5
    assert t.lookup(5) == "b"


def test_swap_replaces_only_live_entries():
    t = IndexTable()
    i = t.new_index("handshake", scripted(42))
    assert t.swap(i, "keypair") is True
    assert t.lookup(i) == "keypair"
    assert t.swap(43, "keypair") is False
    assert t.lookup(43) is None
    assert 43 not in t
    t.delete(i)
    assert t.swap(i, "keypair2") is False
    assert t.lookup(i) is None


def test_delete_and_lookup_of_unknown_index():
    t = IndexTable()
    t.delete(123)  # no-op, as wireguard-go's delete on a map
    assert t.lookup(123) is None
    assert len(t) == 0


def test_misuse_raises_local_error():
    t = IndexTable()
    with pytest.raises(LocalError):
        t.new_index(None, scripted(1))
    with pytest.raises(LocalError):
        t.new_index("x", lambda n: b"\x00\x01\x02")
    t.new_index("x", scripted(1))
    with pytest.raises(LocalError):
        t.swap(1, None)
    assert t.lookup(1) == "x"


def test_stuck_rng_is_reported_not_looped_forever():
    t = IndexTable()
    t.new_index("a", scripted(3))
    with pytest.raises(LocalError):
        t.new_index("b", lambda n: (3).to_bytes(4, "little"))
    assert len(t) == 1
    # 63 collisions then a free index still succeeds.
    assert t.new_index("c", scripted(*([3] * 63), 4)) == 4


def test_many_indices_are_unique_and_32_bit():
    t = IndexTable()
    rng = seeded(1)
    got = [t.new_index(n, rng) for n in range(5000)]
    assert len(set(got)) == 5000
    assert all(0 <= i < 2**32 for i in got)
    assert all(t.lookup(i) == n for n, i in enumerate(got))


def test_small_index_space_forces_collisions():
    # An rng drawing from only 64 values: collisions on almost every draw once the table fills.
    r = random.Random(7)
    t = IndexTable()
    rng = lambda n: r.randrange(64).to_bytes(4, "little")  # noqa: E731
    got = [t.new_index(n, rng) for n in range(40)]
    assert len(set(got)) == 40
    assert set(got) <= set(range(64))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["new", "delete", "swap"]), st.integers(0, 15)), max_size=60))
def test_against_dict_reference(ops):
    """Random new/delete/swap over a 16-value index space, checked against a plain dict."""
    r = random.Random(0)
    rng = lambda n: r.randrange(16).to_bytes(4, "little")  # noqa: E731
    t, ref = IndexTable(), {}
    for step, (op, i) in enumerate(ops):
        if op == "new":
            if len(ref) == 16:
                with pytest.raises(LocalError):
                    t.new_index(step, rng)
                continue
            try:
                idx = t.new_index(step, rng)
            except LocalError:
                continue  # 64 unlucky draws on a nearly full space: nothing stored
            assert idx not in ref
            ref[idx] = step
        elif op == "delete":
            t.delete(i)
            ref.pop(i, None)
        else:
            assert t.swap(i, -step) is (i in ref)
            if i in ref:
                ref[i] = -step
        assert len(t) == len(ref)
        for j in range(16):
            assert t.lookup(j) == ref.get(j)
