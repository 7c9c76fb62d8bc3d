"""The mesh simulator (wgdisco/sim/, bench/meshsim.py; issue 26): a tiny mesh behind mixed NATs
converges and is quiet when idle; the nameserver counts what the members ask and refuses an
answer larger than one DNS message; the fast network gives the same run as the plain one."""

from __future__ import annotations

import dataclasses
import time

from wgdisco.sim.mesh import Config, MeshSim
from wgdisco.sim.rendezvous import EDNS_PAYLOAD, Nameserver

# a LAN of two behind a port-restricted NAT, a full-cone NAT, two hard NATs apart, a WAN host
SITES = [("restricted", 2), ("easy", 1), ("hard", 1), ("hard", 1), ("none", 1)]
NO_HARD = [("restricted", 2), ("easy", 1), ("none", 1)]  # no birthday rounds: quicker to simulate


def tiny(sites: list[tuple[str, int]] = SITES, **kw: object) -> MeshSim:
    sim = MeshSim(Config(sites=sites, **kw))
    sim.start()
    return sim


def test_a_mixed_mesh_converges_and_an_idle_member_sends_under_one_datagram_a_second() -> None:
    sim = tiny()
    assert not sim.can_meet(3, 4) and sim.can_meet(2, 5) and sim.can_meet(0, 1)  # hard ↔ hard apart only
    assert sim.expected_pairs() == 15 - 1
    took = sim.run_to_full_mesh(limit=60, every=0.5)
    assert took is not None and took <= 15, took  # a birthday round for the hard ones included
    members = sim.members
    assert all(m.node.peers == {o.public for o in members if o is not m} for m in members)  # every one a peer
    sim.run(200)  # past the "in use" window of the convergence's own traffic
    idle = sim.window(300, time.monotonic)
    per_second = sum(idle.per_member_minute(len(members)).values()) / 60
    assert per_second <= 1.0, idle.sent  # issue 26's bound for an idle member
    assert idle.sent["data"] == 0
    # the members keep reading the zone: browses every PollInterval, SRV and TXT per peer
    assert idle.dns["PTR"] > 0 and idle.dns["SRV"] == idle.dns["TXT"] > 0 and idle.dns["failed"] == 0
    assert sim.full_mesh()  # still a full mesh after 500 s of quiet


def test_traffic_is_counted_as_data_and_gets_through() -> None:
    sim = tiny(NO_HARD)
    assert sim.run_to_full_mesh(limit=60) is not None
    before = [m.counts["data"] for m in sim.members]
    sim.traffic(pairs_per_minute=6, seconds=60, duration=10)
    busy = sim.window(60, time.monotonic)
    assert busy.sent["data"] >= 6 * 10 * 2  # six pairs, ten pings each, and their answers
    assert sum(m.counts["data"] for m in sim.members) - sum(before) == busy.sent["data"]


def test_an_answer_larger_than_one_message_cannot_be_given_and_the_sites_stay_apart() -> None:
    sim = tiny(max_message=300)  # a PTR set of six (~480 bytes) no longer fits
    assert sim.run_to_full_mesh(limit=20) is None
    assert sim.nameserver.failed > 0 and sim.nameserver.largest["PTR"] > 300
    lan = sim.members[0].node
    assert lan.peers == {sim.members[1].public}  # the LAN pair met over mDNS alone


def test_the_nameserver_counts_queries_and_tcp_retries() -> None:
    sim = tiny()
    sim.run(5)
    ns: Nameserver = sim.nameserver
    assert len(ns.zone) == 6 and ns.updates >= 6
    assert ns.browse() is not None
    size = ns.largest["PTR"]
    assert 6 * 40 < size < EDNS_PAYLOAD  # six PTRs, compressed names
    tcp = ns.queries["tcp"]
    ns.max_message = 1 << 20
    record = next(iter(ns.zone.values()))
    for i in range(30):  # a PTR set over the EDNS payload is asked again over TCP
        ns.update(dataclasses.replace(record, public_key=bytes([i]) * 32))
    assert ns.browse() is not None and ns.largest["PTR"] > EDNS_PAYLOAD and ns.queries["tcp"] == tcp + 1


def test_the_fast_network_runs_the_same_simulation_as_the_plain_one() -> None:
    runs = []
    for fast in (True, False):
        sim = tiny(NO_HARD, fast=fast)
        took = sim.run_to_full_mesh(limit=60, every=0.5)
        sim.run(30)
        runs.append((took, sim.net.delivered, sim.net.dropped, sim.counts()))
    assert runs[0] == runs[1]


def test_a_ptr_set_beyond_one_message_has_its_size_and_cannot_be_given() -> None:
    sim = tiny(NO_HARD)
    sim.run(2)
    ns = sim.nameserver
    record = next(iter(ns.zone.values()))
    for i in range(1000):  # ~71 bytes each (the estimate): ~71 KB
        ns.update(dataclasses.replace(record, public_key=i.to_bytes(32, "big")))
    assert ns.browse() is None and ns.failed == 1
    assert 1004 * 70 < ns.largest["PTR"] < 1004 * 72
