"""LookupSchedule (proto/lookups.py) on its own, on a fake clock: when peers are looked up over
unicast DNS-SD (LookupWanted), the mesh's browse schedule (BrowseWanted) and which browsed keys
are looked up."""

from __future__ import annotations

import copy
import random

import pytest

from wgdisco.proto.events import BrowseWanted, LookupWanted
from wgdisco.proto.lookups import LookupSchedule, Timing

A, B, C = b"A" * 32, b"B" * 32, b"C" * 32
T0 = 1000.0


def schedule(seed: int = 7, peers: tuple[bytes, ...] = (), **kw: object) -> LookupSchedule:
    mesh = bool(kw.pop("mesh", False))
    s = LookupSchedule(rng=random.Random(seed).randbytes, timing=Timing(**kw), mesh=mesh)  # type: ignore[arg-type]
    for public in peers:
        s.add_peer(public, T0)
    return s


def step(s: LookupSchedule, now: float, paths: dict[bytes, tuple[bool, float | None]]) -> list[object]:
    """handle_timer at ``now`` if due; the events it gave."""
    due = s.next_deadline()
    if due is not None and due <= now:
        s.handle_timer(now, paths)
    return s.pop_events()


def looked(events: list[object]) -> list[bytes]:
    return [k for e in events if isinstance(e, LookupWanted) for k in e.peers]


def due_times(s: LookupSchedule, paths: dict[bytes, bool], until: float, now: float = T0) -> dict[bytes, list[float]]:
    """Step the fake clock from one deadline to the next up to ``until``; when each peer was
    looked up (relative to T0)."""
    view = {p: (v, None) for p, v in paths.items()}
    out: dict[bytes, list[float]] = {p: [] for p in paths}
    while now <= until:
        for public in looked(step(s, now, view)):
            out[public].append(round(now - T0, 6))
        nxt = s.next_deadline()
        assert nxt is not None and nxt > now, (nxt, now)
        now = nxt
    return out


def gaps(times: list[float]) -> list[float]:
    return [round(y - x, 6) for x, y in zip(times, times[1:])]


def test_a_peer_without_a_path_is_due_at_once_then_on_a_growing_schedule_capped_at_poll_interval() -> None:
    s = schedule(peers=(A,))  # first 0.5 s, PollInterval 10 s
    times = due_times(s, {A: False}, T0 + 80)[A]
    assert times[0] == 0
    # every 0.5 s for the first 2 s (both ends of a pair usually start together), then growing
    assert gaps(times) == [0.5] * 5 + [1, 2, 4, 8] + [10] * 6
    assert not s.is_regular(A)
    assert step(s, T0 + times[-1] + 9.99, {A: (False, None)}) == []  # nothing between two turns


def test_the_backoff_cap_is_poll_interval() -> None:
    s = schedule(peers=(A,), poll_interval=3.0)
    assert gaps(due_times(s, {A: False}, T0 + 20)[A]) == [0.5] * 5 + [1, 2] + [3] * 4


def test_peers_with_a_path_are_looked_up_every_poll_interval_or_up_to_15_percent_sooner_not_in_lockstep() -> None:
    s = schedule(peers=(A, B))
    got = due_times(s, {A: True, B: True}, T0 + 500)
    for public in (A, B):
        assert got[public][0] == 0  # never looked up: at once
        # never later than PollInterval: a call= is read within it (the idle bound, issue 26)
        assert all(8.5 <= g <= 10.0 for g in gaps(got[public])), gaps(got[public])
        assert len(set(gaps(got[public]))) > 1  # jittered, not a fixed period
        assert s.is_regular(public)
    assert got[A][1:] != got[B][1:]  # two peers drift apart: no lockstep


