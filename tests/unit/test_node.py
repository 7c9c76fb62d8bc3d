"""The node core (proto/node.py): several nodes and simulated NATs in memory, on a fake clock.

Each test runs in well under a second of real time; what only real parts can show (a kernel
NAT, zeroconf, Knot) stays in the lab tests.
"""

from __future__ import annotations

import ipaddress

import pytest

from tests.unit.nodesim import Net, SimNode, ipv4_packet
from wgdisco.proto import records
from wgdisco.proto.node import (
    CandidateProbed, EndpointChanged, HandshakeCompleted, LookupWanted, NatClassified, PathReasonChanged,
    PortMappingChanged,
    RecordChanged,
)

STUN1 = ("192.0.2.1", 3478)
STUN2 = ("192.0.2.2", 3478)


def two_behind_nats(map_a: str = "eim", filt_a: str = "apdf", map_b: str = "eim", filt_b: str = "apdf",
                    udp_timeout: float | None = None) -> tuple[Net, SimNode, SimNode]:
    net = Net()
    s1, s2 = net.stun_server(STUN1), net.stun_server(STUN2)
    net.nat("nat-a", "10.1.0.0/24", "203.0.113.1", mapping=map_a, filtering=filt_a, udp_timeout=udp_timeout)
    net.nat("nat-b", "10.2.0.0/24", "198.51.100.1", mapping=map_b, filtering=filt_b, udp_timeout=udp_timeout)
    a = net.node("a", ("10.1.0.2", 51820), "100.64.0.1", stun=[s1, s2])
    b = net.node("b", ("10.2.0.2", 51820), "100.64.0.2", stun=[s1, s2])
    a.add(b)
    b.add(a)
    a.start()
    b.start()
    return net, a, b


def reasons(n: SimNode) -> list[str]:
    return [e.reason for e in n.events if isinstance(e, PathReasonChanged)]


# --- NAT traversal -------------------------------------------------------------------


def test_easy_to_easy_gets_a_direct_path_from_records_alone() -> None:
    net, a, b = two_behind_nats()
    took = net.ping_until(a, b, limit=10)
    assert took < 3.0
    assert a.node.path_status(b.public, net.now).path == "direct"
    assert a.node.endpoint_source(b.public) == "probe"
    assert a.device.peers[b.public].endpoint[0] == "198.51.100.1"  # B's NAT, not B's LAN address
    assert a.node.behaviour == "endpoint-independent"
    assert any(isinstance(e, HandshakeCompleted) for e in a.events)
    assert b.record is not None and "nat" in b.record.txt_extra and b.record.txt_extra["nat"] == "easy"


def test_same_nat_uses_the_lan() -> None:
    net = Net()
    s1, s2 = net.stun_server(STUN1), net.stun_server(STUN2)
    net.nat("home", "10.1.0.0/24", "203.0.113.1")
    a = net.node("a", ("10.1.0.2", 51820), "100.64.0.1", stun=[s1, s2])
    b = net.node("b", ("10.1.0.3", 51820), "100.64.0.2", stun=[s1, s2])
    a.add(b)
    b.add(a)
    a.start()
    b.start()
    net.ping_until(a, b, limit=10)
    net.run(2)
    st = a.node.path_status(b.public, net.now)
    assert st.path == "lan"
    assert a.device.peers[b.public].endpoint == ("10.1.0.3", 51820)
    assert "lan" in reasons(a)


def birthday_sends(n: SimNode, peer_ip: str) -> list[float]:
    """When ``n`` sent datagrams towards ``peer_ip`` (the birthday probes are most of them)."""
    return [t for t, dst in n.sent if dst[0] == peer_ip]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_hard_to_port_restricted_connects_by_birthday_punching(seed: int) -> None:
    net, a, b = two_behind_nats(map_a="edm")
    net.nats[0].seed = seed
    net.nats[0].__post_init__()
    start = net.now
    took = net.ping_until(a, b, limit=40)
    assert took < 15, took
    assert a.node.behaviour == "endpoint-dependent"
    # a (hard) runs WireGuard over one of its extra sockets; b over its listen socket to a's mapped port
    endpoint_a = a.device.peers[b.public].endpoint
    assert len(endpoint_a) == 3 and endpoint_a[:2] == ("198.51.100.1", 40000), endpoint_a  # b's NAT
    endpoint_b = b.device.peers[a.public].endpoint
    assert endpoint_b[0] == "203.0.113.1" and len(endpoint_b) == 2
    assert a.node.path_status(b.public, net.now).basis == "birthday"
    assert b.node.path_status(a.public, net.now).basis == "birthday"
    # the other 255 sockets are closed; the chosen one stays and carries the keepalives
    assert a.sockets_opened == 256 and list(a.sockets) == [endpoint_a[2]]
    assert a.closed_sends == 0  # nothing was sent on a socket before it was opened or after it closed
    won = [e for e in a.events if getattr(e, "state", None) == "won"]
    assert won and won[0].role == "hard"
    # bounds: b sent at most 2048 birthday probes, never more than 100 in any second (plus the
    # selector's own probes, keepalives, handshakes and the first path MTU search round, which
    # sends its sizes at once: issue 25, proto/pmtu.py)
    sends = birthday_sends(b, "203.0.113.1")
    assert b.node.birthday.probes_sent <= 2048
    per_second = max(sum(1 for t in sends if s <= t < s + 1) for s in sends)
    assert per_second <= 100 + 40, per_second
    assert a.node.birthday.probes_sent <= 256 * 2 * 2
    net.run(60)  # it stays up, over the kept socket, with keepalives
    net.ping_until(a, b, limit=2)
    assert a.device.peers[b.public].endpoint == endpoint_a and list(a.sockets) == [endpoint_a[2]]
    assert net.now - start > 60


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_roaming_through_a_punched_path_recovers_by_a_new_attempt(seed: int) -> None:
    """The easy side's NAT gets a new address: the punched port lets only the old one in, so
    both sides start a new attempt as soon as data goes unanswered (2 s), aimed at the newly
    published address; the hard side's newest socket carries the path."""
    net, a, b = two_behind_nats(map_a="edm")
    net.nats[0].seed = seed
    net.nats[0].__post_init__()
    net.ping_until(a, b, limit=40)
    net.run(5)
    kept = a.device.peers[b.public].endpoint
    net.nats[1].renumber("198.51.100.99")
    took = net.ping_until(a, b, limit=30, every=0.2)
    assert took < 6, took
    endpoint = a.device.peers[b.public].endpoint
    assert endpoint[:2] == ("198.51.100.99", 40007) and endpoint[2] != kept[2]
    net.run(2)
    assert list(a.sockets) == [endpoint[2]] and a.closed_sends == 0  # the old punched socket is closed too


