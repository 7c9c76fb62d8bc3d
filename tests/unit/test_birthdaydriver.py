"""BirthdayDriver (proto/birthdaydriver.py) on its own, around a real PathSelector and Prober, on
a fake clock: who punches (the role table), at what, and what a hit records."""

from __future__ import annotations

import random
from typing import Any

import pytest

from wgdisco.proto import keys, noise
from wgdisco.proto.birthday import EASY, HARD, SocketsWanted, Timing
from wgdisco.proto.birthdaydriver import BirthdayDriver
from wgdisco.proto.events import BirthdayChanged
from wgdisco.proto.paths import Candidate, PathSelector
from wgdisco.proto.probe import ProbeRequested, ProbeResult, Prober

T0 = 1000.0
EI, ED, AD, APD = "endpoint-independent", "endpoint-dependent", "address-dependent", "address-and-port-dependent"


def identity(seed: int) -> noise.StaticIdentity:
    return noise.StaticIdentity(keys.clamp(random.Random(seed).randbytes(32)))


US, PEER = identity(1), identity(2)


def driver(*, via: bool = True, seed: int = 5, timing: Timing = Timing()) -> tuple[BirthdayDriver, PathSelector]:
    selector = PathSelector()
    selector.add_peer(PEER.public)
    d = BirthdayDriver(selector, rng=random.Random(seed).randbytes, timing=timing,
                       addr_of=lambda ip, port: (ip, port), host_of=lambda a: a[0],
                       format_addr=lambda a: f"{a[0]}:{a[1]}",
                       via=(lambda a, sid: (a[0], a[1], sid)) if via else None,
                       via_socket=lambda a: a[2] if len(a) == 3 else None)
    return d, selector


def prober() -> Prober:
    return Prober(US.private, US.public, [PEER.public], rng=random.Random(9).randbytes, wall=1.7e9)


@pytest.mark.parametrize("ours, theirs, via, role", [
    (ED, EI, True, HARD),  # our NAT is the hard one: we open many ports
    (AD, EI, True, HARD),
    (APD, EI, True, HARD),
    (ED, EI, False, None),  # … only if this node can open extra sockets
    (EI, ED, True, EASY),  # theirs is: we probe random ports at it
    (EI, APD, False, EASY),
    (ED, ED, True, None),  # both hard: no port can be guessed on either side
    (EI, EI, True, None),  # both easy: ordinary punching does it
    ("unknown", ED, True, None),
    (ED, "unknown", True, None),
])
def test_the_role_table(ours: str, theirs: str, via: bool, role: str | None) -> None:
    d, selector = driver(via=via)
    if theirs != "unknown":
        selector.set_peer_mapping(PEER.public, theirs, T0)
    assert d.role(ours, PEER.public) == role


def test_targets_are_public_ipv4_newest_first_and_the_hard_side_aims_at_one() -> None:
    d, selector = driver()
    cands = [
        (("203.0.113.5", 4000), "srflx", "mdns", T0),
        (("10.1.0.2", 51820), "host", "mdns", T0 + 1),  # RFC 1918: never a NAT's outside
        (("100.64.0.9", 51820), "host", "mdns", T0 + 1),  # carrier NAT space
        (("2001:db8::5", 51820), "host", "mdns", T0 + 1),  # IPv6 is not NATed
        (("198.51.100.7", 51820), "lan", "mdns", T0 + 1),  # on our LAN
        (("192.0.2.8", 6000, 3), "prflx", "probe", T0 + 2),  # reached from one of our extra sockets
        (("198.51.100.9", 5000), "srflx", "dns", T0 + 3),
        (("198.51.100.9", 5001), "prflx", "probe", T0 + 4),  # the newest
    ]
    for addr, kind, source, at in cands:
        selector.add_candidates(PEER.public, [Candidate(addr, kind, source)], at)
    assert d.targets(PEER.public, EASY) == ["198.51.100.9", "203.0.113.5"]  # IPs, once each
    assert d.targets(PEER.public, HARD) == [("198.51.100.9", 5001)]  # the newest address only


def easy_attempt(d: BirthdayDriver, selector: PathSelector, p: Prober) -> list[tuple[bytes, Any]]:
    """Our NAT is easy, the peer's hard, ordinary punching ran start_after: an EASY attempt starts
    and sends its first probes; returns them."""
    selector.set_peer_mapping(PEER.public, ED, T0)
    selector.add_candidates(PEER.public, [Candidate(("203.0.113.5", 4000), "srflx", "mdns")], T0)
    d.step(T0 + 1.9, p, EI, ())
    assert d.pop_events() == []  # ordinary punching goes first for start_after (2 s)
    d.step(T0 + 2.0, p, EI, ())
    (started,) = d.pop_events()
    assert isinstance(started, BirthdayChanged) and (started.state, started.role) == ("started", EASY)
    d.step(T0 + 2.0, p, EI, ())
    sent = d.datagrams_to_send()
    assert sent and all(addr[0] == "203.0.113.5" and addr[1] != 4000 for _, addr in sent)
    return sent


