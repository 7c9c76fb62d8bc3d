"""wgdisco.proto.multicast: which packets fan out to whom, and the budgets, on a fake clock.

The device's part (one copy per eligible peer with a session, never a handshake for it, what a
peer sends delivered within its budget, the same through the compiled path) is here too, with
two and three Devices joined in memory; Avahi over real tunnels is tests/netns/test_multicast_lab.py.
"""

from __future__ import annotations

import ipaddress
import random
import struct

import pytest

from wgdisco.proto import keys
from wgdisco.proto.device import Device
from wgdisco.proto.multicast import (
    GROUP_BURST, GROUP_RATE, MDNS_GROUPS, PEER_BURST, PEER_RATE, Multicast, destination, is_link_local_group,
)


def ipv4(src: str, dst: str, payload: bytes = b"m" * 30, ttl: int = 255) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, ttl, 17, 0,
                       ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed) + payload


def ipv6(src: str, dst: str, payload: bytes = b"m6" * 15, hops: int = 255) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), 17, hops, ipaddress.IPv6Address(src).packed,
                       ipaddress.IPv6Address(dst).packed) + payload


MDNS4, MDNS6 = "224.0.0.251", "ff02::fb"
A, B, C = b"A" * 32, b"B" * 32, b"C" * 32


def core(eligible=lambda k: True, **kw) -> Multicast:
    return Multicast(MDNS_GROUPS, eligible=eligible, **kw)


# --- the pure core ------------------------------------------------------------------------


@pytest.mark.parametrize("packet, group", [
    (ipv4("10.0.0.1", MDNS4), ipaddress.ip_address(MDNS4).packed),
    (ipv4("10.0.0.1", "239.255.255.250"), ipaddress.ip_address("239.255.255.250").packed),
    (ipv4("10.0.0.1", "10.0.0.2"), None),
    (ipv4("10.0.0.1", "255.255.255.255"), None),  # broadcast is not multicast
    (ipv4("10.0.0.1", "240.0.0.1"), None),
    (ipv6("fd00::1", MDNS6), ipaddress.ip_address(MDNS6).packed),
    (ipv6("fd00::1", "fd00::2"), None),
    (b"", None), (b"\x45" + bytes(10), None), (b"\x60" + bytes(30), None), (b"\x10" * 40, None),
])
def test_destination(packet: bytes, group: bytes | None) -> None:
    assert destination(packet) == group
    assert destination(memoryview(packet)) == group


def test_link_local_groups() -> None:
    assert all(is_link_local_group(g) for g in MDNS_GROUPS)
    assert not is_link_local_group(ipaddress.ip_address("239.255.255.250"))
    assert not is_link_local_group(ipaddress.ip_address("ff05::c"))
    assert is_link_local_group(ipaddress.ip_address("ff02::c"))


def test_unicast_is_not_the_cores_and_other_groups_are_off() -> None:
    mc = core()
    assert mc.admit_send(ipv4("10.0.0.1", "10.0.0.2"), 0.0) is None
    assert mc.admit_send(ipv4("10.0.0.1", "239.255.255.250"), 0.0) is False
    assert mc.admit_send(ipv4("10.0.0.1", MDNS4), 0.0) is True
    assert mc.admit_send(ipv6("fd00::1", MDNS6), 0.0) is True
    assert mc.counters == {"multicast-group-off": 1, "multicast-fanned-out": 2}
    assert mc.next_deadline() is None and mc.next_deadline() is None
    ssdp = Multicast([*MDNS_GROUPS, "239.255.255.250"], eligible=lambda k: True)
    assert ssdp.admit_send(ipv4("10.0.0.1", "239.255.255.250"), 0.0) is True


