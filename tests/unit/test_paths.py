"""PathSelector with a fake clock: punching schedule, LAN first, hysteresis, death, hard NAT."""

from __future__ import annotations

import heapq
import itertools

import pytest

from wgdisco.errors import LocalError
from wgdisco.proto.paths import (
    FAILED,
    PROBING,
    REASONS,
    UNTESTED,
    VERIFIED,
    Candidate,
    PathSelector,
    Timing,
    address_family,
    host_kind,
)

P = b"P" * 32  # the peer
Q = b"Q" * 32

LAN = ("192.168.1.20", 51820)
LAN6 = ("fd00::20", 51820)
PUB = ("203.0.113.20", 51820)
PUB2 = ("198.51.100.20", 40000)
PUB6 = ("2001:db8::20", 51820)


def lan(addr=LAN, source="mdns") -> Candidate:
    return Candidate(addr, "lan", source)


def srflx(addr=PUB, source="dns") -> Candidate:
    return Candidate(addr, "srflx", source)


class Net:
    """Probes answered after `rtt` from reachable addresses (from `open_at` on), else time out.

    Steps the clock from event to event, with next_time() choosing when the selector wakes up.
    With ``traffic`` data flows to every peer all the time (``on_data`` at every step): the
    selector's rules while a path is in use; without it the peers are idle (issue 26).
    """

    def __init__(self, sel: PathSelector, rtts: dict, *, timeout: float = 3.0, open_at: dict | None = None,
                 traffic: bool = True):
        self.traffic = traffic
        self.sel, self.rtts, self.timeout = sel, dict(rtts), timeout
        self.open_at = open_at or {}
        self.now = 0.0
        self.sent: list[tuple[float, bytes, object]] = []
        self._events: list = []
        self._seq = itertools.count()

    def run(self, until: float) -> None:
        for _ in range(200_000):
            if self.traffic:
                for peer in self.sel.peers:
                    self.sel.on_data(peer, self.now, self.now)
            for peer, addr in self.sel.probe_plan(self.now):
                self.sent.append((self.now, peer, addr))
                rtt = self.rtts.get(addr)
                if rtt is not None and self.now >= self.open_at.get(addr, 0.0):
                    self._push(self.now + rtt, "result", peer, addr, rtt)
                else:
                    self._push(self.now + self.timeout, "timeout", peer, addr, None)
            wake = [self._events[0][0]] if self._events else []
            selector_wake = self.sel.next_time(self.now)
            if selector_wake is not None:
                wake.append(selector_wake)
            nxt = min(wake, default=until)
            if nxt > until:
                self.now = until
                return
            self.now = max(nxt, self.now)
            while self._events and self._events[0][0] <= self.now:
                _, _, kind, peer, addr, rtt = heapq.heappop(self._events)
                if kind == "result":
                    self.sel.on_probe_result(peer, addr, rtt, self.now)
                else:
                    self.sel.on_probe_timeout(peer, addr, self.now)
            if self.now >= until:
                return
        raise AssertionError("simulation did not settle (next_time stuck?)")

    def _push(self, t, kind, peer, addr, rtt) -> None:
        heapq.heappush(self._events, (t, next(self._seq), kind, peer, addr, rtt))

    def times(self, addr) -> list[float]:
        return [round(t, 3) for t, _, a in self.sent if a == addr]


# ------------------------------------------------------------------ basics


def test_no_candidates() -> None:
    sel = PathSelector()
    assert sel.decision(P, 0.0) == (None, "no-candidates")
    sel.add_peer(P)
    assert sel.decision(P, 0.0) == (None, "no-candidates")
    assert sel.probe_plan(0.0) == [] and sel.next_time(0.0) is None


def test_bad_input_is_a_local_error() -> None:
    sel = PathSelector()
    with pytest.raises(LocalError):
        sel.add_candidates(P, [Candidate(PUB, "relay", "dns")], 0.0)
    with pytest.raises(LocalError):
        sel.add_candidates(P, [Candidate(PUB, "srflx", "carrier-pigeon")], 0.0)
    with pytest.raises(LocalError):
        PathSelector(own_mapping="symmetric")
    with pytest.raises(LocalError):
        sel.on_authenticated(P, PUB, 0.0, kind="tcp")