def test_a_probe_answer_from_a_port_the_easy_attempt_probed_is_a_hit() -> None:
    d, selector = driver()
    p = prober()
    sent = easy_attempt(d, selector, p)
    hit = sent[3][1]
    d.probe_seen(ProbeResult(PEER.public, ("203.0.113.5", 1), 0.05, None), T0 + 2.1)  # not probed by us
    d.probe_seen(None, T0 + 2.1)
    assert d.found == {} and "birthday-hits" not in d.counters
    d.probe_seen(ProbeResult(PEER.public, hit, 0.05, None), T0 + 2.1)
    assert d.found == {PEER.public: hit} and d.counters["birthday-hits"] == 1
    assert hit in selector.addresses(PEER.public)  # a peer-reflexive candidate now
    assert next(x for x in selector.paths(PEER.public) if x.addr == hit).kind == "prflx"
    d.probe_seen(ProbeRequested(PEER.public, hit), T0 + 2.2)  # the same hit again: counted once
    assert d.counters["birthday-hits"] == 1


def test_a_hard_attempt_opens_sockets_and_aims_at_the_newest_address_only() -> None:
    d, selector = driver(timing=Timing(sockets=4))
    p = prober()
    selector.set_peer_mapping(PEER.public, EI, T0)
    selector.add_candidates(PEER.public, [Candidate(("203.0.113.5", 4000), "srflx", "mdns")], T0)
    selector.add_candidates(PEER.public, [Candidate(("198.51.100.9", 5000), "srflx", "dns")], T0 + 1)
    d.step(T0 + 2.0, p, ED, ())
    events = d.pop_events()
    assert [(e.state, e.role) for e in events if isinstance(e, BirthdayChanged)] == [("started", HARD)]
    wanted = [e for e in events if isinstance(e, SocketsWanted)]  # the shell opens them now ...
    assert [(e.peer, len(e.ids)) for e in wanted] == [(PEER.public, 4)]
    assert d.datagrams_to_send() == []
    d.step(T0 + 2.0, p, ED, ())  # ... and the next step sends from them
    sent = [addr for _, addr in d.datagrams_to_send()]
    assert sorted(sent) == sorted(("198.51.100.9", 5000, sid) for sid in wanted[0].ids)
    # a probe answer on a hard attempt names no port of ours: not a hit
    d.probe_seen(ProbeResult(PEER.public, ("198.51.100.9", 5000), 0.05, None), T0 + 2.1)
    assert d.found == {}


def test_without_via_a_hard_nat_never_starts_an_attempt() -> None:
    d, selector = driver(via=False)
    selector.set_peer_mapping(PEER.public, EI, T0)
    selector.add_candidates(PEER.public, [Candidate(("203.0.113.5", 4000), "srflx", "mdns")], T0)
    for t in (2.0, 3.0, 10.0):
        d.step(T0 + t, prober(), ED, ())
    assert d.pop_events() == [] and d.datagrams_to_send() == [] and d.next_deadline(T0 + 10) is None


# --- the step's work: the peers that changed or are due, not every peer (issue 22) ----------

def test_a_step_looks_only_at_changed_and_due_peers() -> None:
    """300 peers with probes, all live but one that lost its path: a step with the selector's
    changes looks at that one (counted), not at all 300; without them (None) at every peer."""
    selector = PathSelector()
    us = identity(1)
    peers = [identity(100 + i).public for i in range(300)]
    p = Prober(us.private, us.public, peers, rng=random.Random(9).randbytes, wall=1.7e9)
    d = BirthdayDriver(selector, rng=random.Random(5).randbytes, addr_of=lambda ip, port: (ip, port),
                       host_of=lambda a: a[0], via=lambda a, sid: (a[0], a[1], sid),
                       via_socket=lambda a: a[2] if len(a) == 3 else None)
    for i, public in enumerate(peers):
        selector.add_peer(public)
        selector.set_peer_mapping(public, EI, T0)
        selector.on_authenticated(public, (f"198.51.100.{i % 250 + 1}", 40000 + i), T0)
    looked: list[bytes] = []
    look = d._look
    d._look = lambda public, now, suspected: (looked.append(public), look(public, now, suspected))[1]  # type: ignore[method-assign]
    d.step(T0, p, ED, (), selector.pop_changed())  # the first step looks at every peer
    assert len(looked) == 300 and d.pop_events() == []
    looked.clear()
    d.step(T0 + 1, p, ED, (), selector.pop_changed())  # nothing changed: nobody
    assert looked == []
    selector.remove_candidates(peers[7], [selector.current(peers[7])], T0 + 2)  # (a live path stays)
    d.step(T0 + 2, p, ED, [peers[7]], set())  # its data went unanswered: suspected
    assert looked == [peers[7]]
    looked.clear()
    d.step(T0 + 3, p, ED, [peers[7]], {peers[7], peers[8]})  # two paths changed
    assert sorted(looked) == sorted([peers[7], peers[8]])
    looked.clear()
    d.step(T0 + 4, p, ED, [peers[7]])  # a caller that cannot tell: every peer, as before
    assert len(looked) == 300


