"""PathDriver (proto/pathdriver.py) on its own: real Devices and PathDrivers joined by an
in-memory wire (no Node), stepped on a fake clock."""

from __future__ import annotations

import ipaddress
import random
from typing import Any, Callable

import pytest

from tests.unit.test_device import ipv4_packet
from wgdisco.proto import keys
from wgdisco.proto.classify import PROBE, WIREGUARD, classify
from wgdisco.proto.device import Device, EndpointChanged
from wgdisco.proto.events import CandidateProbed, HandshakeTried, NatSuspected, PathReasonChanged
from wgdisco.proto.pathdriver import DEFER_INITIATION, FRESH_PROBES, FRESH_WINDOW, SUSPECT_AFTER, PathDriver, Suspected
from wgdisco.proto.probe import ProbeRequested

T0 = 1000.0
INITIATION = 1


class Side:
    def __init__(self, seed: int, addr: tuple[str, int], tunnel_ip: str) -> None:
        rng = random.Random(seed).randbytes
        self.addr, self.tunnel_ip = addr, tunnel_ip
        self.device = Device(keys.clamp(rng(32)), rng=rng, now=T0)
        self.driver = PathDriver(self.device, rng=rng, wall=1.7e9, host_of=lambda a: a[0],
                                 explain=lambda public, reason: f"because {reason}")
        self.events: list[tuple[float, Any]] = []

    @property
    def public(self) -> bytes:
        return self.device.identity.public

    def add(self, other: Side) -> None:
        peer = self.device.add_peer(other.public)
        self.device.allowed_ips.insert(ipaddress.ip_network(f"{other.tunnel_ip}/32"), peer)
        self.driver.add_peer(other.public)

    def record_of(self, other: Side, now: float, addrs: list[Any] | None = None, *, probes: bool = True) -> None:
        """A record of ``other`` arrived (its candidates: its address, or ``addrs``)."""
        self.driver.sighting(other.public, addrs or [other.addr], "mdns", now, traversal=True,
                             local_networks=[], mapping=None, probes=probes)

    def collect(self, now: float) -> None:
        self.events += [(now, e) for e in self.driver.pop_events()]
        self.events += [(now, e) for e in self.device.events]
        self.device.events.clear()

    def of(self, kind: type) -> list[tuple[float, Any]]:
        return [(t, e) for t, e in self.events if isinstance(e, kind)]


class Wire:
    """Sides at their addresses; every datagram arrives at once unless ``drop(src, dst, data)``."""

    def __init__(self, *sides: Side) -> None:
        self.sides = {s.addr: s for s in sides}
        self.now = T0
        self.restun = False
        self.drop: Callable[[Any, Any, bytes], bool] = lambda src, dst, data: False
        self.sent: list[tuple[float, Any, Any, bytes]] = []  # (time, from, to, datagram)

    def flush(self) -> None:
        for _ in range(100):
            moved = False
            for side in list(self.sides.values()):
                for data, to in side.driver.datagrams_to_send() + side.device.datagrams_to_send():
                    moved = True
                    self.sent.append((self.now, side.addr, to, data))
                    dest = self.sides.get(to)
                    if dest is None or self.drop(side.addr, to, data):
                        continue
                    if classify(data) == WIREGUARD:
                        dest.device.receive_datagram(data, side.addr, self.now)
                    elif classify(data) == PROBE:
                        dest.driver.probe_event(dest.driver.receive_probe(data, side.addr, self.now), self.now)
                    dest.collect(self.now)
            if not moved:
                return
        raise AssertionError("the wire never went quiet")

    def step(self) -> None:
        for side in self.sides.values():
            deadline = side.device.get_timer()
            if deadline is not None and deadline <= self.now:
                side.device.handle_timer(self.now)
            side.driver.hints_due(self.now)
            side.driver.handle_timer(self.now, self.restun)
            side.collect(self.now)
            self.flush()

    def run(self, seconds: float) -> None:
        """From deadline to deadline (every side's driver and device) up to now + seconds."""
        end = self.now + seconds
        same = 0
        while True:
            times = [t for s in self.sides.values()
                     for t in (s.driver.next_deadline(self.now), s.device.get_timer()) if t is not None]
            nxt = max(self.now, min(times))
            if nxt > end:
                break
            same = same + 1 if nxt == self.now else 0
            assert same < 20, "a deadline that handle_timer never clears"
            self.now = nxt
            self.step()
        self.now = end

    def initiations(self, side: Side) -> list[float]:
        return [t for t, src, _to, data in self.sent if src == side.addr and data[0] == INITIATION]

    def send_data(self, src: Side, dst: Side) -> None:
        out = src.device.send_packet(ipv4_packet(src.tunnel_ip, dst.tunnel_ip), self.now)
        if out is not None:
            src.device.outbox.append(out)
        self.flush()


