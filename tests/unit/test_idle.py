"""Quiet when idle (issue 26), in memory on the fake clock: nodes, simulated NATs whose UDP
mappings time out after 30 s (Linux conntrack's default), the documented defaults otherwise."""

from __future__ import annotations

from tests.unit.nodesim import Net, SimNode
from tests.unit.test_node import mesh_lan, two_behind_nats
from wgdisco.proto.calls import CALL_TIME, call_hint
from wgdisco.proto.paths import Timing

NAT_KEEPALIVE = Timing.nat_keepalive  # 25 s
IN_USE = Timing.in_use_time  # 180 s


def nat_pair() -> tuple[Net, SimNode, SimNode]:
    """Two easy NATs that forget a UDP flow after 30 s (Linux conntrack's default)."""
    return two_behind_nats(udp_timeout=30.0)


def lan_pair() -> tuple[Net, SimNode, SimNode]:
    net = Net()
    net.source = "mdns"
    a = net.node("a", ("10.7.0.2", 51820), "100.64.0.1")
    b = net.node("b", ("10.7.0.3", 51820), "100.64.0.2")
    a.add(b)
    b.add(a)
    a.start()
    b.start()
    return net, a, b


def between(net: Net, seconds: float) -> int:
    """Datagrams delivered in the next ``seconds`` (STUN refreshes to the servers included)."""
    before = net.delivered
    net.run(seconds)
    return net.delivered - before


def test_an_idle_lan_path_is_silent_and_the_first_packet_after_gets_through_at_once() -> None:
    net, a, b = lan_pair()
    net.ping_until(a, b, limit=10)
    net.run(60)  # WireGuard's passive keepalive, the last keepalive probes
    assert between(net, 600) == 0  # ten minutes: not one datagram between the two
    assert a.node.paths.selector.is_dormant(b.public) and a.node.has_path(b.public, net.now)
    # the path was kept: the first ping after the quiet goes straight there (a handshake, 1 RTT)
    took = net.ping_until(b, a, limit=5)
    assert took < 0.2, took
    assert not [c for c in a.node.counters if c.startswith("calls")]  # a LAN path needs no call


def test_a_nat_path_in_use_gets_one_keepalive_per_25_s_and_its_mappings_survive() -> None:
    net, a, b = nat_pair()
    net.ping_until(a, b, limit=15)
    net.run(40)  # the traffic's own tail (passive keepalive, keepalive probes while active)
    sel = a.node.paths.selector
    sent_before = sel.probes_sent + b.node.paths.selector.probes_sent
    net.run(100 - 40)  # 100 s without traffic in all
    probes = sel.probes_sent + b.node.paths.selector.probes_sent - sent_before
    # one side keeps the pair's mappings: one probe (and its answer) per ≤ 25 s, not one per 5 s
    assert 2 <= probes <= 60 / NAT_KEEPALIVE + 1, probes
    # the flows between the two are still in both NATs' tables (a STUN flow may have timed out)
    nat_a, nat_b = net.nats
    assert any(remote == a.device.peers[b.public].endpoint for _, remote in nat_a.used)
    assert any(remote == b.device.peers[a.public].endpoint for _, remote in nat_b.used)
    # either side pings first: through at once, the holes are open
    assert net.ping_until(b, a, limit=5) < 0.5
    net.run(100)
    assert net.ping_until(a, b, limit=5) < 0.5


def test_after_15_minutes_idle_the_holes_are_gone_and_a_call_reopens_them() -> None:
    net, a, b = nat_pair()
    net.ping_until(a, b, limit=15)
    net.run(IN_USE + 60)  # no longer in use: the NATed path is let go
    quiet = between(net, 900 - IN_USE - 60)
    # what is left is the STUN refresh of each node's reflexive address (issue 26: records must
    # stay true), no probes and no keepalives between the two
    assert quiet <= 2 * (900 / 60) * 4, quiet
    assert all(nat.forgotten > 0 for nat in net.nats)  # the mappings timed out
    # a pings b: its first packets die at b's NAT; a calls (call= in its record), b answers by
    # probing all of a's candidates, the punch meets in the middle, the handshake follows
    took = net.ping_until(a, b, limit=20)
    assert took < 3.0, took
    assert a.node.calls.counters.get("calls", 0) >= 1
    assert b.node.calls.counters.get("calls-answered", 0) >= 1
    assert "call" in a.node.record().txt_extra
    net.run(CALL_TIME + 1)
    assert "call" not in a.node.record().txt_extra  # the call leaves the record