def test_helpers() -> None:
    import ipaddress

    assert address_family(("10.0.0.1", 1)) == 4
    assert address_family(("::ffff:10.0.0.1", 1, 0, 0)) == 4
    assert address_family(("fe80::1%eth0", 1, 0, 2)) == 6
    assert address_family("opaque") == 0 and address_family(7) == 0
    nets = [ipaddress.ip_network("192.168.1.0/24"), ipaddress.ip_network("2001:db8:1::/64")]
    assert host_kind("192.168.1.9", nets) == "lan"
    assert host_kind("::ffff:192.168.1.9", nets) == "lan"
    assert host_kind("2001:db8:1::9", nets) == "lan"
    assert host_kind("192.168.2.9", nets) == "host"


# --------------------------------------------------------- punching schedule


def test_punching_schedule_lan_and_ipv6_first_then_slowly() -> None:
    sel = PathSelector()
    sel.add_candidates(P, [srflx(PUB), Candidate(PUB6, "host", "dns"), lan(LAN)], 0.0)
    net = Net(sel, {})  # nothing answers
    net.run(100.0)
    fast = [0.0, 0.2, 0.5, 1.0, 2.0, 4.0, 8.0, 12.0, 16.0, 20.0, 24.0, 28.0]
    assert net.times(LAN) == net.times(PUB6) == net.times(PUB) == fast + [58.0, 88.0]
    first_round = [a for t, _, a in net.sent if t == 0.0]
    assert first_round == [LAN, PUB6, PUB]  # LAN, then IPv6, then the rest
    assert {p.state for p in sel.paths(P)} == {FAILED}


def test_reasons_while_punching_and_after() -> None:
    sel = PathSelector()
    sel.add_candidates(P, [srflx()], 0.0)
    net = Net(sel, {})
    assert sel.decision(P, 0.0) == (None, "probing")
    net.run(29.9)
    assert sel.decision(P, 29.9) == (None, "probing")
    net.run(31.0)
    assert sel.decision(P, 31.0) == (None, "probes-timed-out")
    assert {r for r in REASONS} >= {"probing", "probes-timed-out"}


def test_hole_opens_mid_punching() -> None:
    # The peer's NAT lets our probes in from t = 1.3 (its own probes opened it).
    sel = PathSelector()
    sel.add_candidates(P, [srflx()], 0.0)
    net = Net(sel, {PUB: 0.04}, open_at={PUB: 1.3})
    net.run(2.5)
    assert sel.decision(P, 2.5) == (PUB, "direct")
    assert net.times(PUB)[:5] == [0.0, 0.2, 0.5, 1.0, 2.0]
    assert sel.is_live(P, 2.5)
    # live: no more punching, only keepalives every 5 s
    net.run(20.0)
    assert net.times(PUB)[5:] == [7.04, 12.04, 17.04]  # from the answer at 2.04


def test_new_sighting_probes_at_once() -> None:
    sel = PathSelector()
    sel.add_candidates(P, [srflx(PUB)], 0.0)
    net = Net(sel, {})
    net.run(40.0)  # slow phase now
    sel.add_candidates(P, [srflx(PUB)], 40.0)  # the same sighting again: nothing new
    assert sel.probe_plan(40.0) == []
    sel.add_candidates(P, [srflx(PUB2)], 40.0)
    assert sorted(sel.probe_plan(40.0)) == sorted([(P, PUB), (P, PUB2)])
    assert sel.decision(P, 40.0) == (None, "probing")  # a new phase


# ------------------------------------------------------------ LAN beats public


