"""Birthday punching's bounds and bookkeeping (proto/birthday.py), on a fake clock.

The whole exchange through simulated NATs is in test_node.py; here: the rate cap, the per-attempt
caps, the backoff, which sockets open and close, and the birthday odds the defaults rest on.
"""

from __future__ import annotations

import math

import pytest

from tests.unit.test_device import Rng
from wgdisco.errors import LocalError
from wgdisco.proto.birthday import (
    EASY, HARD, PORT_MAX, PORT_MIN, AttemptFailed, BirthdayPuncher, SocketsClosed, SocketsWanted, Timing, public_ipv4,
)

PEER, OTHER = b"p" * 32, b"q" * 32


def run(b: BirthdayPuncher, start: float, seconds: float, step: float = 0.01) -> list[tuple[float, object]]:
    """Call plan() every ``step`` s; every send with its time."""
    out = []
    t = start
    while t < start + seconds:
        out += [(t, s) for s in b.plan(t)]
        t = round(t + step, 6)
    return out


def peak(sends: list[tuple[float, object]]) -> int:
    times = [t for t, _ in sends]
    return max((sum(1 for u in times if t <= u < t + 1) for t in times), default=0)


def test_easy_role_sends_at_most_probes_distinct_random_ports_at_the_rate_cap() -> None:
    b = BirthdayPuncher(rng=Rng(1))
    assert b.start(PEER, EASY, ["203.0.113.1"], 0.0)
    sends = run(b, 0.0, 30.0)
    ports = [s.port for _, s in sends]
    assert len(ports) == 2048 == len(set(ports))  # never the same port twice in an attempt
    assert all(PORT_MIN <= p <= PORT_MAX for p in ports)
    assert {s.host for _, s in sends} == {"203.0.113.1"} and all(s.socket is None for _, s in sends)
    assert peak(sends) <= 100 + 10  # the rate, plus the burst once
    assert sends[-1][0] >= 2048 / 100 - 1  # paced: 20 s for 2048
    assert b.probes_sent == 2048


def test_hard_role_opens_sockets_sends_from_each_and_refreshes_once_within_the_attempt() -> None:
    b = BirthdayPuncher(rng=Rng(2))
    assert b.start(PEER, HARD, [("198.51.100.1", 51820)], 5.0)
    [wanted] = b.pop_events()
    assert isinstance(wanted, SocketsWanted) and len(wanted.ids) == 256 == len(set(wanted.ids))
    sends = run(b, 5.0, 30.0)
    firsts = [s for t, s in sends if t < 5.0 + 15]
    assert sorted(s.socket for s in firsts) == sorted(wanted.ids)  # one from every socket
    assert len(sends) == 2 * 256  # and again after `refresh` (15 s) to keep the mappings
    assert all(t == 5.0 for t, _ in sends[:256])  # one round at once: every port open, the best odds
    assert peak(sends) == 256 and all(t == 20.0 for t, _ in sends[256:])
    # the attempt ends after attempt_time (25 s): sockets closed, a backoff
    events = b.pop_events()
    assert isinstance(events[0], SocketsClosed) and set(events[0].ids) == set(wanted.ids)
    assert isinstance(events[1], AttemptFailed) and events[1].pause == 30.0
    assert not b.running(PEER) and not b.may_start(PEER, 31.0) and b.may_start(PEER, 60.0)


def test_backoff_doubles_up_to_the_maximum_and_a_win_resets_it() -> None:
    t = Timing(sockets=2)
    b = BirthdayPuncher(rng=Rng(3), timing=t)
    now, pauses = 0.0, []
    for _ in range(7):
        assert b.start(PEER, HARD, ["x"], now)
        run(b, now, t.attempt_time + 0.02, step=0.5)
        [pause] = [e.pause for e in b.pop_events() if isinstance(e, AttemptFailed)]
        pauses.append(pause)
        now += t.attempt_time + pause + 1
    assert pauses == [30, 60, 120, 240, 480, 600, 600]
    assert b.start(PEER, HARD, ["x"], now)
    b.won(PEER, None, now + 1)
    assert b.stats(PEER)[1:] == (1, 0) and b.may_start(PEER, now + 2)