def pair() -> tuple[Wire, Side, Side]:
    """Two sides that know each other, ordered (lower key, higher key)."""
    a = Side(1, ("198.51.100.1", 51820), "10.0.0.1")
    b = Side(2, ("203.0.113.2", 51820), "10.0.0.2")
    a.add(b)
    b.add(a)
    lo, hi = sorted((a, b), key=lambda s: s.public)
    return Wire(lo, hi), lo, hi


def connected() -> tuple[Wire, Side, Side]:
    wire, lo, hi = pair()
    lo.record_of(hi, wire.now)
    wire.run(3)
    wire.send_data(lo, hi)
    wire.send_data(hi, lo)
    assert lo.device.peers[hi.public].current is not None and hi.device.peers[lo.public].current is not None
    return wire, lo, hi


# --- probes and endpoints ------------------------------------------------------------------

def test_probe_answers_make_the_path_the_endpoint_and_only_the_lower_key_initiates() -> None:
    wire, lo, hi = pair()
    wire.step()
    assert [e for _, e in lo.of(PathReasonChanged)] == [
        PathReasonChanged(hi.public, "no-candidates", "because no-candidates")]
    lo.record_of(hi, wire.now)  # only lo saw a record: hi learns lo's address from its probe
    wire.run(5)
    assert lo.device.peers[hi.public].endpoint == hi.addr
    assert hi.device.peers[lo.public].endpoint == lo.addr
    assert [e.reason for _, e in lo.of(PathReasonChanged)] == ["no-candidates", "probing", "direct"]
    assert [(e.new, e.cause) for _, e in lo.of(EndpointChanged)] == [(hi.addr, "probe")]
    # lo initiated at once; had hi initiated too, each would have waited 5 s as a responder
    assert len(wire.initiations(lo)) == 1 and wire.initiations(hi) == []
    assert lo.device.peers[hi.public].last_handshake is not None


def test_the_higher_key_initiates_only_after_defer_initiation() -> None:
    wire, lo, hi = pair()
    wire.drop = lambda src, dst, data: classify(data) == WIREGUARD  # only probes get through
    lo.record_of(hi, wire.now)
    wire.run(3)
    (lo_moved, _), = lo.of(EndpointChanged)
    (hi_moved, _), = hi.of(EndpointChanged)
    assert wire.initiations(lo)[0] == lo_moved  # the lower key: at once
    assert wire.initiations(hi) == [hi_moved + DEFER_INITIATION]  # the higher: after a second


def test_a_deferred_initiation_is_dropped_when_the_peer_initiated_first() -> None:
    wire, lo, hi = pair()
    lo.record_of(hi, wire.now)
    hi.record_of(lo, wire.now)
    wire.run(DEFER_INITIATION + 2)
    assert wire.initiations(hi) == [] and len(wire.initiations(lo)) == 1
    assert hi.device.peers[lo.public].last_handshake is not None