def test_a_regular_peer_whose_session_goes_quiet_is_checked_then_and_looked_up_at_once() -> None:
    s = schedule(peers=(A,))
    assert looked(step(s, T0, {A: (True, T0 + 3)})) == [A]  # regular; its session is quiet at T0 + 3
    assert s.next_deadline() == T0 + 3  # the quiet check, not the regular turn ~10 s later
    assert looked(step(s, T0 + 3, {A: (False, None)})) == [A]  # lost: at once
    assert not s.is_regular(A)
    assert s.next_deadline() == T0 + 3.5  # then 0.5, 1, 2 … again
    assert looked(step(s, T0 + 3.5, {A: (False, None)})) == [A] and s.next_deadline() == T0 + 4.5


def test_a_quiet_check_that_finds_the_path_alive_waits_for_the_next_one() -> None:
    s = schedule(peers=(A,))
    step(s, T0, {A: (True, T0 + 3)})
    assert looked(step(s, T0 + 3, {A: (True, T0 + 6)})) == []  # still live: no lookup
    assert s.is_regular(A) and s.next_deadline() == T0 + 6


def test_look_now_and_a_lost_path() -> None:
    s = schedule(peers=(A, B))
    step(s, T0, {A: (True, None), B: (True, None)})
    s.look_now(A, T0 + 1)  # looked at again, still regular
    assert s.is_regular(A) and looked(step(s, T0 + 1, {A: (True, None), B: (True, None)})) == [A]
    s.look_now(B, T0 + 2, lost=True)  # data to it went unanswered: its path is in doubt
    assert not s.is_regular(B)
    assert looked(step(s, T0 + 2, {A: (True, None), B: (False, None)})) == [B]
    assert s.next_deadline() == T0 + 2.25  # sooner than a new peer's 0.5 s: it may be publishing now
    assert looked(step(s, T0 + 2.25, {A: (True, None), B: (False, None)})) == [B]
    assert s.next_deadline() == T0 + 2.75


def test_our_record_changing_looks_peers_without_a_path_at_once_and_resets_browsing() -> None:
    s = schedule(peers=(A, B), mesh=True)
    due_times(s, {A: False, B: False}, T0 + 20)  # well into the backoff: 8 s steps
    later = s.next_deadline()
    assert later is not None and later > T0 + 21
    s.record_changed([A], T0 + 21)
    events = step(s, T0 + 21, {A: (False, None), B: (False, None)})
    assert looked(events) == [A]  # B was not named: it keeps its time
    assert any(isinstance(e, BrowseWanted) for e in events)  # the PTR set at once too
    assert s.next_deadline() == T0 + 21.5
    # and A is on the first seconds' 0.5 s steps again (B now publishes too, say)
    for t in (21.5, 22.0, 22.5, 23.0):
        assert looked(step(s, T0 + t, {A: (False, None), B: (False, None)})) == [A]
        assert s.next_deadline() == T0 + t + 0.5


def test_the_mesh_ptr_set_is_browsed_on_the_growing_schedule() -> None:
    s = schedule(mesh=True)
    due, now = [], T0
    while now <= T0 + 60:
        if any(isinstance(e, BrowseWanted) for e in step(s, now, {})):
            due.append(round(now - T0, 6))
        nxt = s.next_deadline()
        assert nxt is not None and nxt > now
        now = nxt
    assert due[:7] == [0, 0.5, 1.5, 3.5, 7.5, 15.5, 25.5]
    assert set(gaps(due[5:])) == {10}
    plain = schedule()
    assert plain.next_deadline() is None and step(plain, T0, {}) == []


def test_nothing_is_scheduled_without_unicast_dns_sd() -> None:
    s = LookupSchedule(rng=random.Random(1).randbytes, mesh=True, enabled=False)
    s.add_peer(A, T0)
    s.look_now(A, T0, lost=True)
    assert s.next_deadline() is None


def test_browse_lookups_skip_known_and_rejected_keys_and_are_capped() -> None:
    s = schedule(mesh=True, browse_lookups=2)
    s.browse_found([A, A, B, C, b"D" * 32, b"E" * 32], {A}, T0)
    assert looked(s.pop_events()) == [B, C]  # not a known key, not twice, at most 2
    assert s.counters == {"mesh-browse-lookups-deferred": 1}
    s.browse_found([B], set(), T0)
    assert looked(s.pop_events()) == [B] and s.counters == {"mesh-browse-lookups-deferred": 1}