@pytest.mark.parametrize(
    "cands,rtts,expect",
    [
        # LAN wins even when its answer comes after a faster public one
        ([srflx(PUB), lan(LAN)], {PUB: 0.010, LAN: 0.030}, (LAN, "lan")),
        ([lan(LAN), srflx(PUB)], {PUB: 0.010, LAN: 0.001}, (LAN, "lan")),
        # same class: lower RTT, if clearly so
        ([srflx(PUB), srflx(PUB2)], {PUB: 0.080, PUB2: 0.020}, (PUB2, "direct")),
        ([srflx(PUB), srflx(PUB2)], {PUB: 0.020, PUB2: 0.080}, (PUB, "direct")),
        # only the public one answers
        ([lan(LAN), srflx(PUB)], {PUB: 0.050}, (PUB, "direct")),
        # IPv6 LAN (ULA) counts as LAN
        ([srflx(PUB), lan(LAN6)], {PUB: 0.010, LAN6: 0.002}, (LAN6, "lan")),
    ],
)
def test_choice_after_punching(cands, rtts, expect) -> None:
    sel = PathSelector()
    sel.add_candidates(P, cands, 0.0)
    Net(sel, rtts).run(1.0)
    assert sel.decision(P, 1.0) == expect
    assert sel.best(P, 1.0) == expect[0]


# ---------------------------------------------------------------- hysteresis


def established(current=PUB, rtt=0.050) -> PathSelector:
    """A selector whose current path carries WireGuard traffic and has a measured RTT."""
    sel = PathSelector()
    sel.add_candidates(P, [srflx(current)], 0.0)
    sel.probe_plan(0.0)
    sel.on_probe_result(P, current, rtt, 0.0)
    sel.on_authenticated(P, current, 0.0)
    assert sel.decision(P, 0.0) == (current, "direct")
    return sel


@pytest.mark.parametrize(
    "samples,switched_after",
    [
        ([0.020], None),  # one better sample does not switch
        ([0.020, 0.020], None),
        ([0.020, 0.020, 0.020], 3),  # three do
        ([0.020, 0.020, 0.060, 0.020, 0.020], None),  # not consecutive
        ([0.020, 0.020, 0.060, 0.020, 0.020, 0.020], 6),
        ([0.040] * 5, None),  # 20 % better: not clear
        ([0.034] * 5, 3),  # 32 % and 16 ms better
    ],
)
def test_hysteresis_rtt(samples, switched_after) -> None:
    sel = established(PUB, rtt=0.050)
    sel.add_candidates(P, [srflx(PUB2)], 0.0)
    for i, rtt in enumerate(samples, 1):
        now = i * 1.0
        sel.on_authenticated(P, sel.current(P), now)  # traffic keeps flowing on the current path
        sel.on_probe_result(P, PUB2, rtt, now)
        want = PUB2 if switched_after is not None and i >= switched_after else PUB
        assert sel.best(P, now) == want, (i, rtt)


def test_hysteresis_needs_more_than_5ms() -> None:
    sel = established(PUB, rtt=0.010)
    sel.add_candidates(P, [srflx(PUB2)], 0.0)
    for i in range(1, 6):  # 40 % better but only 4 ms
        sel.on_probe_result(P, PUB2, 0.006, float(i))
    assert sel.best(P, 5.0) == PUB


def test_lan_upgrade_needs_three_answers_and_is_probed_quickly() -> None:
    sel = established(PUB, rtt=0.050)
    sel.add_candidates(P, [lan(LAN)], 0.5)
    net = Net(sel, {LAN: 0.001, PUB: 0.050})
    net.now = 0.5
    net.run(0.6)
    assert sel.best(P, 0.6) == PUB  # one answer so far
    net.run(4.0)
    assert sel.decision(P, 4.0) == (LAN, "lan")
    assert net.times(LAN)[:3] == [0.5, 1.501, 2.501]  # re-probed every confirm_interval


def test_timeout_breaks_a_streak() -> None:
    sel = established(PUB, rtt=0.050)
    sel.add_candidates(P, [lan(LAN)], 0.0)
    sel.on_probe_result(P, LAN, 0.001, 1.0)
    sel.on_probe_result(P, LAN, 0.001, 2.0)
    sel.on_probe_timeout(P, LAN, 3.0)
    sel.on_probe_result(P, LAN, 0.001, 4.0)
    assert sel.best(P, 4.0) == PUB


# ---------------------------------------------------- live path versus hints