def test_birthday_punching_that_fails_backs_off() -> None:
    net, a, b = two_behind_nats(map_a="edm")
    net.nats[1].filtering = "stun-only"  # b's NAT lets nothing but STUN in: no attempt can work
    net.run(300)
    st = a.node.path_status(b.public, net.now)
    assert st.path == "none"
    attempts, wins, failures = b.node.birthday.stats(a.public)
    assert wins == 0 and 3 <= attempts <= 5, (attempts, failures)  # 25 s each, then 30, 60, 120 s pauses
    assert b.node.birthday.probes_sent <= attempts * 2048
    # one attempt's sockets at a time: each attempt's are closed when it ends
    assert len(a.sockets) in (0, 256) and a.max_sockets == 256 and a.sockets_opened == 256 * attempts


def test_hard_to_full_cone_gets_through_by_peer_reflexive_candidate() -> None:
    net, a, b = two_behind_nats(map_a="edm", filt_b="eif")
    net.ping_until(a, b, limit=15)
    paths = {p.addr: p for p in b.node.candidates(a.public)}
    endpoint = b.device.peers[a.public].endpoint
    assert paths[endpoint].kind == "prflx"  # A's per-destination port, learnt from its probe


def test_hard_nat_on_both_sides_stops_probing() -> None:
    net, a, b = two_behind_nats(map_a="edm", map_b="edm")
    net.run(120)
    assert a.node.path_status(b.public, net.now).reason == "hard-nat-both-sides"
    sent = a.node.stats().probes_sent
    net.run(120)
    assert a.node.stats().probes_sent == sent  # the budget is spent: silence
    # both hard: no port can be guessed, so no birthday attempt, no extra socket
    assert a.node.birthday.stats(b.public) == (0, 0, 0) and a.sockets_opened == b.sockets_opened == 0


def test_a_new_wan_address_is_found_again() -> None:
    net, a, b = two_behind_nats()
    net.ping_until(a, b, limit=10)
    net.nats[0].renumber("203.0.113.99")  # A's router got a new address; A itself sees nothing
    took = net.ping_until(a, b, limit=60)
    assert a.device.peers[b.public].endpoint[0] == "198.51.100.1"
    assert b.device.peers[a.public].endpoint[0] == "203.0.113.99"
    assert took < 25


def test_a_forged_record_never_moves_a_live_path() -> None:
    net, a, b = two_behind_nats()
    net.ping_until(a, b, limit=10)
    before = a.device.peers[b.public].endpoint
    forged = records.Sighting(b.public, [(ipaddress.ip_address("192.0.2.66"), 4444)], txt={"probe": b"1"})
    a.node.receive_sighting(forged, "mdns", net.now)
    a.pump()
    net.run(20)
    net.ping_until(a, b, limit=5)
    assert a.device.peers[b.public].endpoint == before
    assert any(isinstance(e, CandidateProbed) and e.addr == ("192.0.2.66", 4444) for e in a.events)
    assert not any(isinstance(e, EndpointChanged) and e.new == ("192.0.2.66", 4444) for e in a.events)


# --- the bugs of issue 13 ------------------------------------------------------------


def lan_pair(*, peers: bool) -> tuple[Net, SimNode, SimNode]:
    net = Net()
    net.source = "mdns"
    a = net.node("a", ("10.7.0.2", 51820), "100.64.0.1")
    b = net.node("b", ("10.7.0.3", 51820), "100.64.0.2")
    if peers:
        a.add(b)
        b.add(a)
    a.start()
    b.start()
    return net, a, b


def test_peers_added_after_start_connect_from_records_seen_before() -> None:
    # `wg set wg0 peer … allowed-ips …` after both started: the records were seen while the
    # keys were strangers; adding the peer must use them, not wait for a record change
    net, a, b = lan_pair(peers=False)
    net.run(2)
    assert a.node.stats().counters["records-not-a-peer"] >= 1
    a.add(b)
    b.add(a)
    took = net.ping_until(a, b, limit=10)
    assert took < 2.5


def test_a_peer_added_later_is_probed_and_a_removed_one_forgotten() -> None:
    net, a, b = lan_pair(peers=True)
    net.ping_until(a, b, limit=5)
    a.node.remove_peer(b.public)
    assert b.public not in a.node.prober.peers and not a.node.candidates(b.public)
    drops = sum(a.node.stats().probe_drops.values())
    net.run(10)  # B goes on probing A: every probe is dropped now, none answered
    assert sum(a.node.stats().probe_drops.values()) > drops
    assert a.node.path_status  # the view copes with the peer gone
    a.add(b)
    net.ping_until(a, b, limit=10)


def test_a_new_private_key_is_published_and_the_old_name_withdrawn() -> None:
    net, a, b = lan_pair(peers=True)
    old_label = a.record.instance_label
    a.node.set_identity(bytes(range(32)), net.now)
    a.pump()
    changed = [e for e in a.events if isinstance(e, RecordChanged)][-1]
    assert changed.withdrawn == old_label
    assert changed.record.public_key == a.public != records.key_of_label(old_label)
    assert b"pub=" + __import__("base64").b64encode(a.public) in records.build_txt(changed.record)
    assert a.node.prober.keys.public == a.public  # probes are keyed from the new identity


def test_a_new_listen_port_is_published_at_once() -> None:
    net, a, b = lan_pair(peers=True)
    a.node.set_port(51999, net.now)
    a.pump()
    changed = [e for e in a.events if isinstance(e, RecordChanged)][-1]
    assert changed.record.port == 51999 and changed.withdrawn is None
    assert all(port == 51999 for _, port in changed.record.candidates)


def test_status_says_lan_with_stun_and_no_discovery() -> None:
    net = Net()
    s1 = net.stun_server(STUN1)
    net.directory = False
    a = net.node("a", ("10.7.0.2", 51820), "100.64.0.1", stun=[s1])
    b = net.node("b", ("10.7.0.3", 51820), "100.64.0.2", stun=[s1])
    a.add(b)
    b.add(a)
    a.node.set_endpoint(b.public, b.addr, "config")
    a.start()
    b.start()
    net.ping_until(a, b, limit=5)
    assert a.node.path_status(b.public, net.now).path == "lan"
    assert a.node.endpoint_source(b.public) == "config"


def test_a_goodbye_drops_the_candidates_it_brought() -> None:
    net, a, b = lan_pair(peers=True)
    net.directory = False
    a.node.remove_peer(b.public)
    a.add(b)  # no path, no candidates
    sighting = records.Sighting(b.public, [(ipaddress.ip_address("10.7.0.99"), 51820)], txt={"probe": b"1"})
    a.node.receive_sighting(sighting, "mdns", net.now)
    assert [p.addr for p in a.node.candidates(b.public)] == [("10.7.0.99", 51820)]
    a.node.receive_goodbye(b.public, "mdns", net.now)
    assert a.node.candidates(b.public) == []


def test_a_goodbye_keeps_the_live_path() -> None:
    net, a, b = lan_pair(peers=True)
    net.ping_until(a, b, limit=5)
    a.node.receive_goodbye(b.public, "mdns", net.now)
    assert a.device.peers[b.public].endpoint == b.addr
    assert [p.addr for p in a.node.candidates(b.public)] == [b.addr]
    net.ping_until(a, b, limit=2)