def test_group_budget_on_a_fake_clock() -> None:
    mc = core()
    now = 100.0
    admitted = sum(bool(mc.admit_send(ipv4("10.0.0.1", MDNS4), now)) for _ in range(10 * GROUP_BURST))
    assert admitted == GROUP_BURST  # a burst, then nothing until tokens come back
    assert mc.counters["multicast-group-over-budget"] == 9 * GROUP_BURST
    # each group has its own budget: IPv6 mDNS still goes
    assert mc.admit_send(ipv6("fd00::1", MDNS6), now) is True
    # a 10,000 packets/s flood for 10 s: at most the burst + rate × time get through
    t, passed = now, 0
    for _ in range(100_000):
        t += 0.0001
        passed += bool(mc.admit_send(ipv4("10.0.0.1", MDNS4), t))
    assert passed <= GROUP_BURST + GROUP_RATE * (t - now) + 1
    assert passed >= GROUP_RATE * (t - now) - 1  # and the budget is used, not starved


def test_peer_budget_membership_and_forgetting() -> None:
    mc = core(eligible=lambda k: k != C)
    packet = ipv4("10.0.0.1", MDNS4)
    assert [mc.admit_received(A, packet, 0.0) for _ in range(PEER_BURST + 5)].count(True) == PEER_BURST
    assert mc.admit_received(B, packet, 0.0) is True  # another peer: its own budget
    assert mc.admit_received(A, packet, 1.0 / PEER_RATE) is True  # one token back
    assert mc.admit_received(C, packet, 0.0) is False  # not a member: never delivered
    assert mc.admit_received(A, ipv4("10.0.0.1", "239.1.1.1"), 5.0) is False
    assert mc.counters == {"multicast-received": PEER_BURST + 2, "multicast-received-over-budget": 5,
                           "multicast-received-not-member": 1, "multicast-received-group-off": 1}
    assert len(mc) == 2
    mc.forget(A)
    assert len(mc) == 1


def test_peer_buckets_are_capped() -> None:
    mc = core(max_peer_buckets=16)
    packet = ipv6("fd00::1", MDNS6)
    for i in range(1000):
        mc.admit_received(i.to_bytes(32, "big"), packet, float(i))
    assert len(mc) == 16


# --- the device --------------------------------------------------------------------------


class Rng:
    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    def __call__(self, n: int) -> bytes:
        return self.r.randbytes(n)


class Mesh:
    """Three devices, each peered with the other two (10.0.0.1-3, fd00::1-3), sessions up."""

    def __init__(self, n: int = 3, now: float = 1000.0, eligible=lambda k: True) -> None:
        self.now = now
        self.devs = [Device(keys.clamp(Rng(i)(32)), rng=Rng(i + 10), now=now) for i in range(n)]
        self.addr = {id(d): ("net", i) for i, d in enumerate(self.devs)}
        for i, d in enumerate(self.devs):
            d.multicast = Multicast(MDNS_GROUPS, eligible=eligible)
            for j, o in enumerate(self.devs):
                if i != j:
                    p = d.add_peer(o.identity.public)
                    d.allowed_ips.insert(ipaddress.ip_network(f"10.0.0.{j + 1}/32"), p)
                    d.allowed_ips.insert(ipaddress.ip_network(f"fd00::{j + 1}/128"), p)
                    d.set_endpoint(p, ("net", j))
        for i, d in enumerate(self.devs):  # one handshake per pair, then data both ways
            for j in range(i + 1, n):
                d.send_packet(ipv4(f"10.0.0.{i + 1}", f"10.0.0.{j + 1}"), now)
                self.deliver()
                self.devs[j].send_packet(ipv4(f"10.0.0.{j + 1}", f"10.0.0.{i + 1}"), now)
                self.deliver()

    def deliver(self) -> dict[int, list[bytes]]:
        """Carry every queued datagram until none are left; what each device wrote to TUN."""
        tun: dict[int, list[bytes]] = {i: [] for i in range(len(self.devs))}
        for _ in range(10):
            moved = False
            for i, d in enumerate(self.devs):
                for data, (_net, j) in d.datagrams_to_send():
                    moved = True
                    inner = self.devs[j].receive_datagram(data, ("net", i), self.now)
                    if inner is not None:
                        tun[j].append(inner)
            if not moved:
                break
        return tun