def test_live_path_is_never_replaced_by_a_hint() -> None:
    sel = established(PUB)
    net = Net(sel, {PUB: 0.050})  # the hints never answer
    for t in range(0, 60, 3):
        net.run(float(t))
        sel.add_candidates(P, [lan(("192.168.1.%d" % t, 51820)), lan(LAN6)], float(t))
        sel.on_authenticated(P, PUB, float(t))
        assert sel.decision(P, float(t)) == (PUB, "direct")
    assert all(p.state in (UNTESTED, PROBING, FAILED) for p in sel.paths(P) if p.addr != PUB)


def test_live_path_survives_unanswered_probes() -> None:
    # a peer that does not answer probes (plain WireGuard): WireGuard traffic keeps it live
    sel = PathSelector()
    sel.on_authenticated(P, PUB, 0.0)
    for t in range(1, 40):
        sel.on_probe_timeout(P, PUB, float(t))
        sel.on_authenticated(P, PUB, float(t))
    assert sel.decision(P, 40.0) == (PUB, "direct")


def test_roaming_follows_the_authenticated_source() -> None:
    sel = established(PUB)
    sel.on_authenticated(P, PUB2, 5.0)
    assert sel.decision(P, 5.0) == (PUB2, "direct")
    info = {p.addr: p for p in sel.paths(P)}[PUB2]
    assert (info.kind, info.source, info.state) == ("prflx", "roaming", VERIFIED)
    sel.on_authenticated(P, LAN, 6.0, kind="lan")
    assert sel.decision(P, 6.0) == (LAN, "lan")


def test_withdrawn_hint_does_not_remove_the_live_path() -> None:
    sel = established(PUB)
    sel.remove_candidates(P, [PUB], 1.0)
    assert sel.best(P, 1.0) == PUB
    sel.add_candidates(P, [srflx(PUB2)], 1.0)
    sel.remove_candidates(P, [PUB2], 1.0)
    assert [p.addr for p in sel.paths(P)] == [PUB]


# ------------------------------------------------------------------ path death


def test_dead_path_falls_back_within_live_time_and_punching_restarts() -> None:
    sel = PathSelector()
    sel.add_candidates(P, [lan(LAN), srflx(PUB)], 0.0)
    net = Net(sel, {LAN: 0.001, PUB: 0.040})
    net.run(1.0)
    assert sel.decision(P, 1.0) == (LAN, "lan")
    sel.on_authenticated(P, LAN, 1.0)
    net.run(30.0)
    assert sel.decision(P, 30.0) == (LAN, "lan")
    # the LAN link goes down at t = 30
    del net.rtts[LAN]
    last_ok = {p.addr: p for p in sel.paths(P)}[LAN].last_ok
    net.run(last_ok + 14.999)
    assert sel.best(P, net.now) == LAN
    dead = last_ok + 15.0  # live_time after the last answer, despite keepalives every 5 s
    net.run(dead)
    assert sel.decision(P, dead) == (PUB, "direct")  # the verified fallback, at once
    net.run(dead + 5.0)
    # punching restarted at the moment of death (every candidate at once) and ended as soon as
    # the fallback answered; the failed LAN path is then re-probed slowly, in case it comes back
    assert [round(t - dead, 3) for t in net.times(LAN) if t >= dead - 1e-6] == [0.0]
    assert [round(t - dead, 3) for t in net.times(PUB) if t >= dead - 1e-6] == [0.0]
    assert sel.decision(P, net.now) == (PUB, "direct") and sel.is_live(P, net.now)
    assert {p.addr: p for p in sel.paths(P)}[LAN].state == FAILED


def test_silent_fallback_keeps_punching_then_gives_it_up() -> None:
    sel = PathSelector()
    sel.add_candidates(P, [lan(LAN), srflx(PUB)], 0.0)
    net = Net(sel, {LAN: 0.001, PUB: 0.040})
    net.run(1.0)
    sel.on_authenticated(P, LAN, 1.0)
    net.run(20.0)
    net.rtts.clear()  # both paths go down
    last_ok = {p.addr: p for p in sel.paths(P)}[LAN].last_ok
    dead = last_ok + 15.0
    net.run(dead)
    assert sel.decision(P, dead) == (PUB, "direct")  # verified earlier: the fallback
    net.run(dead + 8.5)
    fast = [0.0, 0.2, 0.5, 1.0, 2.0, 4.0, 8.0]
    assert [round(t - dead, 3) for t in net.times(PUB) if t >= dead - 1e-6] == fast
    # three unanswered probes (timeouts at +3.0, +3.2, +3.5) fail the fallback too
    assert sel.decision(P, net.now) == (None, "probing")


