"""proto/deadlines.py: keyed deadlines in a heap with lazy invalidation, against a naive reference."""

from __future__ import annotations

import copy
import random

from wgdisco.proto.deadlines import Deadlines


def test_set_move_discard_and_pop_in_time_order() -> None:
    d: Deadlines[str] = Deadlines()
    assert d.next() is None and d.pop_due(1e9) == [] and len(d) == 0
    d.set("a", 5.0)
    d.set("b", 3.0)
    d.set("c", 3.0)  # a tie: in the order set
    assert d.next() == 3.0 and len(d) == 3 and "a" in d and d.get("a") == 5.0
    d.set("b", 7.0)  # moved later: its old entry is stale
    assert d.next() == 3.0 and d.get("b") == 7.0
    d.set("c", None)  # as discard
    assert d.next() == 5.0 and "c" not in d
    assert d.pop_due(4.9) == []
    assert d.pop_due(7.0) == ["a", "b"]
    assert d.next() is None and len(d) == 0
    d.set("a", 1.0)
    d.set("a", 2.0)
    d.set("a", 1.0)  # back to an earlier time: one key, popped once
    assert d.pop_due(10.0) == ["a"] and d.pop_due(10.0) == []


def test_next_is_a_pure_read() -> None:
    d: Deadlines[int] = Deadlines()
    for k in range(50):
        d.set(k, float(k % 7))
    for k in range(0, 50, 3):
        d.set(k, 100.0 + k)  # stale entries at the top
    before = copy.deepcopy((d._heap, d._at, d._seq))
    assert d.next() == d.next() == min(d.get(k) for k in range(50))
    assert (d._heap, d._at, d._seq) == before


def test_pop_due_touches_only_due_entries() -> None:
    """The work of a wake-up is the due keys (and stale entries above them), not every key."""
    d: Deadlines[int] = Deadlines()
    for k in range(10_000):
        d.set(k, 1000.0 + k)
    d.set(42, 1.0)
    d.set(43, 2.0)
    size = len(d._heap)
    assert d.pop_due(2.0) == [42, 43]
    # two due entries left the heap, and the stale entries of 42 and 43 stay (deep, not due)
    assert len(d._heap) == size - 2 and len(d) == 9_998


def test_stale_entries_are_bounded() -> None:
    d: Deadlines[int] = Deadlines()
    for k in range(10):
        d.set(k, 1.0)
    for step in range(10_000):  # every key moved later again and again, none ever popped
        d.set(step % 10, 2.0 + step)
    assert len(d._heap) <= 4 * len(d) + 64 + 1
    assert d.pop_due(1e9) == sorted(range(10), key=lambda k: d_ref_time(k))


def d_ref_time(k: int) -> float:
    return 2.0 + max(s for s in range(10_000) if s % 10 == k)


def test_against_a_naive_reference() -> None:
    rng = random.Random(7)
    d: Deadlines[int] = Deadlines()
    ref: dict[int, float] = {}
    now = 0.0
    for _ in range(20_000):
        op = rng.random()
        key = rng.randrange(200)
        if op < 0.55:
            when = now + rng.choice([0.0, rng.random() * 50])
            d.set(key, when)
            ref[key] = when
        elif op < 0.7:
            d.discard(key)
            ref.pop(key, None)
        else:
            now += rng.random() * 5
            due = d.pop_due(now)
            want = sorted((k for k, t in ref.items() if t <= now), key=lambda k: ref[k])
            assert sorted(due) == sorted(want)
            assert [ref[k] for k in due] == sorted(ref[k] for k in due)  # earliest first
            for k in due:
                del ref[k]
        assert d.next() == (min(ref.values()) if ref else None)
        assert len(d) == len(ref) and all(d.get(k) == t for k, t in ref.items())