@pytest.mark.parametrize("scenario", ["hard-to-restricted", "roaming", "backoff", "three"])
def test_the_step_decides_as_a_walk_over_every_peer_would(scenario: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Differential: the in-memory simulator run twice, the node's birthday step given the path
    driver's changes (as it is) and given None (a walk over every peer, as before issue 22): the
    same events at the same times on every node, the same datagrams."""
    from tests.unit.test_node import two_behind_nats

    def run(full: bool) -> list[Any]:
        if full:
            step = BirthdayDriver.step
            monkeypatch.setattr(BirthdayDriver, "step", lambda self, now, prober, ours, suspected, changed=None:
                                step(self, now, prober, ours, suspected, None))
        net, a, b = two_behind_nats(map_a="edm")
        nodes = [a, b]
        if scenario == "three":
            c = net.node("c", ("10.2.0.3", 51820), "100.64.0.3", stun=list(net.stun))
            for x, y in ((a, c), (c, a), (b, c), (c, b)):
                x.add(y)
            c.start()
            nodes.append(c)
        if scenario == "backoff":
            net.nats[1].filtering = "stun-only"  # no attempt can work: failures, backoffs
            net.run(200)
        else:
            net.ping_until(a, b, limit=40)
            if scenario == "roaming":
                net.run(5)
                net.nats[1].renumber("198.51.100.99")
                net.ping_until(a, b, limit=30, every=0.2)
            if scenario == "three":
                net.ping_until(a, nodes[2], limit=60)
            net.run(20)
        monkeypatch.undo()
        return [(n.timed_events, n.sent, n.node.birthday.probes_sent) for n in nodes]

    assert run(full=False) == run(full=True)


def test_what_the_selector_does_not_report_comes_from_the_heap() -> None:
    """start_after and the backoff after a failure end with no change on the path: the step
    takes such a peer from its heap at the first step after the time."""
    d, selector = driver(timing=Timing(attempt_time=5.0, backoff=10.0))
    p = prober()
    selector.set_peer_mapping(PEER.public, ED, T0)
    selector.add_candidates(PEER.public, [Candidate(("203.0.113.5", 4000), "srflx", "mdns")], T0)
    d.step(T0 + 1.0, p, EI, (), selector.pop_changed())
    assert d.pop_events() == []  # ordinary punching goes first for start_after (2 s)
    d.step(T0 + 1.9, p, EI, (), set())
    assert d.pop_events() == []
    d.step(T0 + 2.1, p, EI, (), set())  # nothing changed, but start_after is over
    assert [(e.state, e.role) for e in d.pop_events()] == [("started", EASY)]
    d.step(T0 + 7.2, p, EI, (), set())  # the attempt ran out: a failure, 10 s of backoff
    assert [getattr(e, "state", None) for e in d.pop_events()] == ["failed"]
    d.step(T0 + 12.0, p, EI, (), {PEER.public})  # looked at during the backoff: it still waits
    d.step(T0 + 17.1, p, EI, (), set())
    assert d.pop_events() == []
    d.step(T0 + 17.3, p, EI, (), set())  # the backoff is over
    assert [(e.state, e.role) for e in d.pop_events()] == [("started", EASY)]
    assert d.puncher.stats(PEER.public)[:1] == (2,)


def test_a_hard_attempt_won_over_the_listen_socket_is_a_birthday_path() -> None:
    """The easy peer's random probes may hit the mapping our listen socket holds towards it (one
    port more in the set): the attempt is won with no extra socket kept, and the path is the
    birthday attempt's all the same (status says "birthday", not "record")."""
    d, selector = driver(timing=Timing(sockets=4))
    p = prober()
    selector.set_peer_mapping(PEER.public, EI, T0)
    addr = ("198.51.100.9", 5000)
    selector.add_candidates(PEER.public, [Candidate(addr, "srflx", "dns")], T0)
    d.step(T0 + 2.0, p, ED, ())
    assert [e.state for e in d.pop_events() if isinstance(e, BirthdayChanged)] == ["started"]
    assert d.found == {}
    selector.on_authenticated(PEER.public, addr, T0 + 3.0)  # over the listen socket: no sid
    d.step(T0 + 3.0, p, ED, (), selector.pop_changed())
    assert [(e.state, e.role) for e in d.pop_events() if isinstance(e, BirthdayChanged)] == [("won", HARD)]
    assert d.found == {PEER.public: addr}