def test_dead_path_without_fallback_reports_probing() -> None:
    sel = established(PUB)
    sel.on_data(P, 14.0, 14.0)  # data flows (unanswered): silence is death
    assert sel.decision(P, 14.9) == (PUB, "direct")
    assert sel.decision(P, 15.0) == (None, "probing")
    assert (P, PUB) in sel.probe_plan(15.0)


def test_next_time_wakes_for_death() -> None:
    sel = established(PUB)
    sel.on_data(P, 0.0, 0.0)
    sel.probe_plan(0.0)
    assert sel.next_time(0.0) == 5.0  # the keepalive probe
    sel.probe_plan(5.0)
    sel.on_data(P, 10.0, 10.0)  # data flows (unanswered): silence is death
    sel.probe_plan(10.0)
    assert sel.next_time(10.0) == 15.0  # keepalive and death coincide
    assert sel.decision(P, 15.0) == (None, "probing")


# ------------------------------------------------------------------- hard NAT


def test_hard_nat_on_both_sides_stops_after_a_bounded_phase() -> None:
    timing = Timing(hard_nat_probe_budget=100)
    sel = PathSelector(own_mapping="endpoint-dependent", timing=timing)
    sel.add_peer(P, mapping="address-and-port-dependent")
    sel.add_candidates(P, [srflx(PUB), Candidate(PUB6, "host", "dns")], 0.0)
    net = Net(sel, {})
    net.run(29.0)
    assert sel.decision(P, 29.0) == (None, "probing")
    net.run(31.0)
    assert sel.decision(P, 31.0) == (None, "hard-nat-both-sides")
    assert len(net.sent) == 2 * 12  # one punching phase: 12 rounds of 2
    # an hour of fresh sightings (a hard NAT shows a new port each time): the budget holds
    for minute in range(1, 61):
        sel.add_candidates(P, [srflx(("203.0.113.20", 40000 + minute))], minute * 60.0)
        net.run(minute * 60.0 + 59.0)
    assert len(net.sent) == timing.hard_nat_probe_budget
    assert sel.decision(P, net.now) == (None, "hard-nat-both-sides")
    # what is left to do is forgetting the hinted candidates (unverified_ttl), never a probe
    net.run(net.now + 7200.0)
    assert len(net.sent) == timing.hard_nat_probe_budget and sel.paths(P) == []
    assert sel.next_time(net.now) is None


def test_one_hard_side_keeps_probing_slowly() -> None:
    sel = PathSelector(own_mapping="endpoint-dependent")
    sel.add_peer(P, mapping="endpoint-independent")
    sel.add_candidates(P, [srflx()], 0.0)
    net = Net(sel, {})
    net.run(600.0)
    assert sel.decision(P, 600.0) == (None, "probes-timed-out")
    assert len(net.sent) == 12 + 19  # 12 fast rounds, then one every 30 s


def test_hard_nat_both_sides_still_finds_the_lan() -> None:
    sel = PathSelector(own_mapping="endpoint-dependent")
    sel.add_peer(P, mapping="endpoint-dependent")
    sel.add_candidates(P, [srflx(), lan()], 0.0)
    Net(sel, {LAN: 0.001}).run(60.0)
    assert sel.decision(P, 60.0) == (LAN, "lan")


def test_mapping_change_resumes_punching() -> None:
    sel = PathSelector(own_mapping="endpoint-dependent")
    sel.add_peer(P, mapping="endpoint-dependent")
    sel.add_candidates(P, [srflx()], 0.0)
    net = Net(sel, {})
    net.run(40.0)
    assert sel.decision(P, 40.0) == (None, "hard-nat-both-sides")
    sel.set_own_mapping("endpoint-independent", 40.0)
    assert sel.probe_plan(40.0) == [(P, PUB)]
    assert sel.decision(P, 40.0) == (None, "probing")


