"""LookupSchedule (proto/lookups.py) on its own, on a fake clock: when peers are looked up over
unicast DNS-SD, the mesh's browse schedule and which browsed keys are looked up."""

from __future__ import annotations

import random

import pytest

from wgdisco.proto.lookups import LookupSchedule, Timing

A, B, C = b"A" * 32, b"B" * 32, b"C" * 32
T0 = 1000.0


def schedule(seed: int = 7, **kw: object) -> LookupSchedule:
    mesh = bool(kw.pop("mesh", False))
    return LookupSchedule(rng=random.Random(seed).randbytes, timing=Timing(**kw), mesh=mesh)  # type: ignore[arg-type]


def due_times(s: LookupSchedule, paths: dict[bytes, bool], until: float, now: float = T0,
              ) -> dict[bytes, list[float]]:
    """Step the fake clock from one scheduled time to the next up to ``until``; when each peer
    was due (relative to T0)."""
    out: dict[bytes, list[float]] = {p: [] for p in paths}
    while now <= until:
        for public in s.due(now, paths):
            out[public].append(round(now - T0, 6))
        now = min(s.scheduled(p, now) for p in paths)
    return out


def gaps(times: list[float]) -> list[float]:
    return [round(y - x, 6) for x, y in zip(times, times[1:])]


def test_a_peer_without_a_path_is_due_at_once_then_on_a_growing_schedule_capped_at_poll_interval() -> None:
    s = schedule()  # first 0.5 s, PollInterval 10 s
    times = due_times(s, {A: False}, T0 + 80)[A]
    assert times[0] == 0
    assert gaps(times) == [0.5, 1, 2, 4, 8] + [10] * 6
    assert not s.is_regular(A)
    assert s.due(T0 + times[-1] + 9.99, {A: False}) == []  # nothing between two turns


def test_the_backoff_cap_is_poll_interval() -> None:
    s = schedule(poll_interval=3.0)
    assert gaps(due_times(s, {A: False}, T0 + 20)[A]) == [0.5, 1, 2] + [3] * 5


def test_peers_with_a_path_are_looked_up_every_poll_interval_within_ten_percent_not_in_lockstep() -> None:
    s = schedule()
    got = due_times(s, {A: True, B: True}, T0 + 500)
    for public in (A, B):
        assert got[public][0] == 0  # never looked up: at once
        assert all(9.0 <= g <= 11.0 for g in gaps(got[public])), gaps(got[public])
        assert len(set(gaps(got[public]))) > 1  # jittered, not a fixed period
        assert s.is_regular(public)
    assert got[A][1:] != got[B][1:]  # two peers drift apart: no lockstep


def test_a_regular_peer_that_loses_its_path_is_due_at_once_then_on_the_growing_schedule() -> None:
    s = schedule()
    assert s.due(T0, {A: True}) == [A]
    assert s.due(T0 + 3, {A: True}) == []
    assert s.due(T0 + 3, {A: False}) == [A]  # lost: at once, not at its regular time
    assert not s.is_regular(A)
    assert s.scheduled(A, T0 + 3) == T0 + 3.5  # then 0.5, 1, 2 … again
    assert s.due(T0 + 3.5, {A: False}) == [A] and s.scheduled(A, T0 + 3.5) == T0 + 4.5


def test_look_now_and_a_lost_path() -> None:
    s = schedule()
    s.due(T0, {A: True, B: True})
    s.look_now(A, T0 + 1)  # looked at again, still regular
    assert s.is_regular(A) and s.due(T0 + 1, {A: True, B: True}) == [A]
    s.look_now(B, T0 + 2, lost=True)  # data to it went unanswered: its path is in doubt
    assert not s.is_regular(B)
    assert s.due(T0 + 2, {A: True, B: False}) == [B] and s.scheduled(B, T0 + 2) == T0 + 2.5


def test_our_record_changing_looks_peers_without_a_path_at_once_and_resets_browsing() -> None:
    s = schedule(mesh=True)
    due_times(s, {A: False, B: False}, T0 + 20)  # well into the backoff: 8 s steps
    assert s.scheduled(A, T0 + 20) > T0 + 20
    b_at = s.scheduled(B, T0 + 20)
    for now in (T0, T0 + 0.5, T0 + 1.5, T0 + 3.5, T0 + 7.5):
        assert s.browse_due(now)
    s.record_changed([A], T0 + 21)
    assert s.due(T0 + 21, {A: False, B: False}) == [A]  # B was not named: it keeps its time
    assert s.scheduled(A, T0 + 21) == T0 + 21.5 and s.scheduled(B, T0 + 21) == b_at
    assert s.browse_due(T0 + 21) and not s.browse_due(T0 + 21.4) and s.browse_due(T0 + 21.5)


def test_the_mesh_ptr_set_is_browsed_on_the_growing_schedule() -> None:
    s = schedule(mesh=True)
    due = []
    now = T0
    while now <= T0 + 60:
        if s.browse_due(now):
            due.append(round(now - T0, 6))
        nxt = s.next_browse(now)
        assert nxt is not None and nxt >= now
        now = nxt if nxt > now else now + 0.01
    assert due[:7] == [0, 0.5, 1.5, 3.5, 7.5, 15.5, 25.5]
    assert set(gaps(due[5:])) == {10}
    plain = schedule()
    assert not plain.browse_due(T0) and plain.next_browse(T0) is None


def test_browse_lookups_skip_known_and_rejected_keys_and_are_capped() -> None:
    s = schedule(mesh=True, browse_lookups=2)
    found = [A, A, B, C, b"D" * 32, b"E" * 32]
    assert s.browse_lookups(found, {A}, T0) == [B, C]  # not a known key, not twice, at most 2
    assert s.deferred == 1
    assert s.browse_lookups([B], set(), T0) == [B] and s.deferred == 1


def test_rejected_keys_are_not_looked_up_for_stranger_ttl() -> None:
    s = schedule(mesh=True)  # 600 s
    s.reject(A, T0)
    assert s.browse_lookups([A, B], set(), T0 + 599.9) == [B]
    assert s.browse_lookups([A, B], set(), T0 + 600) == [A, B]
    assert A not in s.rejected  # expired, not just skipped


def test_rejected_keys_are_capped_oldest_forgotten_first() -> None:
    s = schedule(mesh=True, rejected_kept=2)
    for i, public in enumerate((A, B, C)):
        s.reject(public, T0 + i)
    assert list(s.rejected) == [B, C]
    assert s.browse_lookups([A, B, C], set(), T0 + 10) == [A]
    s.reject(B, T0 + 20)  # rejected again: the newest now
    assert list(s.rejected) == [C, B]


def test_a_forgotten_peer_starts_afresh() -> None:
    s = schedule()
    due_times(s, {A: True}, T0 + 30)
    s.forget(A)
    assert not s.is_regular(A) and s.scheduled(A, T0 + 31) == T0 + 31
    assert s.due(T0 + 31, {A: False}) == [A] and s.scheduled(A, T0 + 31) == T0 + 31.5


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_same_seed_gives_the_same_schedule(seed: int) -> None:
    one = due_times(schedule(seed), {A: True}, T0 + 100)
    assert one == due_times(schedule(seed), {A: True}, T0 + 100)
