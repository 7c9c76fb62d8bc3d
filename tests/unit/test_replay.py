"""ReplayFilter: wireguard-go replay_test.go ported table, plus hypothesis against a naive reference."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wgdisco.proto.replay import WINDOW_SIZE, ReplayFilter

REJECT_AFTER_MESSAGES = (1 << 64) - (1 << 13) - 1  # whitepaper §6.4
T_LIM = WINDOW_SIZE + 1


def test_window_size_matches_wireguard_go():
    assert WINDOW_SIZE == 8128


# replay_test.go TestReplay, numbered as there (itself ported from the Linux kernel selftest).
TABLE = [
    (0, True),  # 1
    (1, True),  # 2
    (1, False),  # 3
    (9, True),  # 4
    (8, True),  # 5
    (7, True),  # 6
    (7, False),  # 7
    (T_LIM, True),  # 8
    (T_LIM - 1, True),  # 9
    (T_LIM - 1, False),  # 10
    (T_LIM - 2, True),  # 11
    (2, True),  # 12
    (2, False),  # 13
    (T_LIM + 16, True),  # 14
    (3, False),  # 15
    (T_LIM + 16, False),  # 16
    (T_LIM * 4, True),  # 17
    (T_LIM * 4 - (T_LIM - 1), True),  # 18
    (10, False),  # 19
    (T_LIM * 4 - T_LIM, False),  # 20
    (T_LIM * 4 - (T_LIM + 1), False),  # 21
    (T_LIM * 4 - (T_LIM - 2), True),  # 22
    (T_LIM * 4 + 1 - T_LIM, False),  # 23
    (0, False),  # 24
    (REJECT_AFTER_MESSAGES, False),  # 25
    (REJECT_AFTER_MESSAGES - 1, True),  # 26
    (REJECT_AFTER_MESSAGES, False),  # 27
    (REJECT_AFTER_MESSAGES - 1, False),  # 28
    (REJECT_AFTER_MESSAGES - 2, True),  # 29
    (REJECT_AFTER_MESSAGES + 1, False),  # 30
    (REJECT_AFTER_MESSAGES + 2, False),  # 31
    (REJECT_AFTER_MESSAGES - 2, False),  # 32
    (REJECT_AFTER_MESSAGES - 3, True),  # 33
    (0, False),  # 34
]


def _run(f: ReplayFilter, steps):
    for number, (n, expected) in enumerate(steps, 1):
        assert f.validate_counter(n, REJECT_AFTER_MESSAGES) is expected, f"test {number}: T({n}, {expected})"


def test_table():
    f = ReplayFilter()
    f.reset()
    _run(f, TABLE)


def _bulk(n: int):
    if n == 1:
        return [(i, True) for i in range(1, WINDOW_SIZE + 1)] + [(0, True), (0, False)]
    if n == 2:
        return [(i, True) for i in range(2, WINDOW_SIZE + 2)] + [(1, True), (0, False)]
    if n == 3:
        return [(i, True) for i in range(WINDOW_SIZE + 1, 0, -1)]
    if n == 4:
        return [(i, True) for i in range(WINDOW_SIZE + 2, 1, -1)] + [(0, False)]
    if n == 5:
        return [(i, True) for i in range(WINDOW_SIZE, 0, -1)] + [(WINDOW_SIZE + 1, True), (0, False)]
    return [(i, True) for i in range(WINDOW_SIZE, 0, -1)] + [(0, True), (WINDOW_SIZE + 1, True)]


def test_table_then_bulk_in_sequence():
    # replay_test.go order: the table, then bulk tests 1..6 on one filter, Reset before each.
    f = ReplayFilter()
    f.reset()
    _run(f, TABLE)
    for n in range(1, 7):
        f.reset()
        _run(f, _bulk(n))


@pytest.mark.parametrize("n", range(1, 7))
def test_bulk_fresh(n):
    _run(ReplayFilter(), _bulk(n))


def test_limit_rejects_without_moving_window():
    f = ReplayFilter()
    assert f.validate_counter(100, 50) is False
    assert f.validate_counter(10, 50) is True  # window did not jump to 100
    assert f.validate_counter(49, 50) is True
    assert f.validate_counter(50, 50) is False


def test_reset_forgets_everything():
    f = ReplayFilter()
    for c in range(0, 20000, 7):
        assert f.validate_counter(c, REJECT_AFTER_MESSAGES)
    f.reset()
    for c in range(0, 300):
        assert f.validate_counter(c, REJECT_AFTER_MESSAGES), c


class NaiveFilter:
    """Reference: a set of every accepted counter and the window rule of replay.go."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.last = 0

    def validate_counter(self, counter: int, limit: int) -> bool:
        if counter >= limit or counter in self.seen or self.last - counter > WINDOW_SIZE:
            return False
        self.seen.add(counter)
        self.last = max(self.last, counter)
        return True