def test_peers_are_independent() -> None:
    sel = PathSelector()
    sel.add_candidates(P, [srflx(PUB)], 0.0)
    sel.add_candidates(Q, [srflx(PUB2)], 0.0)
    Net(sel, {PUB: 0.02}).run(5.0)
    assert sel.decision(P, 5.0) == (PUB, "direct")
    assert sel.decision(Q, 5.0) == (None, "probing")
    sel.remove_peer(Q)
    assert sel.peers == frozenset({P})


def test_wired_to_real_probers() -> None:
    """The selector's plan driven through two probe.Probers: A finds B on the LAN."""
    import hashlib

    from wgdisco.proto.keys import clamp, public_key
    from wgdisco.proto.probe import Prober, ProbeResult

    a_priv, b_priv = (clamp(hashlib.blake2s(n).digest()) for n in (b"a", b"b"))
    a_pub, b_pub = public_key(a_priv), public_key(b_priv)
    rng = iter(range(10**6))
    draw = lambda n: hashlib.blake2s(next(rng).to_bytes(4, "little")).digest()[:n]  # noqa: E731
    a = Prober(a_priv, a_pub, [b_pub], rng=draw, wall=1e9)
    b = Prober(b_priv, b_pub, [a_pub], rng=draw, wall=1e9)
    sel = PathSelector()
    sel.add_candidates(b_pub, [srflx(PUB), lan(LAN)], 0.0)
    a_seen_from = ("192.168.1.10", 51820)
    now = 0.0
    while now < 5.0:
        for peer, addr in sel.probe_plan(now):
            request = a.request(peer, addr, now)
            if addr == LAN:  # only the LAN path gets through
                reply, _ = b.receive(request, a_seen_from, now + 0.0005)
                _, event = a.receive(reply, addr, now + 0.001)
                assert isinstance(event, ProbeResult) and event.observed == a_seen_from
                sel.on_probe_result(event.peer, event.addr, event.rtt, now + 0.001)
        for timeout in a.handle_timer(now):
            sel.on_probe_timeout(timeout.peer, timeout.addr, now)
        now = round(now + 0.1, 3)
    assert sel.decision(b_pub, now) == (LAN, "lan")
    # LAN answered at once, so PUB got one probe (timed out at 3 s) and waits for the next
    assert {p.addr: (p.state, p.misses) for p in sel.paths(b_pub)} == {LAN: (VERIFIED, 0), PUB: (PROBING, 1)}


# --- bounds: everything a stranger can create is capped (ARCHITECTURE.md, "Trust model") ------


def forged(i: int, n: int = 31) -> list[Candidate]:
    return [Candidate(("192.0.2.%d" % (1 + j), 20000 + i * 31 + j), "host", "mdns") for j in range(n)]


def test_candidates_are_capped_per_source_and_per_peer_and_the_verified_ones_stay() -> None:
    sel = PathSelector()
    net = Net(sel, {PUB: 0.02})
    sel.add_candidates(P, [srflx(PUB)], 0.0)
    net.run(2.0)
    assert sel.best(P, 2.0) == PUB
    for i in range(400):  # 20 forged records a second for 20 s, 31 new candidates each
        sel.add_candidates(P, forged(i), 2.0 + i / 20)
        net.run(2.0 + i / 20)  # the live path's keepalive probes go on meanwhile
    addrs = sel.addresses(P)
    assert PUB in addrs and len(addrs) <= sel.timing.max_paths
    assert sum(1 for p in sel.paths(P) if p.source == "mdns") <= sel.timing.max_per_source
    assert sel.best(P, 22.0) == PUB
    # the newest record's candidates are the ones kept (evicted: those named longest ago)
    assert {c.addr for c in forged(399)} <= addrs


def test_dns_candidates_survive_an_mdns_flood() -> None:
    sel = PathSelector()
    dns = [srflx(("198.51.100.%d" % k, 51820)) for k in range(1, 9)]
    sel.add_candidates(P, dns, 0.0)
    for i in range(100):
        sel.add_candidates(P, forged(i), float(i))
    assert {c.addr for c in dns} <= sel.addresses(P)  # another source's cap is not this one's


