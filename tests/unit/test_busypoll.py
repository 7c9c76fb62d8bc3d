"""proto/busypoll.py: when the data plane spins instead of sleeping (fake clock)."""

from __future__ import annotations

import pytest

from wgdisco.proto.busypoll import MAX_SCORE, PROBE_EVERY, BusyPoll


def test_spins_only_after_sending() -> None:
    bp = BusyPoll(window=500e-6)
    assert bp.deadline(10.0, sent=False) == 0.0
    assert bp.deadline(10.0, sent=True) == pytest.approx(10.0005)


def test_zero_window_never_spins() -> None:
    bp = BusyPoll(window=0.0)
    assert bp.deadline(1.0, sent=True) == 0.0


def test_misses_stop_spinning_and_a_probe_comes_back() -> None:
    bp = BusyPoll()
    now = 100.0
    while bp.score:  # every spin runs out: a peer far away
        assert bp.deadline(now, sent=True)
        bp.result(bp.window, hit=False)
        now += 0.01
    spins = 0
    for _ in range(PROBE_EVERY * 3):
        if bp.deadline(now, sent=True):
            spins += 1
            bp.result(bp.window, hit=False)
        now += 0.01
    assert spins == 3  # one probe in PROBE_EVERY chances
    # a probe that hits turns spinning back on
    while not bp.deadline(now, sent=True):
        now += 0.01
    bp.result(100e-6, hit=True)
    assert bp.score == 1
    assert bp.deadline(now, sent=True)


def test_hits_raise_the_score_up_to_its_cap() -> None:
    bp = BusyPoll()
    for _ in range(3 * MAX_SCORE):
        bp.result(50e-6, hit=True)
    assert bp.score == MAX_SCORE
    assert bp.hits == 3 * MAX_SCORE and bp.misses == 0


def test_budget_caps_the_share_of_time_spent_spinning() -> None:
    bp = BusyPoll(window=0.01, budget=0.10, period=1.0)
    now, spun = 50.0, 0.0
    for _ in range(1000):  # one chance per millisecond for one second, every spin a hit
        if bp.deadline(now, sent=True):
            bp.result(0.01, hit=True)
            spun += 0.01
        now += 0.001
    assert spun <= 0.10 + 0.01  # the spin that crosses the budget still ends
    # a new period gives a new budget
    assert bp.deadline(now + 1.0, sent=True)


def test_negative_durations_are_not_credited() -> None:
    bp = BusyPoll()
    bp.result(-1.0, hit=True)
    assert bp.spent == 0.0 and bp.total_spent == 0.0


def test_total_spent_survives_the_budget_period() -> None:
    bp = BusyPoll(period=1.0)
    assert bp.deadline(10.0, sent=True)
    bp.result(0.002, hit=True)
    assert bp.deadline(12.0, sent=True)  # a new period: spent restarts, the total does not
    bp.result(0.003, hit=False)
    assert bp.spent == pytest.approx(0.003) and bp.total_spent == pytest.approx(0.005)