# A walk of steps: mostly small moves around the front of the window, some jumps near the
# block (64) and ring (8192) sizes, some far behind or far ahead; resets now and then.
_step = st.one_of(
    st.integers(-80, 80),
    st.integers(-WINDOW_SIZE - 80, -WINDOW_SIZE + 80),
    st.integers(WINDOW_SIZE - 80, WINDOW_SIZE + 200),
    st.sampled_from([63, 64, 65, 127, 128, 129, 8191, 8192, 8193, 16384, -8192, -8191]),
    st.integers(-(10**6), 10**6),
)
_op = st.one_of(_step, st.just("reset"))


@settings(max_examples=300, deadline=None)
@given(
    start=st.one_of(st.just(0), st.integers(0, 1 << 20), st.integers(0, REJECT_AFTER_MESSAGES + 10)),
    ops=st.lists(_op, max_size=400),
    limit=st.one_of(st.just(REJECT_AFTER_MESSAGES), st.integers(1, 1 << 21)),
)
def test_against_naive_reference(start, ops, limit):
    f, ref = ReplayFilter(), NaiveFilter()
    pos = start
    for op in ops:
        if op == "reset":
            f.reset()
            ref = NaiveFilter()
            continue
        pos = max(0, pos + op)
        assert f.validate_counter(pos, limit) is ref.validate_counter(pos, limit), pos


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 3 * 8192), max_size=1500))
def test_dense_random_against_naive_reference(counters):
    # Dense counters in a small range: many duplicates, wraps of the ring, jumps across blocks.
    f, ref = ReplayFilter(), NaiveFilter()
    for c in counters:
        assert f.validate_counter(c, REJECT_AFTER_MESSAGES) is ref.validate_counter(c, REJECT_AFTER_MESSAGES), c


def _traffic(seed: int, n: int, reorder: int, drop: float, dup: float, jump: float) -> list[int]:
    """Counters as a lossy, reordering link delivers them: mostly ascending, many ring wraps."""
    import random

    rnd = random.Random(seed)
    out: list[int] = []
    c = rnd.choice([0, 0, rnd.randrange(1 << 40)])
    while len(out) < n:
        if rnd.random() < jump:
            c += rnd.choice([rnd.randrange(1, 200), rnd.randrange(8000, 8300), rnd.randrange(1, 1 << 16)])
        burst = list(range(c, c + reorder + 1))
        c += reorder + 1
        rnd.shuffle(burst)
        for x in burst:
            if rnd.random() < drop:
                continue
            out.append(x)
            if out and rnd.random() < dup:
                out.append(rnd.choice(out[-WINDOW_SIZE - 50 :]))
    return out


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    reorder=st.sampled_from([0, 0, 1, 3, 8, 40]),
    drop=st.sampled_from([0.0, 0.01, 0.3, 0.9]),
    dup=st.sampled_from([0.0, 0.05, 0.3]),
    jump=st.sampled_from([0.0, 0.001, 0.02]),
)
def test_traffic_against_naive_reference(seed, reorder, drop, dup, jump):
    f, ref = ReplayFilter(), NaiveFilter()
    for c in _traffic(seed, 20000, reorder, drop, dup, jump):
        assert f.validate_counter(c, REJECT_AFTER_MESSAGES) is ref.validate_counter(c, REJECT_AFTER_MESSAGES), c


def test_late_arrival_after_ring_wraps_in_order():
    # In-order traffic reuses ring slots every 8192 counters; each new block must be cleared.
    f = ReplayFilter()
    for c in range(3 * 8192):
        if c % 100 != 7:  # hold back some counters, deliver them late
            assert f.validate_counter(c, REJECT_AFTER_MESSAGES)
    last = 3 * 8192 - 1
    for c in range(3 * 8192):
        if c % 100 == 7:
            assert f.validate_counter(c, REJECT_AFTER_MESSAGES) is (last - c <= WINDOW_SIZE), c


@pytest.mark.parametrize("gap", [2, 63, 64, 65, 100, 127 * 64, 127 * 64 + 1, 8191, 8192, 8193, 9000])
@pytest.mark.parametrize("base", [0, 8000, 8150, 8191, 8192, 12345, 16383])
def test_jump_then_fill_behind(gap, base):
    # Accept every counter up to base, jump ahead by gap (clearing a run that may wrap the ring),
    # then every counter skipped over and still in the window must be accepted exactly once.
    f, ref = ReplayFilter(), NaiveFilter()
    for c in range(base + 1):
        f.validate_counter(c, REJECT_AFTER_MESSAGES)
        ref.validate_counter(c, REJECT_AFTER_MESSAGES)
    top = base + gap
    for c in [top, *range(top - 1, max(-1, top - WINDOW_SIZE - 200), -1), top + 1, top - 3]:
        assert f.validate_counter(c, REJECT_AFTER_MESSAGES) is ref.validate_counter(c, REJECT_AFTER_MESSAGES), c