def test_probes_are_paid_from_a_budget() -> None:
    sel = PathSelector()
    sent = 0
    t = 0.0
    while t < 20.0:
        sel.add_candidates(P, forged(int(t * 20)), t)  # each one a new punching round
        sent += len(sel.probe_plan(t))
        t += 0.05
    assert sent <= sel.timing.probe_burst + 20 * sel.timing.probe_rate + 1
    assert sel.probes_over_budget > 0


def test_unverified_candidates_expire_when_no_sighting_names_them() -> None:
    sel = PathSelector()
    sel.add_candidates(P, forged(0, 5), 0.0)
    sel.add_candidates(P, [srflx(PUB)], 1000.0)
    sel.probe_plan(1700.0)
    assert len(sel.addresses(P)) == 6
    sel.probe_plan(1801.0)
    assert sel.addresses(P) == {PUB}  # named at 1000 s: still within 30 min


def test_a_peers_keepalive_request_stands_for_ours_on_the_deferring_side() -> None:
    # the peer's probe request every 5 s on the current path: the deferring side sends none of
    # its own keepalives while they come, the other side is unchanged; both keep the path live
    for defer, expected in ((True, 0), (False, 5)):
        sel = established(PUB)
        net = Net(sel, {PUB: 0.010})
        for t in range(10, 36, 5):
            net.run(float(t))
            sel.on_probe_request(P, PUB, float(t), defer=defer)
        net.run(36.0)
        assert len([t for t in net.times(PUB) if t > 10.0]) == expected, (defer, net.times(PUB))
        assert sel.decision(P, 36.0) == (PUB, "direct")
    # when they stop, the deferring side's own keepalives resume within 1.5 intervals
    sel = established(PUB)
    net = Net(sel, {PUB: 0.010})
    net.run(10.0)
    sel.on_probe_request(P, PUB, 10.0, defer=True)
    net.run(30.0)
    assert min(t for t in net.times(PUB) if t > 10.0) == pytest.approx(17.5, abs=0.01)
    assert sel.decision(P, 30.0) == (PUB, "direct")
    # a request from another address (not the current path) changes nothing here
    sel.on_probe_request(P, LAN, 30.0, defer=True)
    assert sel.decision(P, 30.0) == (PUB, "direct")


def currents_after(first: tuple, second: tuple) -> list:
    """A new peer with these two candidates: the current path after each one's answer (addr, rtt)."""
    sel = PathSelector()
    sel.add_candidates(P, [Candidate(a, "lan" if a in (LAN, LAN6, LAN_B) else "srflx", "mdns") for a, _ in (first, second)], 0.0)
    sel.probe_plan(0.0)
    seen = []
    for addr, rtt in (first, second):
        sel.on_probe_result(P, addr, rtt, rtt + 0.01)
        seen.append(sel.current(P))
    return seen


LAN_B = ("192.168.1.21", 51820)  # the member's second IPv4 address on the same LAN


def test_one_faster_answer_on_the_other_lan_address_does_not_switch_before_traffic() -> None:
    # two addresses of one class on one LAN: which answers first is noise (tens of ms of it on a
    # busy host). One faster answer on the other one must not switch: the peer picks for itself
    # and both would roam back and forth, each change a new path MTU search
    assert currents_after((LAN_B, 0.060), (LAN, 0.002)) == [LAN_B, LAN_B]
    assert currents_after((LAN6, 0.060), (LAN, 0.002)) == [LAN6, LAN6]  # IPv4 and IPv6: one class too


def test_lan_candidates_are_probed_ipv4_first_so_both_sides_usually_keep_the_same_family() -> None:
    sel = PathSelector()
    sel.add_candidates(P, [Candidate(a, k, "mdns") for a, k in
                           ((PUB6, "srflx"), (PUB, "srflx"), (LAN6, "lan"), (LAN, "lan"))], 0.0)
    assert [addr for _, addr in sel.probe_plan(0.0)] == [LAN, LAN6, PUB6, PUB]
    # … while a LAN path still replaces a path through a NAT at once
    assert currents_after((PUB, 0.010), (LAN, 0.030)) == [PUB, LAN]