def test_a_call_names_a_peer_by_a_short_hint_and_a_stranger_cannot_make_us_probe_more() -> None:
    net, a, b = nat_pair()
    net.ping_until(a, b, limit=15)
    assert len(call_hint(b.public)) == 8
    assert not b.node.calls.answers(a.public, b"zzzz," * 60, net.now)  # not us: no call
    assert not b.node.calls.answers(a.public, "text", net.now)  # malformed: no call
    hint = call_hint(b.public).encode()
    assert b.node.calls.answers(a.public, hint, net.now)
    assert not b.node.calls.answers(a.public, hint, net.now + 1)  # answered at most every 5 s


def test_an_idle_mesh_is_quiet_and_keeps_its_members() -> None:
    net, nodes = mesh_lan(4)
    a, b = nodes[0], nodes[1]
    net.ping_until(a, b, limit=10)
    net.run(60)
    quiet = between(net, 1200)
    # one check probe per pair (request and answer) per check_after (450 s) or less often
    pairs = 4 * 3 // 2
    assert quiet <= pairs * 2 * (1200 / 450 + 1), quiet
    for x in nodes:
        assert len(x.node.peers) == 3  # nobody expired: the checks prove them
    assert net.ping_until(b, nodes[3], limit=5) < 0.5


def test_a_kept_path_whose_far_side_stopped_first_is_let_go_not_failed_and_a_call_still_wakes_it() -> None:
    # the two sides' "in use" windows end apart (each counts from its own packets): the side that
    # keeps the pair's mappings stops first, the other one's next keepalive meets a NAT that has
    # forgotten the flow. Idle, that is no failure: the path stays (dormant) and data wakes it.
    net, a, b = nat_pair()
    net.ping_until(a, b, limit=15)
    net.run(IN_USE - 30)
    b.ping(a, b"late")  # b's last data is later: b stays in use 30 s longer than a
    net.run(30)
    net.run(900)
    for x, y in ((a, b), (b, a)):
        assert x.node.paths.selector.current(y.public) is not None  # kept, not failed
        assert x.node.paths.selector.is_dormant(y.public)
    lost_flows = sum(nat.forgotten for nat in net.nats)
    assert lost_flows > 0
    took = net.ping_until(b, a, limit=20)
    assert took < 3.0, took


def public_pair(alternate: bool = True, b_behind_nat: bool = False) -> tuple[Net, SimNode, SimNode]:
    """a on a public address with no NAT; b too, or behind an easy NAT (conntrack forgets after 30 s).
    ``alternate``: the first STUN server has an RFC 5780 alternate address (filtering can be told)."""
    from tests.unit.test_node import STUN1, STUN2
    net = Net()
    s1 = net.stun_server(STUN1, alternate=("192.0.2.9", 3479) if alternate else None)
    s2 = net.stun_server(STUN2)
    a = net.node("a", ("198.51.100.7", 51820), "100.64.0.1", stun=[s1, s2])
    if b_behind_nat:
        net.nat("nat-b", "10.2.0.0/24", "203.0.113.1", udp_timeout=30.0)
        b = net.node("b", ("10.2.0.2", 51820), "100.64.0.2", stun=[s1, s2])
    else:
        b = net.node("b", ("203.0.113.8", 51820), "100.64.0.2", stun=[s1, s2])  # another /24: not a LAN path
    a.add(b)
    b.add(a)
    a.start()
    b.start()
    return net, a, b


def keepalives(net: Net, *nodes: SimNode, seconds: float) -> list[int]:
    """Path probes each of ``nodes`` sent in the next ``seconds``."""
    before = [n.node.paths.selector.probes_sent for n in nodes]
    net.run(seconds)
    return [n.node.paths.selector.probes_sent - b for n, b in zip(nodes, before)]