def test_a_multicast_packet_reaches_every_peer_once_and_is_never_sent_on() -> None:
    m = Mesh()
    for packet in (ipv4("10.0.0.1", MDNS4), ipv6("fd00::1", MDNS6)):
        assert m.devs[0].send_packet(packet, m.now) is None  # the copies are in the outbox
        tun = m.deliver()
        assert tun == {0: [], 1: [packet], 2: [packet]}  # once per receiver, TTL / hop limit as sent
        assert packet[8] == 255 or packet[7] == 255
    # what B and C received went to their TUN only: nothing was sent on (no transit, no loop)
    for d in m.devs[1:]:
        assert "multicast-sent" not in d.multicast.counters
    assert m.devs[0].multicast.counters["multicast-sent"] == 4


def test_only_eligible_peers_get_a_copy_and_one_without_a_session_gets_a_handshake() -> None:
    m = Mesh()
    a, b, c = m.devs
    wggo = c.identity.public
    a.multicast = Multicast(MDNS_GROUPS, eligible=lambda k: k != wggo)
    a.send_packet(ipv4("10.0.0.1", MDNS4), m.now)
    assert [to for _d, to in a.outbox] == [("net", 1)]
    m.deliver()
    # an idle peer has no session (issue 26: nothing keeps one): the packet waits for a handshake,
    # as a unicast one would; the wireguard-go peer gets neither
    later = m.now + 400  # every keypair expired (REJECT_AFTER_TIME)
    handshakes_c = a.peers[wggo].last_sent_handshake
    assert a.send_packet(ipv4("10.0.0.1", MDNS4), later) is None
    assert [bytes(d[:1]) for d, to in a.outbox] == [b"\x01"] and a.outbox[0][1] == ("net", 1)  # an initiation
    assert a.peers[b.identity.public].staged and not a.peers[wggo].staged
    assert a.peers[wggo].last_sent_handshake == handshakes_c


def test_received_multicast_within_the_peer_budget_and_from_members_only() -> None:
    m = Mesh()
    a, b, c = m.devs
    b.multicast = Multicast(MDNS_GROUPS, eligible=lambda k: k != c.identity.public)
    packet = ipv4("10.0.0.1", MDNS4)
    a.multicast = Multicast(MDNS_GROUPS, eligible=lambda k: True, group_rate=1e9, group_burst=10**9)
    for _ in range(PEER_BURST + 50):
        a.send_packet(packet, m.now)
    tun = m.deliver()
    assert len(tun[1]) == PEER_BURST
    assert b.multicast.counters["multicast-received-over-budget"] == 50
    c.send_packet(ipv4("10.0.0.3", MDNS4), m.now)
    assert m.deliver()[1] == []  # C is not eligible at B
    assert b.multicast.counters["multicast-received-not-member"] == 1
    # a forged source stays cryptokey routing's business: dropped before the multicast rules
    a.send_packet(ipv4("10.0.0.3", MDNS4), m.now + 10)
    assert m.deliver()[1] == [] and b.drops["inner-source-not-allowed"] == 1


def test_without_multicast_nothing_changes() -> None:
    m = Mesh()
    a, b, _c = m.devs
    for d in m.devs:
        d.multicast = None
    from wgdisco.proto.icmp import Unreachable
    a.unreachable = Unreachable()
    assert a.send_packet(ipv4("10.0.0.1", MDNS4), m.now) is None
    assert a.outbox == [] and a.drops["no-route"] == 1 and a.tun_out == []  # never an ICMP error about multicast
    # received multicast is delivered as the kernel module does
    a.multicast = Multicast(MDNS_GROUPS, eligible=lambda k: True)
    a.send_packet(ipv4("10.0.0.1", MDNS4), m.now)
    assert m.deliver()[1] == [ipv4("10.0.0.1", MDNS4)]


def test_a_removed_peer_loses_its_budget() -> None:
    m = Mesh()
    a, b, _c = m.devs
    a.send_packet(ipv4("10.0.0.1", MDNS4), m.now)
    m.deliver()
    assert len(b.multicast) == 1
    b.remove_peer(a.identity.public)
    assert len(b.multicast) == 0