def test_records_of_strangers_are_bounded() -> None:
    net, a, b = lan_pair(peers=False)
    for i in range(1000):
        key = bytes([i % 256, i // 256]) + bytes(30)
        a.node.receive_sighting(records.Sighting(key, [(ipaddress.ip_address("10.7.0.9"), 1000 + i)]), "mdns",
                                net.now)
    assert len(a.node.strangers) <= 64
    net.run(700)
    assert len(a.node.strangers) == 0  # expired


def test_a_peer_without_probes_gets_handshake_tries() -> None:
    # a wireguard-go peer behind a hand-written record: no probe=1, so handshakes are the probe
    net = Net()
    net.directory = False
    a = net.node("a", ("10.7.0.2", 51820), "100.64.0.1")
    b = net.node("b", ("10.7.0.3", 51820), "100.64.0.2", traversal=False)  # answers no probes
    a.add(b)
    b.add(a)
    a.start()
    b.start()
    sighting = records.Sighting(b.public, [(ipaddress.ip_address("10.7.0.3"), 51820)])
    a.node.receive_sighting(sighting, "dns", net.now)
    a.pump()
    net.ping_until(a, b, limit=5)
    assert a.node.stats().counters.get("handshake-tries", 0) >= 1
    assert a.node.endpoint_source(b.public) == "dns"
    assert not a.node.runs_wgdisco(b.public)  # no multicast for it (proto/multicast.py)


def test_a_peer_whose_record_says_probe_runs_wgdisco_until_a_record_says_otherwise() -> None:
    net, a, b = lan_pair(peers=True)
    net.run(2)
    assert a.node.runs_wgdisco(b.public)  # wgdisco's records carry probe=1
    a.node.receive_sighting(records.Sighting(b.public, [(ipaddress.ip_address("10.7.0.3"), 51820)]), "dns", net.now)
    assert not a.node.runs_wgdisco(b.public)
    a.node.receive_sighting(records.Sighting(b.public, [], txt={"probe": b"1"}), "dns", net.now)
    assert a.node.runs_wgdisco(b.public)
    a.node.remove_peer(b.public)
    assert not a.node.runs_wgdisco(b.public)


# --- unicast lookups: fast first contact with the default PollInterval ------------------


def lookup_times(n: SimNode, peer: bytes, seconds: float, step: float = 0.05) -> list[float]:
    """When ``n`` wants ``peer`` looked up (LookupWanted), stepping the whole network ``step`` at a time."""
    net = n.net
    times, start = [], net.now
    while net.now < start + seconds:
        seen = len(n.events)
        net.run(step)
        if any(isinstance(e, LookupWanted) and peer in e.peers for e in n.events[seen:]):
            times.append(round(net.now - start, 2))
    return times


def wanted(n: SimNode, peer: bytes, seconds: float = 0.05) -> bool:
    """Does ``n`` ask for ``peer``'s lookup within ``seconds``?"""
    return bool(lookup_times(n, peer, seconds, step=0.01))


def test_a_peer_without_a_path_is_looked_up_on_a_growing_schedule() -> None:
    net, a, b = lan_pair(peers=False)
    net.directory = False
    a.add(b)
    times = lookup_times(a, b.public, 40)
    gaps = [y - x for x, y in zip(times, times[1:])]
    assert times[0] <= 0.05  # at once
    # every 0.5 s for the first 2 s, then growing up to PollInterval (10 s)
    assert gaps[:10] == pytest.approx([0.5] * 5 + [1, 2, 4, 8, 10], abs=0.06)


def test_our_record_changing_brings_the_lookup_forward() -> None:
    net, a, b = lan_pair(peers=False)
    net.directory = False
    a.add(b)
    lookup_times(a, b.public, 20)  # backoff grown to PollInterval
    assert a.node.lookups.next_deadline() > net.now + 1
    a.node.set_port(51821, net.now)  # our record changed
    assert a.node.lookups.next_deadline() == net.now and wanted(a, b.public)


def test_a_peer_with_a_path_is_looked_up_every_poll_interval() -> None:
    net, a, b = lan_pair(peers=True)
    a.device.set_persistent_keepalive(a.device.peers[b.public], 5, net.now)
    net.ping_until(a, b, limit=5)
    times = lookup_times(a, b.public, 45, step=0.1)
    gaps = [y - x for x, y in zip(times, times[1:])]
    # PollInterval or up to 15 % sooner (never later: a call= is read within it), on a 0.1 s step
    assert gaps and all(8.5 - 0.11 <= g <= 10 + 0.11 for g in gaps), gaps


def test_a_peer_that_loses_its_path_is_looked_up_at_once() -> None:
    net, a, b = lan_pair(peers=True)
    a.device.set_persistent_keepalive(a.device.peers[b.public], 5, net.now)
    net.ping_until(a, b, limit=5)
    lookup_times(a, b.public, 12, step=0.1)  # on the regular schedule now
    net.nodes.remove(b)  # B is gone: nothing answers A any more
    lost = net.run_until(lambda: not a.node.has_path(b.public, net.now), limit=30)
    lost_at = net.now
    wanted(a, b.public)  # at this instant, if not already in the step that lost it
    asked = [t for t, e in a.timed_events if isinstance(e, LookupWanted) and b.public in e.peers]
    assert asked and lost_at - 0.01 <= asked[-1] <= lost_at + 0.05, (lost_at, asked[-3:])
    assert lost < 20


def test_silence_on_a_live_path_brings_a_lookup_forward() -> None:
    # the peer's NAT got a new address; we still send to the old one: look its record up again
    net, a, b = two_behind_nats()
    net.ping_until(a, b, limit=10)
    lookup_times(a, b.public, 12, step=0.1)  # a's lookups of b are on the regular schedule
    net.nats[1].renumber("198.51.100.99")  # b's router: new WAN address
    a.ping(b)
    seen = len(a.events)
    lookup_at = net.run_until(lambda: any(isinstance(e, LookupWanted) and b.public in e.peers
                                          for e in a.events[seen:]), limit=8)
    assert lookup_at < 4  # SUSPECT_AFTER (2 s) after the first unanswered packet, polled every 0.5 s
    times = lookup_times(a, b.public, 8)
    gaps = [y - x for x, y in zip([0.0, *times], times)]
    assert gaps[:3] == pytest.approx([0.25, 0.5, 1], abs=0.06)  # the growing schedule again, from 0.25 s


# --- a LAN stranger forges records under a peer's key (issue 17) ---------------------------


def test_a_flood_of_forged_candidates_stays_bounded() -> None:
    net, a, b = lan_pair(peers=True)
    net.directory = False
    a.device.set_persistent_keepalive(a.device.peers[b.public], 5, net.now)
    net.ping_until(a, b, limit=5)
    endpoint = a.device.peers[b.public].endpoint
    sent_before = a.node.stats().probes_sent
    start = net.now
    for i in range(400):  # 20 records a second for 20 s, 31 new candidates each
        cands = [(ipaddress.ip_address("10.7.0.%d" % (100 + j)), 20000 + 31 * i + j) for j in range(31)]
        a.node.receive_sighting(records.Sighting(b.public, cands, txt={"probe": b"1"}), "mdns", net.now)
        a.pump()
        net.run(0.05)
    assert len(a.node.candidates(b.public)) <= 64
    assert a.device.peers[b.public].endpoint == endpoint  # the live path never moved
    probed = [e for e in a.events if isinstance(e, CandidateProbed) and e.peer == b.public]
    assert len(probed) <= 4 * 3  # 4 a 10 s window: 20 s of attack touches at most 3 windows
    spent = a.node.stats().probes_sent - sent_before
    assert spent <= 32 + 16 * (net.now - start) + 1
    # quiet again: the node sleeps between timers instead of spinning
    wakes, quiet_end = 0, net.now + 10
    while net.now < quiet_end:
        t = a.node.next_deadline(net.now)
        assert t is None or t > net.now - 1e-9
        net.step(quiet_end)
        wakes += 1
    assert wakes < 400  # a few timers a second (probe rounds, keepalives), not a busy loop
    net.ping_until(a, b, limit=2)


# --- the zero-config mesh (proto/mesh.py) ---------------------------------------------

MESH_KEY = "correct horse battery staple"
_meshes: dict[tuple[str, int], object] = {}


def a_mesh(key: str = MESH_KEY, max_peers: int = 256):  # type: ignore[no-untyped-def]
    from wgdisco.proto.mesh import Mesh

    if (key, max_peers) not in _meshes:
        _meshes[key, max_peers] = Mesh(key, max_peers=max_peers)
    return _meshes[key, max_peers]


def mesh_lan(n: int, **kw: object) -> tuple[Net, list[SimNode]]:
    net = Net()
    net.source = "mdns"
    nodes = [net.node(f"m{i}", (f"10.1.0.{i + 2}", 51820), None, mesh=kw.get("mesh") or a_mesh(),
                      lan_prefix="10.1.0.0/24") for i in range(n)]
    for node in nodes:
        node.start()
    return net, nodes


def test_mesh_three_nodes_admit_each_other_and_ping_on_derived_addresses() -> None:
    from wgdisco.proto.node import PeerAdmitted

    net, nodes = mesh_lan(3)
    mesh = a_mesh()
    for x in nodes:
        assert x.node.peers == {y.public for y in nodes if y is not x}
        admitted = {e.peer: e.addresses for e in x.events if isinstance(e, PeerAdmitted)}
        assert admitted.keys() == x.node.peers
        for y in nodes:
            if y is x:
                continue
            nets = set(x.device.allowed_ips.entries_for_peer(x.device.peers[y.public]))
            # computed here from y's key, the same on every node
            assert nets == {ipaddress.ip_network(f"{y.tunnel_ip}/32"),
                            ipaddress.ip_network(f"{mesh.ipv6_of(y.public)}/128")}
            assert set(admitted[y.public]) == nets
        assert ipaddress.ip_address(x.tunnel_ip) in mesh.ipv4
        assert x.record is not None and x.record.txt_extra["mesh"] == mesh.id
    for x in nodes:
        for y in nodes:
            if x is not y:
                net.ping_until(x, y, limit=10)
    assert nodes[0].node.is_mesh_peer(nodes[1].public)


def test_mesh_node_with_another_key_is_never_admitted() -> None:
    net, nodes = mesh_lan(2)
    other = net.node("x", ("10.1.0.9", 51820), None, mesh=a_mesh("another mesh key"))
    other.start()
    net.run(5)
    for x in nodes:
        assert other.public not in x.node.peers
        assert x.node.stats().counters.get("records-other-mesh", 0) >= 1
    assert other.node.peers == frozenset()
    # and its record republished later is still not admitted
    other.node.network_changed(other.lan(), net.now)
    other.pump()
    assert all(other.public not in x.node.peers for x in nodes)


def test_mesh_forged_record_for_a_member_is_ignored() -> None:
    net, (a, b) = mesh_lan(2)
    net.ping_until(a, b, limit=10)
    before = set(p.addr for p in a.node.candidates(b.public))
    endpoint = a.device.peers[b.public].endpoint
    mesh = a_mesh()
    forged_cands = [(ipaddress.ip_address("192.0.2.66"), 4444)]
    for txt in ({"probe": b"1"},  # no mesh keys at all
                {"mesh": mesh.id.encode(), "mc": b"9999999999999", "mac": b"A" * 24, "cand": b"192.0.2.66:4444"},
                {"mesh": mesh.id.encode(), "cand": b"192.0.2.66:4444"}):
        a.node.receive_sighting(records.Sighting(b.public, forged_cands, txt=txt), "mdns", net.now)
        a.pump()
    net.run(3)
    assert set(p.addr for p in a.node.candidates(b.public)) == before
    assert a.device.peers[b.public].endpoint == endpoint
    c = a.node.stats().counters
    assert c["mesh-records-invalid"] == 2 and c["mesh-records-unauthenticated"] == 1
    # a forged record of a stranger's key is not admitted either
    stranger = bytes(range(32))
    a.node.receive_sighting(records.Sighting(stranger, forged_cands, txt={"mesh": mesh.id.encode(),
                                             "mc": b"1", "mac": b"A" * 24}), "mdns", net.now)
    assert stranger not in a.node.peers


def test_mesh_replayed_record_is_ignored() -> None:
    net, (a, b) = mesh_lan(2)
    net.ping_until(a, b, limit=10)
    assert b.record is not None
    old = b.record
    old_sighting = records.record_from_dns(old.instance_label, old.port, old.target,
                                           [str(x) for x in old.addresses], records.build_txt(old))
    net.run(1)
    b.lan_prefix = "10.1.0.0/24"
    b.node.network_changed(b.lan() + [("eth1", ipaddress.ip_interface("10.3.0.2/24"))], net.now)
    b.pump()  # a newer record (new candidate): a higher mc=
    assert b.record is not old and int(b.record.txt_extra["mc"]) > int(old.txt_extra["mc"])  # type: ignore[arg-type]
    a.node.receive_sighting(old_sighting, "mdns", net.now)
    assert a.node.stats().counters["mesh-records-replayed"] == 1


def test_mesh_goodbye_removes_and_configured_peers_stay() -> None:
    from wgdisco.proto.membership import Timing as MeshTiming
    from wgdisco.proto.node import PeerRemoved
    MESH_GOODBYE_CONFIRM = MeshTiming.goodbye_confirm

    net, (a, b, c) = mesh_lan(3)
    plain = net.node("p", ("10.1.0.50", 51820), "100.64.0.50")
    a.add(plain)  # a [Peer] section
    net.run(2)
    net.nodes.remove(c)  # it stops (SIGTERM) ...
    net.goodbye(c)  # ... and says goodbye: the probe that checks it goes unanswered
    assert c.public in a.node.peers
    net.run(MESH_GOODBYE_CONFIRM + 0.1)
    for x in (a, b):
        assert c.public not in x.node.peers
        assert PeerRemoved(c.public, "goodbye") in x.events
    net.goodbye(plain)
    net.run(MESH_GOODBYE_CONFIRM + 0.1)
    assert plain.public in a.node.peers  # never removed by the mesh
    # it comes back: admitted again with the same address
    net.nodes.append(c)
    addr = c.tunnel_ip
    c.node.network_changed(c.lan() + [("eth1", ipaddress.ip_interface("10.3.0.2/24"))], net.now)
    c.pump()
    assert c.public in a.node.peers and c.tunnel_ip == addr
    net.ping_until(a, c, limit=10)


def test_mesh_silent_member_expires() -> None:
    from wgdisco.proto.membership import Timing as MeshTiming
    from wgdisco.proto.node import PeerRemoved
    MESH_EXPIRE = MeshTiming.expire

    net, (a, b, c) = mesh_lan(3)
    net.ping_until(a, c, limit=10)
    net.nodes.remove(c)  # gone without a goodbye (power cut)
    net.run(MESH_EXPIRE / 2)
    assert c.public in a.node.peers and b.public in a.node.peers
    net.run(MESH_EXPIRE + 30)
    assert c.public not in a.node.peers and PeerRemoved(c.public, "expired") in a.events
    assert b.public in a.node.peers  # alive: handshakes (persistent keepalive) keep it


def test_mesh_max_peers_holds() -> None:
    net, nodes = mesh_lan(4, mesh=a_mesh(max_peers=2))
    for x in nodes:
        assert len(x.node.peers) <= 2
    assert nodes[-1].node.stats().counters["mesh-peers-over-cap"] >= 1


def test_mesh_ipv4_collision_moves_the_higher_key_everywhere() -> None:
    from wgdisco.proto.mesh import Mesh
    from wgdisco.proto.node import MeshAddressChanged

    tiny = Mesh("", "10.5.0.0/29", master=bytes(32))  # six hosts: collisions are certain
    net, nodes = mesh_lan(4, mesh=tiny)
    addrs = [x.tunnel_ip for x in nodes]
    assert len(set(addrs)) == 4
    for x in nodes:
        for y in nodes:
            if x is not y:
                got = x.device.allowed_ips.entries_for_peer(x.device.peers[y.public])
                assert ipaddress.ip_network(f"{y.tunnel_ip}/32") in got
    moved = [e for x in nodes for e in x.events if isinstance(e, MeshAddressChanged) and e.peer == x.public]
    assert all(e.new is not None for e in moved)
    net.ping_until(nodes[0], nodes[3], limit=10)


def test_mesh_member_claiming_another_members_address_gets_only_its_own() -> None:
    net, (a, b) = mesh_lan(2)
    net.ping_until(a, b, limit=10)
    # a malicious member (it has the mesh key) publishes allowed= with b's address
    evil = net.node("evil", ("10.1.0.66", 51820), b.tunnel_ip, mesh=a_mesh(), lan_prefix="10.1.0.0/24")
    evil.start()
    net.run(3)
    assert evil.record is not None and ipaddress.ip_network(f"{b.tunnel_ip}/32") in evil.record.allowed
    assert evil.public in a.node.peers  # admitted: it holds the mesh key
    got = set(a.device.allowed_ips.entries_for_peer(a.device.peers[evil.public]))
    assert got == set(a.node.mesh_addresses(evil.public))  # computed from its key, not its record
    assert ipaddress.ip_network(f"{b.tunnel_ip}/32") in a.device.allowed_ips.entries_for_peer(a.device.peers[b.public])
    net.ping_until(a, b, limit=5)  # b's traffic still goes to b


def test_a_peer_that_changes_its_port_is_followed_within_seconds() -> None:
    # `wg set b listen-port N`: b's record changes; a sends to the old port until it learns the new
    net, a, b = lan_pair(peers=True)
    net.ping_until(a, b, limit=5)
    b.addr = (b.addr[0], 51999)  # the socket moved
    b.node.set_port(51999, net.now)
    b.pump()  # b's RecordChanged reaches a (mDNS)
    took = net.ping_until(a, b, limit=20, every=0.2)
    assert a.device.peers[b.public].endpoint == ("10.7.0.3", 51999)
    assert took < 4, took  # 2.6 s: SUSPECT_AFTER, then the answering path; was 10.6 s (the dead path's live time)


# --- port mapping (proto/portmap.py gives the node the gateway's mapping) ---------------------


def test_hard_nat_with_a_port_mapping_to_easy_nat_is_direct() -> None:
    net = Net()
    s1, s2 = net.stun_server(STUN1), net.stun_server(STUN2)
    nat_a = net.nat("nat-a", "10.1.0.0/24", "203.0.113.1", mapping="edm", filtering="apdf")
    net.nat("nat-b", "10.2.0.0/24", "198.51.100.1", mapping="eim", filtering="apdf")
    nat_a.forwards[51820] = ("10.1.0.2", 51820)  # what the gateway granted
    a = net.node("a", ("10.1.0.2", 51820), "100.64.0.1", stun=[s1, s2])
    b = net.node("b", ("10.2.0.2", 51820), "100.64.0.2", stun=[s1, s2])
    a.add(b)
    b.add(a)
    a.start()
    b.start()
    a.node.set_mapping(("203.0.113.1", 51820), net.now)
    a.pump()
    assert PortMappingChanged(("203.0.113.1", 51820)) in a.events
    cands = a.record.candidates
    mapped = cands.index((ipaddress.ip_address("203.0.113.1"), 51820))
    assert cands[0] == (ipaddress.ip_address("10.1.0.2"), 51820) and mapped == 1  # after host, before reflexive
    took = net.ping_until(b, a, limit=10)
    assert took < 3.0
    assert b.device.peers[a.public].endpoint == ("203.0.113.1", 51820)  # through the mapping
    assert a.node.path_status(b.public, net.now).path == "direct"


def test_hard_nat_with_a_port_mapping_to_hard_nat_is_direct() -> None:
    """Both NATs map per destination, but one forwards a port: the other side's probes reach
    it there (the mapped candidate is probed in the first rounds, inside the hard-NAT budget)."""
    net = Net()
    s1, s2 = net.stun_server(STUN1), net.stun_server(STUN2)
    nat_a = net.nat("nat-a", "10.1.0.0/24", "203.0.113.1", mapping="edm", filtering="apdf")
    net.nat("nat-b", "10.2.0.0/24", "198.51.100.1", mapping="edm", filtering="apdf")
    nat_a.forwards[51820] = ("10.1.0.2", 51820)
    a = net.node("a", ("10.1.0.2", 51820), "100.64.0.1", stun=[s1, s2])
    b = net.node("b", ("10.2.0.2", 51820), "100.64.0.2", stun=[s1, s2])
    a.add(b)
    b.add(a)
    a.start()
    b.start()
    a.node.set_mapping(("203.0.113.1", 51820), net.now)
    a.pump()
    assert net.ping_until(b, a, limit=10) < 3.0
    assert b.node.path_status(a.public, net.now).path == "direct"


def test_a_lost_mapping_leaves_the_record() -> None:
    net, a, b = lan_pair(peers=True)
    a.node.set_mapping(("203.0.113.1", 40000), net.now)
    a.node.set_mapping(("203.0.113.1", 40000), net.now)  # the same: nothing new
    a.pump()
    assert sum(isinstance(e, PortMappingChanged) for e in a.events) == 1
    a.node.set_mapping(None, net.now)
    a.pump()
    changed = [e for e in a.events if isinstance(e, RecordChanged)][-1]
    assert (ipaddress.ip_address("203.0.113.1"), 40000) not in changed.record.candidates
    assert PortMappingChanged(None) in a.events


# --- NAT classification (RFC 5780 tests, proto/natclass.py) ---------------------------


@pytest.mark.parametrize("mapping, filtering, want_mapping, want_filtering", [
    ("eim", "apdf", "endpoint-independent", "address-and-port-dependent"),
    ("eim", "eif", "endpoint-independent", "endpoint-independent"),
    ("edm", "apdf", "address-and-port-dependent", "address-and-port-dependent"),
])
def test_stun_with_an_alternate_address_classifies_the_nat(mapping: str, filtering: str, want_mapping: str,
                                                          want_filtering: str) -> None:
    net = Net()
    # the second server is not the first one's alternate (the documented caveat): 192.0.2.9 is
    s1 = net.stun_server(STUN1, alternate=("192.0.2.9", 3479))
    s2 = net.stun_server(STUN2)
    net.nat("nat-a", "10.1.0.0/24", "203.0.113.1", mapping=mapping, filtering=filtering)
    a = net.node("a", ("10.1.0.2", 51820), "100.64.0.1", stun=[s1, s2])
    a.start()
    net.run(3)
    assert (a.node.mapping_detail, a.node.filtering) == (want_mapping, want_filtering)
    [classified] = [e for e in a.events if isinstance(e, NatClassified)]
    assert classified.filtering == want_filtering


def test_a_server_without_an_alternate_leaves_filtering_unknown() -> None:
    net, a, b = two_behind_nats()
    net.run(3)
    assert a.node.filtering == "unknown" and a.node.mapping_detail == "endpoint-independent"


# --- mesh names (proto/names.py) and the record budget ---------------------------------


def named_mesh(names: list[str | None]) -> tuple[Net, list[SimNode]]:
    net = Net()
    net.source = "mdns"
    nodes = [net.node(f"m{i}", (f"10.1.0.{i + 2}", 51820), None, mesh=a_mesh(), mesh_name=name,
                      lan_prefix="10.1.0.0/24") for i, name in enumerate(names)]
    for node in nodes:
        node.start()
    return net, nodes


def hosts_of(n: SimNode) -> dict[str, set[str]]:
    """name -> addresses, from the last names plan ``n`` announced."""
    from wgdisco.proto.node import MeshNamesChanged

    plan = [e for e in n.events if isinstance(e, MeshNamesChanged)][-1]
    out: dict[str, set[str]] = {}
    for addr, names in plan.hosts:
        for name in names:
            out.setdefault(name, set()).add(addr)
    return out


def test_mesh_names_resolve_and_a_contested_name_resolves_to_nobody() -> None:
    from wgdisco.proto.names import key_name
    from wgdisco.proto import keys as keymod

    net, (a, b, c, d) = named_mesh(["alice", "bob", "db", "db"])
    net.run(2)
    mesh = a_mesh()
    for x in (a, b, c, d):
        hosts = hosts_of(x)
        assert hosts["alice"] == {a.tunnel_ip, str(mesh.ipv6_of(a.public))}
        assert hosts["bob"] == {b.tunnel_ip, str(mesh.ipv6_of(b.public))}
        assert "db" not in hosts  # two members claim it: it is nobody's, on every member alike
        for y in (a, b, c, d):  # every member keeps its key name
            assert hosts[key_name(keymod.key_to_base32(y.public))] == {y.tunnel_ip, str(mesh.ipv6_of(y.public))}
    assert a.node.membership.name_of(c.public) == ("db", True)
    assert a.node.membership.names_of(b.public) == ["bob", key_name(keymod.key_to_base32(b.public))]
    assert a.record is not None and a.record.txt_extra["name"] == "alice"
    # one of the two leaves: the name is the other's
    net.nodes.remove(d)
    net.goodbye(d)
    net.run(3)
    assert hosts_of(a)["db"] == {c.tunnel_ip, str(mesh.ipv6_of(c.public))}


def test_mesh_name_is_covered_by_the_mac_and_checked() -> None:
    net, (a, b) = named_mesh(["alice", "bob"])
    net.run(2)
    assert b.record is not None
    rec = b.record
    txt = records.build_txt(rec)
    # a member's record with its name changed on the way: the MAC fails, nothing changes
    forged = [t.replace(b"name=bob", b"name=alice") for t in txt]
    s = records.record_from_dns(rec.instance_label, rec.port, rec.target, [str(x) for x in rec.addresses], forged)
    a.node.receive_sighting(s, "mdns", net.now)
    assert a.node.stats().counters["mesh-records-invalid"] == 1
    assert a.node.membership.name_of(b.public) == ("bob", False)
    # a record whose MAC is good but whose name is not a host name: counted, no name
    mesh = a_mesh()
    for bad in ("-bad", "a" * 64, "Ex ample", "wg-abcdefabcdefabcd", "1234", "caf\u00e9", "a.b"):
        raw = bad.encode("utf-8")
        if len(raw) > 63:
            continue  # over the cap: the record is refused before the MAC (checked below)
        txt2 = {**records.parse_txt(txt)[0], "name": raw, "mc": b"99999999999990",
                "mac": mesh.mac(b.public, ",".join(records.list_items(records.parse_txt(txt)[0], "cand")),
                                99999999999990, bad).encode()}
        a.node.receive_sighting(records.Sighting(b.public, [], txt=txt2), "mdns", net.now)
        assert a.node.membership.name_of(b.public) == (None, False), bad
    assert a.node.stats().counters["mesh-names-invalid"] >= 5
    long_txt = {**records.parse_txt(txt)[0], "name": b"a" * 64, "mc": b"99999999999999", "mac": b"A" * 24}
    before = a.node.stats().counters["mesh-records-invalid"]
    a.node.receive_sighting(records.Sighting(b.public, [], txt=long_txt), "mdns", net.now)
    assert a.node.stats().counters["mesh-records-invalid"] == before + 1


def test_mesh_records_over_the_budget_wait_and_are_processed_later() -> None:
    from wgdisco.proto.membership import Timing as MeshTiming
    MESH_RECORDS_BURST, MESH_RECORDS_PER_SECOND = MeshTiming.records_burst, MeshTiming.records_per_second

    net, (a, b) = mesh_lan(2)
    net.run(1)
    mesh = a_mesh()
    flood = 3 * MESH_RECORDS_BURST
    for i in range(flood):  # valid-looking records of strangers' keys, with bad MACs
        key = i.to_bytes(4, "big") + bytes(28)
        a.node.receive_sighting(records.Sighting(key, [], txt={"mesh": mesh.id.encode(), "mc": b"1",
                                                               "mac": b"A" * 24}), "mdns", net.now)
    c = a.node.stats().counters
    assert c["mesh-records-invalid"] == MESH_RECORDS_BURST  # the burst, then nothing more at once
    assert c["mesh-records-deferred"] == flood - MESH_RECORDS_BURST
    assert c["mesh-records-dropped"] == flood - MESH_RECORDS_BURST - 256  # at most MeshMaxPeers wait
    # a real member's record arrives in the flood: it waits its turn, then is admitted
    late = net.node("late", ("10.1.0.30", 51820), None, mesh=mesh, lan_prefix="10.1.0.0/24")
    late.start()
    assert late.public not in a.node.peers
    net.run(256 / MESH_RECORDS_PER_SECOND + 2)
    assert late.public in a.node.peers
    assert a.node.stats().counters["mesh-records-invalid"] == MESH_RECORDS_BURST + 256 - 1


def test_mesh_member_that_cannot_reach_a_peer_announces_again_backing_off() -> None:
    from wgdisco.proto.node import AnnounceWanted

    net, (a, b) = mesh_lan(2)
    net.run(5)
    assert not [e for e in a.events if isinstance(e, AnnounceWanted)]  # everyone reached: quiet
    ghost = net.node("ghost", ("10.1.0.40", 51820), None, mesh=a_mesh(), lan_prefix="10.1.0.0/24")
    ghost.start()  # a and b admit it ...
    net.nodes.remove(ghost)  # ... but it never answers (its announcements of a and b are lost)
    net.run(40)
    # after 2 s, then 2, 4, 8, 16 s apart (the next would be 32 s later)
    assert len([e for e in a.events if isinstance(e, AnnounceWanted)]) == 5
    assert a.node.stats().counters["mesh-announcements"] == 5


def test_mesh_browse_schedule_and_which_keys_to_look_up() -> None:
    from wgdisco.proto.lookups import Timing as LookupTiming
    from wgdisco.proto.node import STRANGER_TTL
    MESH_BROWSE_LOOKUPS = LookupTiming.browse_lookups

    from wgdisco.proto.node import BrowseWanted

    def browses(n: SimNode) -> list[float]:
        return [t for t, e in n.timed_events if isinstance(e, BrowseWanted)]

    def asked(n: SimNode) -> list[bytes]:
        return [k for e in n.node.pop_events() if isinstance(e, LookupWanted) for k in e.peers]

    net, (a, b) = mesh_lan(2)
    start = net.now
    net.run(40)
    due = [round(t - start, 1) for t in browses(a)]
    assert due[0] == 0.0  # at once, then on a growing schedule up to PollInterval
    gaps = [round(y - x, 1) for x, y in zip(due, due[1:])]
    assert gaps[:4] == [0.5, 1, 2, 4] and all(g <= 10.01 for g in gaps)
    now = net.now
    strangers = [bytes([i]) * 32 for i in range(1, 60)]
    found = [a.public, b.public, *strangers]
    a.node.browse_found(found, now)
    assert asked(a) == strangers[:MESH_BROWSE_LOOKUPS]  # not us, not a peer, at most 32 a round
    # a key whose record is not one of our mesh's is not looked up again for a while
    a.node.receive_sighting(records.Sighting(strangers[0], [], txt={"probe": b"1"}), "dns", now)
    a.node.browse_found(found, now)
    assert strangers[0] not in asked(a)
    a.node.browse_found(found, now + STRANGER_TTL + 1)
    assert strangers[0] in asked(a)
    # without a mesh there is nothing to browse
    plain_net = Net()
    plain = plain_net.node("p", ("10.1.0.9", 51820), "100.64.0.9")
    plain.start()
    plain_net.run(20)
    assert not browses(plain)


def test_mesh_goodbye_of_a_member_still_there_removes_nothing() -> None:
    """mDNS goodbyes are not authenticated, and a member whose network changes sends them before
    it announces again: a live member answers the probe that checks its goodbye and stays."""
    from wgdisco.proto.membership import Timing as MeshTiming
    from wgdisco.proto.node import PeerRemoved
    MESH_GOODBYE_CONFIRM = MeshTiming.goodbye_confirm

    net, (a, b) = mesh_lan(2)
    net.ping_until(a, b, limit=10)
    handshakes = a.node.handshakes(b.public)
    a.node.receive_goodbye(b.public, "mdns", net.now)  # forged, or b rebinding its mDNS
    a.pump()
    net.run(MESH_GOODBYE_CONFIRM + 1)
    assert b.public in a.node.peers and PeerRemoved(b.public, "goodbye") not in a.events
    assert a.node.stats().counters["mesh-goodbyes-refuted"] == 1
    assert a.node.handshakes(b.public) == handshakes  # the session was never dropped
    net.ping_until(a, b, limit=2)


def test_a_probe_is_answered_at_once_not_at_the_next_timer() -> None:
    """The answer to a probe request leaves with the datagram that asked (one LAN latency, 10 ms
    here), not when the node's next timer fires (it was 0.2 s late once: the path driver's outbox
    was only collected on timers)."""
    net, (a, b) = mesh_lan(2)
    took = net.run_until(lambda: a.node.has_path(b.public, net.now) and b.node.has_path(a.public, net.now), limit=5)
    assert took <= 2 * net.latency + 1e-9, took


# --- low-order public keys (wireguard-linux netns.sh, "send nothing") ---------------------


def test_a_low_order_peer_is_added_and_sent_nothing_ever() -> None:
    """``wg set … peer <low-order point> persistent-keepalive 1 endpoint 127.0.0.1:1111``: the
    kernel and wireguard-go accept the peer and never send to it (RFC 7748 §6.1: no shared
    secret). Neither a handshake, a probe, a keepalive, nor data from the TUN goes out."""
    net = Net()
    a = net.node("a", ("192.0.2.10", 51820), "100.64.0.1")
    b = net.node("b", ("198.51.100.20", 51820), "100.64.0.2")
    a.add(b)  # an ordinary peer beside it: the control that a's timers run and it sends
    b.add(a)
    a.start()
    b.start()
    endpoint = ("127.0.0.1", 1111)
    for n, low in enumerate([bytes(32), (1).to_bytes(32, "little"), bytes.fromhex(
            "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")]):
        peer = a.node.add_peer(low, net.now)  # no LocalError
        a.device.set_persistent_keepalive(peer, 1, net.now)
        a.node.set_endpoint(low, (endpoint[0], endpoint[1] + n), "uapi")
        a.device.allowed_ips.insert(ipaddress.ip_network(f"100.64.9.{n}/32"), peer)
        assert a.device.peers[low].endpoint == (endpoint[0], endpoint[1] + n)
        assert low not in a.node.prober.peers
        out = a.device.send_packet(ipv4_packet("100.64.0.1", f"100.64.9.{n}"), net.now)
        assert out is None
        a.pump()
    a.device.set_persistent_keepalive(a.device.peers[b.public], 1, net.now)
    net.ping_until(a, b, limit=10)
    net.run(300)
    assert [t for t, dst in a.sent if dst[0] == "127.0.0.1"] == []
    assert len([t for t, dst in a.sent if dst[0] == "198.51.100.20"]) > 200  # keepalives to b
    a.node.remove_peer(bytes(32))
    assert bytes(32) not in a.node.peers


# --- the clock across a suspend (daemon/clock.py) ------------------------------------------------


@pytest.mark.parametrize("asleep", [200.0, 3 * 3600.0, 30 * 86400.0])
def test_a_forward_jump_of_the_clock_costs_one_round_not_a_storm(asleep: float) -> None:
    """The protocol clock (CLOCK_BOOTTIME) jumps by the length of a suspend. The first wake-up
    after it fires each due timer once (no catch-up of missed intervals: lookups, probes, STUN,
    keepalives), expired keys are gone, and the path is back within a handshake's time."""
    net = Net()
    s1, s2 = net.stun_server(STUN1), net.stun_server(STUN2)
    net.nat("nat-a", "10.1.0.0/24", "203.0.113.1")
    a = net.node("a", ("10.1.0.2", 51820), "100.64.0.1", stun=[s1, s2])
    b = net.node("b", ("198.51.100.20", 51820), "100.64.0.2", stun=[s1, s2])
    a.add(b)
    b.add(a)
    a.start()
    b.start()
    a.device.set_persistent_keepalive(a.device.peers[b.public], 25, net.now)
    net.ping_until(a, b, limit=10)
    net.run(30)
    old = a.device.peers[b.public].current
    net.now += asleep  # nothing ran: the machine slept, the clock counted it
    woke_at = net.now
    net.run(0.5)
    burst = {n.name: len([t for t, _ in n.sent if t >= woke_at]) for n in (a, b)}
    assert max(burst.values()) <= 12, burst  # a round of STUN, probes and one handshake each
    took = net.ping_until(a, b, limit=15)
    assert a.device.peers[b.public].current is not old
    assert took < 7.0, took  # at worst one REKEY_TIMEOUT (5 s + jitter) after a crossed handshake


def test_mesh_ban_then_rotation_keeps_the_others_their_sessions_and_addresses() -> None:
    """Issue 27 on the fake clock: c is banned on a and b (gone at once), then a and b rotate the
    mesh key one after the other with a window; they keep each other, their addresses and their
    session; after the window a fresh identity made with the old key is admitted by nobody."""
    from wgdisco.proto.mesh import Mesh
    from wgdisco.proto.node import PeerRemoved

    old = a_mesh()
    net, (a, b, c) = mesh_lan(3)
    net.ping_until(a, b, limit=10)
    addrs = {x.public: (x.tunnel_ip, set(x.device.allowed_ips.entries_for_peer(x.device.peers[y.public])))
             for x, y in ((a, b), (b, a))}
    for x in (a, b):
        x.node.set_mesh(old, None, None, {c.public}, net.now)
        x.pump()
        assert c.public not in x.node.peers and PeerRemoved(c.public, "banned") in x.events
    handshakes = a.device.peers[b.public].last_handshake
    new = Mesh("a new key", plan=old.plan)
    end = a.device.wall_offset + net.now + 20
    for x in (a, b):
        x.node.set_mesh(new, old, end, {c.public}, net.now)
        x.pump()
        assert x.node.record().txt_extra["mesh"] == new.id
        net.run(1)
    net.publish(a, a.node.record())  # what the daemon's rescan does: b checks a's record again
    for x, y in ((a, b), (b, a)):
        assert x.node.membership.generation_label(y.public) == "current"
    net.run(30)  # past the end
    for x, y in ((a, b), (b, a)):
        assert x.node.peers == {y.public}
        assert (x.tunnel_ip, set(x.device.allowed_ips.entries_for_peer(x.device.peers[y.public]))) == addrs[x.public]
    assert a.device.peers[b.public].last_handshake is not None and handshakes is not None
    net.ping_until(a, b, limit=2)
    thief = net.node("c2", ("10.1.0.9", 51820), None, mesh=old, lan_prefix="10.1.0.0/24")
    thief.start()
    net.run(5)
    assert thief.public not in a.node.peers | b.node.peers
    assert a.node.membership.counters.get("mesh-records-old-key", 0) > 0


# --- a router reboots under a session (issue 24) ------------------------------------------


def session_until_both_through(net: Net, a: SimNode, b: SimNode, limit: float) -> float:
    """``a`` pings ``b`` every 0.1 s and ``b`` answers each (as ``ping`` and its echo reply would):
    seconds until a ping sent from now on and its answer both got through."""
    start, i = net.now, 0
    while True:
        tag, reply = f"s{net.seq}-{i}".encode(), f"r{net.seq}-{i}".encode()
        a.ping(b, tag)
        net.run(0.1)
        if b.got(a, tag):
            b.ping(a, reply)
            net.run(0.01)
            if a.got(b, reply):
                return net.now - start
        if net.now - start >= limit:
            raise AssertionError(f"no session through within {limit} s (simulated)")
        i += 1


@pytest.mark.parametrize("moved", [0, 1])
def test_a_router_reboot_under_a_session_is_recovered_in_seconds(moved: int) -> None:
    """A pings B, B answers; then one router gets a new WAN address with every mapping gone (a
    reboot). The moved side's data goes unanswered (2 s): it asks STUN again, sees its new
    address, publishes it and probes its current path at once, which opens its new mapping towards
    the other side; the other side's data went unanswered too, so it looked the moved one up again
    and its probe to the new address now gets in. Without that probe the passive side (B) waited
    for its next keepalive, ~12 s."""
    net, a, b = two_behind_nats()
    net.ping_until(a, b, limit=10)
    steady = net.now + 3
    while net.now < steady:  # the session runs up to the reboot: some answers are in flight then
        session_until_both_through(net, a, b, limit=5)
    net.nats[moved].renumber("192.0.2.99")
    took = session_until_both_through(net, a, b, limit=30)
    assert took < 4.5, took
    mover, other = (a, b) if moved == 0 else (b, a)
    assert other.device.peers[mover.public].endpoint[0] == "192.0.2.99"


def test_a_new_reflexive_address_probes_every_current_path_at_once() -> None:
    """The NAT's address changed under a live path (STUN says so): a probe to the peer's current
    path goes out at once, so the new mapping lets the peer's probe to our new record in."""
    net, a, b = two_behind_nats()
    net.ping_until(a, b, limit=10)
    net.run(1)
    a_at = b.device.peers[a.public].endpoint
    net.nats[1].renumber("192.0.2.99")
    seen = len(b.timed_events)
    b.node.nat.restart(net.now)  # a STUN round (as after unanswered data), not a network change
    b.pump()
    net.run_until(lambda: any(getattr(e, "moved", False) for _t, e in b.timed_events[seen:]), limit=3)
    moved_at = next(t for t, e in b.timed_events[seen:] if getattr(e, "moved", False))
    assert [t for t, dst in b.sent if dst == a_at and moved_at <= t <= moved_at + 0.001], b.sent[-5:]


def test_a_second_servers_answer_is_not_a_move() -> None:
    """Behind a hard NAT each STUN server sees another port: the second answer adds an address,
    it does not replace one (no probe round to the current paths for it)."""
    net, a, b = two_behind_nats(map_a="edm")
    net.run(3)
    changes = [e for _t, e in a.timed_events if type(e).__name__ == "ReflexiveChanged"]
    assert any(len(e.reflexive) == 2 for e in changes) and not any(e.moved for e in changes), changes