def test_an_open_public_address_sends_no_keepalives_and_a_nated_peer_keeps_its_own_state() -> None:
    """Issue 26: no keepalive probes on an un-NATed public path. STUN sees a's own address (no
    NAT) and RFC 5780 finds endpoint-independent filtering: nothing on a's side forgets a flow."""
    net, a, b = public_pair()
    net.ping_until(a, b, limit=10)
    net.run(40)  # the traffic's tail
    assert keepalives(net, a, b, seconds=120) == [0, 0]  # in use (180 s), and still nothing to keep
    assert net.ping_until(b, a, limit=5) < 0.5 and net.ping_until(a, b, limit=5) < 0.5
    # b behind a NAT that forgets after 30 s: b keeps its own mapping open, a still sends nothing
    net, a, b = public_pair(b_behind_nat=True)
    net.ping_until(a, b, limit=10)
    net.run(40)
    sent_a, sent_b = keepalives(net, a, b, seconds=120)
    assert sent_a == 0 and 120 / NAT_KEEPALIVE - 1 <= sent_b <= 120 / NAT_KEEPALIVE + 1, (sent_a, sent_b)
    assert net.ping_until(a, b, limit=5) < 0.5  # b's mapping was kept: a gets through at once


def test_a_public_address_whose_filtering_is_unknown_keeps_sending_keepalives() -> None:
    net, a, b = public_pair(alternate=False)  # no RFC 5780 server: a stateful firewall cannot be ruled out
    net.ping_until(a, b, limit=10)
    net.run(40)
    sent = keepalives(net, a, b, seconds=120)
    assert sum(sent) >= 120 / NAT_KEEPALIVE - 1, sent


def test_only_an_ipv4_reflexive_address_of_our_own_makes_an_address_open() -> None:
    """An IPv6 STUN answer always shows one of our own addresses (no NAT in IPv6): it must not
    make an IPv4 address behind a full-cone NAT (endpoint-independent filtering) look open."""
    import random

    from wgdisco.proto.reflexive import NatObserver
    obs = NatObserver([], rng=random.Random(1).randbytes, host_of=lambda a: a[0], addr_of=lambda h, p: (h, p))
    obs.classifier.filtering, obs.classifier.done = "endpoint-independent", True  # as RFC 5780 found
    ours = ["10.2.0.2", "2001:db8:2::2"]
    obs.reflexive = [("203.0.113.1", 40000), ("2001:db8:2::2", 51820)]  # behind an IPv4 NAT
    assert not obs.is_open(ours)
    obs.reflexive = [("10.2.0.2", 51820)]  # STUN over IPv4 sees our own address: no NAT
    assert obs.is_open(ours)
    obs.classifier.filtering = "address-and-port-dependent"  # a stateful firewall: not open
    assert not obs.is_open(ours)


def test_one_way_data_on_a_lan_path_makes_no_call() -> None:
    # data that gets no answer within SUSPECT_AFTER (one-way traffic: the peer's passive keepalive
    # comes 10 s later, or a CPU-starved peer) is suspected, but a call asks the peer to open holes
    # that a LAN path does not have: it would only change our record, which every member on the
    # link then resolves and parses again (40 members: ~8,000 resolves while converging)
    net, a, b = lan_pair()
    net.ping_until(a, b, limit=10)
    net.run(30)
    a.ping(b, b"one way")
    net.run(5)
    assert b.got(a, b"one way")
    assert b.public in a.node.paths.suspected  # the silence was seen (and b looked up again)
    assert "call" not in a.node.record().txt_extra
    assert not a.node.calls.counters.get("calls")


def test_a_lan_path_sends_no_path_mtu_probes() -> None:
    net, a, b = lan_pair()
    net.ping_until(a, b, limit=10)
    net.run(700)  # past a re-validation (600 s)
    for x in (a, b):
        counts = x.node.paths.pmtu.counters
        assert counts.get("pmtu-on-link", 0) >= 1 and not counts.get("pmtu-searches") and not counts.get("pmtu-probes")