def test_won_keeps_the_winning_socket_and_closes_the_rest_release_closes_it() -> None:
    b = BirthdayPuncher(rng=Rng(4), timing=Timing(sockets=4))
    b.start(PEER, HARD, ["x"], 0.0)
    ids = b.pop_events()[0].ids
    b.won(PEER, ids[2], 1.0)
    [closed] = b.pop_events()
    assert set(closed.ids) == set(ids) - {ids[2]} and b.sockets(PEER) == (ids[2],) and b.kept(PEER) == ids[2]
    assert b.plan(2.0) == []  # no more probes after a win
    b.release(PEER)
    assert b.pop_events() == [SocketsClosed((ids[2],))] and b.sockets(PEER) == ()


def test_a_win_over_the_listen_socket_closes_every_extra_socket() -> None:
    b = BirthdayPuncher(rng=Rng(5), timing=Timing(sockets=3))
    b.start(PEER, HARD, ["x"], 0.0)
    ids = b.pop_events()[0].ids
    b.won(PEER, None, 1.0)
    assert b.pop_events() == [SocketsClosed(ids)] and b.kept(PEER) is None


def test_the_rate_cap_is_shared_by_all_peers() -> None:
    b = BirthdayPuncher(rng=Rng(6))
    b.start(PEER, EASY, ["203.0.113.1"], 0.0)
    b.start(OTHER, EASY, ["198.51.100.1"], 0.0)
    sends = run(b, 0.0, 5.0)
    assert peak(sends) <= 110 and {s.peer for _, s in sends} == {PEER, OTHER}


def test_removing_a_peer_closes_its_sockets_and_nothing_starts_without_a_target() -> None:
    b = BirthdayPuncher(rng=Rng(7), timing=Timing(sockets=2))
    assert not b.start(PEER, EASY, [], 0.0)
    b.start(PEER, HARD, ["x"], 0.0)
    ids = b.pop_events()[0].ids
    b.remove_peer(PEER)
    assert b.pop_events() == [SocketsClosed(ids)] and not b.running(PEER)
    with pytest.raises(LocalError):
        b.start(PEER, "medium", ["x"], 0.0)


def test_targets_are_capped_and_deduplicated() -> None:
    b = BirthdayPuncher(rng=Rng(8))
    b.start(PEER, EASY, ["203.0.113.1", "203.0.113.1", "198.51.100.1", "192.0.2.1"], 0.0)
    hosts = {s.host for _, s in run(b, 0.0, 2.0)}
    assert hosts == {"203.0.113.1", "198.51.100.1"}


def test_the_documented_odds() -> None:
    """256 open ports of 64,512 and 2048 probes: a hit with 99.9 % odds or better (the analysis
    the defaults come from); the expected first hit near probe 250 (2.5 s at 100/s)."""
    t = Timing()
    span = PORT_MAX - PORT_MIN + 1
    miss = math.prod((span - t.sockets - k) / (span - k) for k in range(t.probes))  # without replacement
    assert 1 - miss >= 0.999
    assert span / (t.sockets + 1) < 260


@pytest.mark.parametrize("host, public", [
    ("203.0.113.7", True), ("198.51.100.1", True), ("10.1.0.2", False), ("100.64.3.1", False),
    ("192.168.1.1", False), ("172.20.0.1", False), ("::ffff:203.0.113.7", True), ("2001:db8::1", False),
    ("fe80::1%eth0", False), ("not an address", False),
])
def test_public_ipv4(host: str, public: bool) -> None:
    assert public_ipv4(host) is public


def test_one_hard_side_attempt_at_a_time() -> None:
    b = BirthdayPuncher(rng=Rng(9), timing=Timing(sockets=3))
    assert b.start(PEER, HARD, ["x"], 0.0)
    assert not b.start(OTHER, HARD, ["y"], 0.0)  # it waits: 256 sockets, not 256 per peer
    assert b.start(OTHER, EASY, ["203.0.113.1"], 0.0)  # the easy role opens no socket
    b.won(PEER, None, 1.0)
    assert b.start(OTHER, HARD, ["y"], 1.0) is False  # OTHER has its easy attempt running