def test_browsed_keys_beyond_a_round_are_looked_up_in_later_rounds_not_at_the_next_browse() -> None:
    s = schedule(mesh=True, browse_lookups=2)  # browse_round 1 s
    step(s, T0, {})  # the first browse, at once; the next ones 0.5, 1, 2 … s later
    keys = [bytes([i]) * 32 for i in range(7)]
    s.browse_found(keys, set(), T0)
    assert looked(s.pop_events()) == keys[:2]
    s.add_peer(keys[2], T0 + 0.5)  # admitted meanwhile (its own lookup): a peer's schedule, not a round
    assert looked(step(s, T0 + 0.5, {keys[2]: (False, None)})) == [keys[2]]
    p2 = {keys[2]: (False, None)}
    rounds = lambda now: [k for k in looked(step(s, now, p2)) if k != keys[2]]  # noqa: E731 (2 is a peer now)
    assert rounds(T0 + 1) == keys[3:5]  # a round a second, not one per browse
    assert rounds(T0 + 2) == keys[5:]
    later = [k for i in range(1, 6) for k in rounds(T0 + 2 + i)]
    assert not set(later) & set(keys[3:])  # each looked up once
    assert s.counters["mesh-browse-lookups-deferred"] == 2  # two rounds left work for later


def test_a_new_browse_replaces_the_keys_still_waiting_and_the_wait_is_capped() -> None:
    s = schedule(mesh=True, browse_lookups=1, found_kept=3)
    keys = [bytes([i]) * 32 for i in range(6)]
    s.browse_found(keys, set(), T0)  # three kept: 0 now, 1 and 2 wait; 3.. dropped (counted)
    assert looked(s.pop_events()) == keys[:1] and s.counters["mesh-browse-keys-dropped"] == 1
    s.browse_found([keys[4], keys[2]], set(), T0 + 0.5)  # 1 left the zone: no longer waits
    assert looked(s.pop_events()) == [keys[4]]
    assert looked(step(s, T0 + 1.5, {})) == [keys[2]]
    assert looked(step(s, T0 + 2.5, {})) == []  # nothing waits any more


def test_rejected_keys_are_not_looked_up_for_stranger_ttl() -> None:
    s = schedule(mesh=True)  # 600 s
    s.reject(A, T0)
    s.browse_found([A, B], set(), T0 + 599.9)
    assert looked(s.pop_events()) == [B]
    s.browse_found([A, B], set(), T0 + 600)
    assert looked(s.pop_events()) == [A, B]
    assert A not in s.rejected  # expired, not just skipped


def test_rejected_keys_are_capped_oldest_forgotten_first() -> None:
    s = schedule(mesh=True, rejected_kept=2)
    for i, public in enumerate((A, B, C)):
        s.reject(public, T0 + i)
    assert list(s.rejected) == [B, C]
    s.browse_found([A, B, C], set(), T0 + 10)
    assert looked(s.pop_events()) == [A]
    s.reject(B, T0 + 20)  # rejected again: the newest now
    assert list(s.rejected) == [C, B]


def test_a_forgotten_peer_is_never_due_again() -> None:
    s = schedule(peers=(A, B))
    due_times(s, {A: True, B: True}, T0 + 30)
    s.forget(A)
    got = due_times(s, {A: True, B: True}, T0 + 60, now=T0 + 31)
    assert got[A] == [] and got[B]


def test_next_deadline_is_a_pure_query() -> None:
    s = schedule(peers=(A, B), mesh=True)
    step(s, T0, {A: (True, T0 + 4), B: (False, None)})
    state = lambda: copy.deepcopy({k: v for k, v in vars(s).items() if k != "_rng"})  # noqa: E731
    before = state()
    for _ in range(3):
        s.next_deadline()
    assert state() == before


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_same_seed_gives_the_same_schedule(seed: int) -> None:
    one = due_times(schedule(seed, peers=(A,)), {A: True}, T0 + 100)
    assert one == due_times(schedule(seed, peers=(A,)), {A: True}, T0 + 100)