def test_the_higher_key_does_not_initiate_after_it_answered_the_lower_keys_initiation() -> None:
    # the lower key's initiation came and was answered, but the lower side has not completed yet
    # (its response is late: a busy host, or lost): an initiation of ours now would only cross it
    wire, lo, hi = pair()
    wire.drop = lambda src, dst, data: src == hi.addr and classify(data) == WIREGUARD
    lo.record_of(hi, wire.now)
    hi.record_of(lo, wire.now)
    wire.run(DEFER_INITIATION + 2)
    assert len(wire.initiations(lo)) == 1
    assert hi.device.peers[lo.public].next is not None  # hi answered lo's initiation
    assert wire.initiations(hi) == []


def test_a_probe_request_on_an_unverified_path_gets_a_triggered_probe_back() -> None:
    """hi punches towards lo from T0, but lo's NAT lets nothing in until lo probes hi itself (lo
    saw hi's record only at T0 + 2.1). hi probes back at once on lo's request (RFC 8445
    §7.3.1.4), so hi has the path then, not at its next punching round (T0 + 4)."""
    wire, lo, hi = pair()
    opened = False

    def closed(src: Any, dst: Any, data: bytes) -> bool:
        nonlocal opened
        opened = opened or src == lo.addr
        return src == hi.addr and not opened  # lo's NAT: nothing in before lo sent out

    wire.drop = closed
    hi.record_of(lo, wire.now)
    wire.run(2.1)
    assert hi.of(EndpointChanged) == []  # its rounds at 0, 0.2, 0.5, 1, 2 s: all dropped
    lo.record_of(hi, wire.now)
    wire.step()
    assert [t for t, _ in hi.of(EndpointChanged)] == [T0 + 2.1]
    assert hi.driver.counters["triggered-probes"] == 1
    wire.run(2)
    assert hi.driver.counters["triggered-probes"] == 1  # none once the path is verified


def test_every_peers_probe_is_answered_and_a_strangers_is_not() -> None:
    wire, lo, hi = pair()
    stranger = Side(9, ("192.0.2.9", 51820), "10.0.0.9")
    stranger.driver.add_peer(lo.public)
    stranger.driver.probe(lo.public, lo.addr, T0)
    hi.driver.probe(lo.public, lo.addr, T0)
    (from_stranger, _), = stranger.driver.datagrams_to_send()
    (from_hi, _), = hi.driver.datagrams_to_send()
    assert lo.driver.receive_probe(from_stranger, stranger.addr, T0) is None
    assert lo.driver.datagrams_to_send() == []
    assert lo.driver.receive_probe(from_hi, hi.addr, T0) == ProbeRequested(hi.public, hi.addr)
    assert [to for _, to in lo.driver.datagrams_to_send()] == [hi.addr]


def test_a_peer_without_probes_gets_handshake_tries_at_its_hinted_endpoints() -> None:
    wire, lo, hi = pair()
    wire.drop = lambda src, dst, data: classify(data) == PROBE  # hi is a plain WireGuard peer
    lo.record_of(hi, wire.now, [("192.0.2.50", 51820), hi.addr], probes=False)
    wire.run(1.5)
    assert [(e.addr, e.source) for _, e in lo.of(HandshakeTried)] == [(("192.0.2.50", 51820), "mdns"),
                                                                     (hi.addr, "mdns")]
    assert lo.driver.counters["handshake-tries"] == 2
    assert lo.device.peers[hi.public].last_handshake is not None  # the second hint answered
    lo.record_of(hi, wire.now, [("192.0.2.51", 51820)], probes=False)  # live now: ignored
    assert lo.driver.counters["hints-ignored-live"] == 1


# --- unanswered data --------------------------------------------------------------------------

def test_unanswered_data_asks_one_lookup_per_silence_and_nat_suspected_only_when_allowed() -> None:
    a = Side(1, ("198.51.100.1", 51820), "10.0.0.1")
    b = Side(2, ("203.0.113.2", 51820), "10.0.0.2")
    c = Side(3, ("192.0.2.3", 51820), "10.0.0.3")
    for x in (b, c):
        a.add(x)
        x.add(a)
    wire = Wire(a, b, c)
    a.record_of(b, wire.now)
    a.record_of(c, wire.now)
    wire.run(3)
    for x in (b, c):
        wire.send_data(a, x)
        wire.send_data(x, a)
    wire.run(1)
    a.events.clear()
    silent = {b.addr, c.addr}
    wire.drop = lambda src, dst, data: src in silent  # b and c fall silent
    start = wire.now
    wire.send_data(a, b)
    wire.send_data(a, c)
    assert a.device.peers[b.public].unanswered_since == start
    wire.run(SUSPECT_AFTER)
    assert a.of(Suspected) == []  # not yet: the silence is not longer than SUSPECT_AFTER
    wire.run(4)
    wire.send_data(a, b)  # more data into the same silence
    wire.run(4)
    lookups = [e.peer for _, e in a.of(Suspected)]
    assert sorted(lookups) == sorted([b.public, c.public])  # one each per silence
    assert all(start + SUSPECT_AFTER < t <= start + SUSPECT_AFTER + 0.5 for t, _ in a.of(Suspected))
    assert a.of(NatSuspected) == []  # restun not allowed
    wire.restun = True
    wire.run(0.5)  # one sync: two silent peers, one STUN round asked for
    (when, suspected), = a.of(NatSuspected)
    assert suspected.silent_for == pytest.approx(when - start)
    assert len(a.of(Suspected)) == 2
    # b answers: the silence is over; a new one is a new suspicion
    wire.restun = False
    silent.discard(b.addr)
    wire.send_data(b, a)
    wire.run(0.5)
    assert b.public not in a.driver.suspected
    wire.send_data(a, b)
    silent.add(b.addr)
    wire.send_data(a, b)
    wire.run(3)
    assert [e.peer for _, e in a.of(Suspected)].count(b.public) == 2
    assert [e.peer for _, e in a.of(Suspected)].count(c.public) == 1


# --- fresh candidates of a live peer ----------------------------------------------------------

def test_a_live_peers_new_candidates_get_fresh_probes_per_fresh_window() -> None:
    wire, lo, hi = connected()
    now = wire.now

    def flood(start: int, n: int, at: float) -> list[Any]:
        addrs = [(f"192.0.2.{i}", 51820) for i in range(start, start + n)]
        lo.events.clear()
        lo.record_of(hi, at, addrs)
        lo.collect(at)
        probed = [e.addr for _, e in lo.of(CandidateProbed)]
        assert sorted(to for _, to in lo.driver.datagrams_to_send()) == sorted(probed)
        return probed

    assert flood(1, 10, now) == [(f"192.0.2.{i}", 51820) for i in range(1, 1 + FRESH_PROBES)]
    assert lo.driver.counters["candidate-probes-deferred"] == 10 - FRESH_PROBES
    assert flood(20, 5, now + FRESH_WINDOW - 0.1) == []  # the window's probes are spent
    assert lo.driver.counters["candidate-probes-deferred"] == 15 - FRESH_PROBES
    assert len(flood(40, 6, now + FRESH_WINDOW)) == FRESH_PROBES  # a new window
    assert flood(40, 6, now + FRESH_WINDOW + 1) == []  # known candidates are not fresh


def test_a_removed_peer_is_forgotten() -> None:
    wire, lo, hi = connected()
    lo.driver.remove_peer(hi.public)
    assert hi.public not in lo.driver.prober.peers and hi.public not in lo.driver.selector.peers
    assert hi.public not in lo.driver.reasons


def test_next_deadline_is_pure() -> None:
    """Only handle_timer applies the passage of time: asking when the next work is changes nothing
    (issue 22), even when the answer is "now" because the path died in the meantime."""
    from wgdisco.proto.paths import LIVE_TIME

    wire, lo, hi = connected()
    later = wire.now + LIVE_TIME + 1  # the path's silence is past live_time: it is dead by now
    selector = lo.driver.selector
    before = [(p.addr, p.state) for p in selector.paths(hi.public)], selector.current(hi.public)
    assert lo.driver.next_deadline(later) <= later  # work is due ...
    lo.driver.next_deadline(later)
    after = [(p.addr, p.state) for p in selector.paths(hi.public)], selector.current(hi.public)
    assert after == before  # ... but asking did not do it
