"""AllowedIPs: wireguard-go allowedips_test.go tables, and random lookups against a naive reference."""

from __future__ import annotations

import ipaddress
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wgdisco.errors import LocalError
from wgdisco.proto.allowedips import AllowedIPs


class Peer:
    """Unhashable on purpose: peers are compared by identity, like wireguard-go's *Peer."""

    __hash__ = None  # type: ignore[assignment]

    def __init__(self, name: str) -> None:
        self.name = name

    def __eq__(self, other):  # equal names must not confuse the table
        return isinstance(other, Peer) and other.name == self.name

    def __repr__(self) -> str:
        return f"Peer({self.name})"


def v4(a, b, c, d) -> bytes:
    return bytes((a, b, c, d))


def v6(a, b, c, d) -> bytes:
    return b"".join(x.to_bytes(4, "big") for x in (a, b, c, d))


# --- allowedips_test.go TestTrieIPv4 (from the kernel's selftest/allowedips.h) ---------------


def test_trie_ipv4():
    a, b, c, d, e, g, h = (Peer(n) for n in "abcdegh")
    t = AllowedIPs()

    def insert(peer, w, x, y, z, cidr):
        t.insert((v4(w, x, y, z), cidr), peer)

    def remove(peer, w, x, y, z, cidr):
        t.remove((v4(w, x, y, z), cidr), peer)

    def eq(peer, *ip):
        assert t.lookup(v4(*ip)) is peer, ip

    def neq(peer, *ip):
        assert t.lookup(v4(*ip)) is not peer, ip

    insert(a, 192, 168, 4, 0, 24)
    insert(b, 192, 168, 4, 4, 32)
    insert(c, 192, 168, 0, 0, 16)
    insert(d, 192, 95, 5, 64, 27)
    insert(c, 192, 95, 5, 65, 27)
    insert(e, 0, 0, 0, 0, 0)
    insert(g, 64, 15, 112, 0, 20)
    insert(h, 64, 15, 123, 211, 25)
    insert(a, 10, 0, 0, 0, 25)
    insert(b, 10, 0, 0, 128, 25)
    insert(a, 10, 1, 0, 0, 30)
    insert(b, 10, 1, 0, 4, 30)
    insert(c, 10, 1, 0, 8, 29)
    insert(d, 10, 1, 0, 16, 29)

    eq(a, 192, 168, 4, 20)
    eq(a, 192, 168, 4, 0)
    eq(b, 192, 168, 4, 4)
    eq(c, 192, 168, 200, 182)
    eq(c, 192, 95, 5, 68)
    eq(e, 192, 95, 5, 96)
    eq(g, 64, 15, 116, 26)
    eq(g, 64, 15, 127, 3)

    insert(a, 1, 0, 0, 0, 32)
    insert(a, 64, 0, 0, 0, 32)
    insert(a, 128, 0, 0, 0, 32)
    insert(a, 192, 0, 0, 0, 32)
    insert(a, 255, 0, 0, 0, 32)

    eq(a, 1, 0, 0, 0)
    eq(a, 64, 0, 0, 0)
    eq(a, 128, 0, 0, 0)
    eq(a, 192, 0, 0, 0)
    eq(a, 255, 0, 0, 0)

    t.remove_by_peer(a)

    neq(a, 1, 0, 0, 0)
    neq(a, 64, 0, 0, 0)
    neq(a, 128, 0, 0, 0)
    neq(a, 192, 0, 0, 0)
    neq(a, 255, 0, 0, 0)

    for p in (a, b, c, d, e, g, h):
        t.remove_by_peer(p)
    assert len(t) == 0, "removing all the peers must empty the table"
    assert t.lookup(v4(192, 168, 4, 4)) is None

    insert(a, 192, 168, 0, 0, 16)
    insert(a, 192, 168, 0, 0, 24)

    t.remove_by_peer(a)

    neq(a, 192, 168, 0, 1)

    insert(a, 1, 0, 0, 0, 32)
    insert(a, 192, 0, 0, 0, 24)
    eq(a, 1, 0, 0, 0)
    eq(a, 192, 0, 0, 1)
    remove(a, 192, 0, 0, 0, 32)
    eq(a, 192, 0, 0, 1)
    remove(None, 192, 0, 0, 0, 24)
    eq(a, 192, 0, 0, 1)
    remove(b, 192, 0, 0, 0, 24)
    eq(a, 192, 0, 0, 1)
    remove(a, 192, 0, 0, 0, 24)
    neq(a, 192, 0, 0, 1)
    remove(a, 1, 0, 0, 0, 32)
    neq(a, 1, 0, 0, 0)


# --- allowedips_test.go TestTrieIPv6 ----------------------------------------------------------


def test_trie_ipv6():
    a, b, c, d, e, f, g, h = (Peer(n) for n in "abcdefgh")
    t = AllowedIPs()

    def insert(peer, w, x, y, z, cidr):
        t.insert((v6(w, x, y, z), cidr), peer)

    def remove(peer, w, x, y, z, cidr):
        t.remove((v6(w, x, y, z), cidr), peer)

    def eq(peer, *ip):
        assert t.lookup(v6(*ip)) is peer, [hex(x) for x in ip]

    def neq(peer, *ip):
        assert t.lookup(v6(*ip)) is not peer, [hex(x) for x in ip]

    insert(d, 0x26075300, 0x60006B00, 0, 0xC05F0543, 128)
    insert(c, 0x26075300, 0x60006B00, 0, 0, 64)
    insert(e, 0, 0, 0, 0, 0)
    insert(f, 0, 0, 0, 0, 0)
    insert(g, 0x24046800, 0, 0, 0, 32)
    insert(h, 0x24046800, 0x40040800, 0xDEADBEEF, 0xDEADBEEF, 64)
    insert(a, 0x24046800, 0x40040800, 0xDEADBEEF, 0xDEADBEEF, 128)
    insert(c, 0x24446800, 0x40E40800, 0xDEAEBEEF, 0xDEFBEEF, 128)
    insert(b, 0x24446800, 0xF0E40800, 0xEEAEBEEF, 0, 98)

    eq(d, 0x26075300, 0x60006B00, 0, 0xC05F0543)
    eq(c, 0x26075300, 0x60006B00, 0, 0xC02E01EE)
    eq(f, 0x26075300, 0x60006B01, 0, 0)
    eq(g, 0x24046800, 0x40040806, 0, 0x1006)
    eq(g, 0x24046800, 0x40040806, 0x1234, 0x5678)
    eq(f, 0x240467FF, 0x40040806, 0x1234, 0x5678)
    eq(f, 0x24046801, 0x40040806, 0x1234, 0x5678)
    eq(h, 0x24046800, 0x40040800, 0x1234, 0x5678)
    eq(h, 0x24046800, 0x40040800, 0, 0)
    eq(h, 0x24046800, 0x40040800, 0x10101010, 0x10101010)
    eq(a, 0x24046800, 0x40040800, 0xDEADBEEF, 0xDEADBEEF)

    insert(a, 0x24446801, 0x40E40800, 0xDEAEBEEF, 0xDEFBEEF, 128)
    insert(a, 0x24446800, 0xF0E40800, 0xEEAEBEEF, 0, 98)
    eq(a, 0x24446801, 0x40E40800, 0xDEAEBEEF, 0xDEFBEEF)
    eq(a, 0x24446800, 0xF0E40800, 0xEEAEBEEF, 0x10101010)
    remove(a, 0x24446801, 0x40E40800, 0xDEAEBEEF, 0xDEFBEEF, 96)
    eq(a, 0x24446801, 0x40E40800, 0xDEAEBEEF, 0xDEFBEEF)
    remove(None, 0x24446801, 0x40E40800, 0xDEAEBEEF, 0xDEFBEEF, 128)
    eq(a, 0x24446801, 0x40E40800, 0xDEAEBEEF, 0xDEFBEEF)
    remove(b, 0x24446801, 0x40E40800, 0xDEAEBEEF, 0xDEFBEEF, 128)
    eq(a, 0x24446801, 0x40E40800, 0xDEAEBEEF, 0xDEFBEEF)
    remove(a, 0x24446801, 0x40E40800, 0xDEAEBEEF, 0xDEFBEEF, 128)
    neq(a, 0x24446801, 0x40E40800, 0xDEAEBEEF, 0xDEFBEEF)
    remove(b, 0x24446800, 0xF0E40800, 0xEEAEBEEF, 0, 98)
    eq(a, 0x24446800, 0xF0E40800, 0xEEAEBEEF, 0x10101010)
    remove(a, 0x24446800, 0xF0E40800, 0xEEAEBEEF, 0, 98)
    neq(a, 0x24446800, 0xF0E40800, 0xEEAEBEEF, 0x10101010)


# --- the API around the table -------------------------------------------------------------------


def test_host_bits_are_masked_and_entries_keep_order():
    a, b = Peer("a"), Peer("b")
    t = AllowedIPs()
    t.insert("10.0.0.1/24", a)
    t.insert(ipaddress.ip_interface("fd00::1/64"), a)
    t.insert((v4(192, 168, 7, 9), 16), a)
    t.insert(ipaddress.ip_network("10.9.9.9/32"), a)
    t.insert((ipaddress.ip_address("10.8.0.0"), 12), a)
    assert [str(n) for n in t.entries_for_peer(a)] == [
        "10.0.0.0/24",
        "fd00::/64",
        "192.168.0.0/16",
        "10.9.9.9/32",
        "10.0.0.0/12",
    ]
    assert t.lookup(v4(10, 0, 0, 200)) is a
    # Re-inserting moves the prefix to the end of the peer's list (wireguard-go's per-peer list).
    t.insert("10.0.0.77/24", a)
    assert str(t.entries_for_peer(a)[-1]) == "10.0.0.0/24"
    # Inserting it for another peer moves it there.
    t.insert("10.0.0.0/24", b)
    assert [str(n) for n in t.entries_for_peer(b)] == ["10.0.0.0/24"]
    assert "10.0.0.0/24" not in [str(n) for n in t.entries_for_peer(a)]
    assert t.lookup(v4(10, 0, 0, 200)) is b
    assert t.lookup(v4(10, 1, 0, 200)) is a  # 10.0.0.0/12
    assert len(t) == 5
    assert t.remove_by_peer(b) == 1
    assert t.entries_for_peer(b) == []
    assert t.lookup(v4(10, 0, 0, 200)) is a
    assert t.remove_by_peer(b) == 0


def test_remove_only_exact_prefix_of_owner():
    a, b = Peer("a"), Peer("b")
    t = AllowedIPs()
    t.insert("10.0.0.0/8", a)
    assert t.remove("10.0.0.0/8", Peer("a")) is False  # equal, but not the same peer
    assert t.remove("10.0.0.0/16", a) is False
    assert t.remove("10.0.0.0/8", b) is False
    assert t.remove("10.0.0.0/8", None) is False
    assert t.remove("10.1.2.3/8", a) is True  # host bits are masked here too
    assert t.lookup(v4(10, 0, 0, 1)) is None
    assert len(t) == 0
    assert t.entries_for_peer(a) == []


def test_v4_and_v6_are_separate():
    a, b = Peer("a"), Peer("b")
    t = AllowedIPs()
    t.insert("0.0.0.0/0", a)
    t.insert("::/0", b)
    assert t.lookup(v4(1, 2, 3, 4)) is a
    assert t.lookup(bytes(16)) is b
    assert t.lookup_v4(0x01020304) is a
    assert t.lookup_v6(1) is b
    t.insert("::ffff:0.0.0.0/96", a)  # v4-mapped stays IPv6, as in wireguard-go
    assert t.lookup(ipaddress.ip_address("::ffff:1.2.3.4").packed) is a
    assert t.lookup(memoryview(bytearray(v4(9, 9, 9, 9)))) is a


def test_empty_and_bad_input():
    t = AllowedIPs()
    assert t.lookup(v4(1, 2, 3, 4)) is None
    assert t.lookup(bytes(16)) is None
    assert len(t) == 0
    a = Peer("a")
    for bad in ("10.0.0.0/33", "nonsense", (b"\x01\x02\x03", 8), (v4(1, 2, 3, 4), 33), (bytes(16), -1), 42):
        with pytest.raises(LocalError):
            t.insert(bad, a)
    with pytest.raises(LocalError):
        t.insert("10.0.0.0/8", None)
    with pytest.raises(LocalError):
        t.lookup(b"\x00" * 5)


def test_probe_structure_is_rebuilt_after_changes():
    # Lookups in between changes, across the switch between chain (<= 2 lengths) and search.
    a, b, c, d = Peer("a"), Peer("b"), Peer("c"), Peer("d")
    t = AllowedIPs()
    t.insert("10.0.0.0/8", a)
    assert t.lookup(v4(10, 1, 2, 3)) is a
    t.insert("10.1.0.0/16", b)
    assert t.lookup(v4(10, 1, 2, 3)) is b
    t.insert("10.1.2.0/24", c)
    assert t.lookup(v4(10, 1, 2, 3)) is c
    t.insert("10.1.2.3/32", d)
    assert t.lookup(v4(10, 1, 2, 3)) is d
    assert t.lookup(v4(10, 1, 2, 4)) is c
    assert t.lookup(v4(10, 1, 3, 4)) is b
    assert t.lookup(v4(10, 2, 3, 4)) is a
    assert t.lookup(v4(11, 2, 3, 4)) is None
    t.remove("10.1.2.0/24", c)
    assert t.lookup(v4(10, 1, 2, 4)) is b
    t.remove_by_peer(b)
    assert t.lookup(v4(10, 1, 2, 4)) is a
    assert t.lookup(v4(10, 1, 2, 3)) is d


# --- randomized, against a naive reference ------------------------------------------------------


class SlowRouter:
    """allowedips_rand_test.go's SlowRouter: every prefix in a list sorted longest first; the first
    that matches wins."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.routes: dict[tuple[int, int], Peer] = {}  # (cidr, masked int) -> peer
        self._sorted: list[tuple[int, int, Peer]] | None = None  # (mask, net, peer), longest first

    def _mask(self, cidr: int) -> int:
        return ((1 << cidr) - 1) << (self.width - cidr)

    def insert(self, addr: int, cidr: int, peer: Peer) -> None:
        self.routes[(cidr, addr & self._mask(cidr))] = peer
        self._sorted = None

    def remove(self, addr: int, cidr: int, peer: Peer) -> None:
        key = (cidr, addr & self._mask(cidr))
        if self.routes.get(key) is peer:
            del self.routes[key]
            self._sorted = None

    def remove_by_peer(self, peer: Peer) -> None:
        self.routes = {k: p for k, p in self.routes.items() if p is not peer}
        self._sorted = None

    def lookup(self, addr: int) -> Peer | None:
        if self._sorted is None:
            self._sorted = [(self._mask(c), n, p) for (c, n), p in sorted(self.routes.items(), reverse=True)]
        for mask, net, peer in self._sorted:
            if addr & mask == net:
                return peer
        return None


def _addr_bytes(addr: int, width: int) -> bytes:
    return addr.to_bytes(width // 8, "big")


def test_trie_random_like_wireguard_go():
    """TestTrieRandom: 100 peers, 250 prefixes per family, 10,000 lookups per family per round,
    4 rounds of remove_by_peer, then removing every peer empties the table."""
    rng = random.Random(1)
    peers = [Peer(str(n)) for n in range(100)]
    t = AllowedIPs()
    slow4, slow6 = SlowRouter(32), SlowRouter(128)
    for _ in range(250):
        addr, cidr, peer = rng.getrandbits(32), rng.randint(1, 32), rng.choice(peers)
        t.insert((_addr_bytes(addr, 32), cidr), peer)
        slow4.insert(addr, cidr, peer)
        addr, cidr, peer = rng.getrandbits(128), rng.randint(1, 128), rng.choice(peers)
        t.insert((_addr_bytes(addr, 128), cidr), peer)
        slow6.insert(addr, cidr, peer)

    for p in range(5):
        for _ in range(10_000):
            addr = rng.getrandbits(32)
            assert t.lookup(_addr_bytes(addr, 32)) is slow4.lookup(addr)
            addr = rng.getrandbits(128)
            assert t.lookup(_addr_bytes(addr, 128)) is slow6.lookup(addr)
        if p < 4:
            t.remove_by_peer(peers[p])
            slow4.remove_by_peer(peers[p])
            slow6.remove_by_peer(peers[p])
    for peer in peers:
        t.remove_by_peer(peer)
    assert len(t) == 0
    assert all(t.entries_for_peer(peer) == [] for peer in peers)


def _near(rng: random.Random, slow: SlowRouter) -> int:
    """An address inside a random stored prefix (random ones rarely match long prefixes)."""
    width = slow.width
    if not slow.routes or rng.random() < 0.3:
        return rng.getrandbits(width)
    cidr, net = rng.choice(list(slow.routes))
    host = rng.getrandbits(width - cidr) if cidr < width else 0
    return net | host


@pytest.mark.parametrize("width", [32, 128])
@pytest.mark.parametrize(
    "lengths",
    [
        "all",  # every length: the binary search on lengths with markers
        "two",  # at most two lengths: the longest-first chain
        "few",  # a handful of nested lengths, including /0
    ],
)
def test_random_inserts_removes_and_lookups(width, lengths):
    """10,000 lookups per case, interleaved with random inserts, moves, removes and peer removals,
    each checked against the naive reference; entries_for_peer checked against it too."""
    rng = random.Random(f"{width}-{lengths}")
    if lengths == "all":
        choices = list(range(0, width + 1))
    elif lengths == "two":
        choices = [0, width] if width == 32 else [64, 128]
    else:
        choices = [0, 8, 16, 24, 32] if width == 32 else [0, 32, 48, 64, 96, 128]
    peers = [Peer(str(n)) for n in range(12)]
    t, slow = AllowedIPs(), SlowRouter(width)
    base = rng.getrandbits(width)  # prefixes cluster around one address so they nest
    lookups = 0
    while lookups < 10_000:
        r = rng.random()
        if r < 0.15:
            cidr = rng.choice(choices)
            if rng.random() < 0.7:
                addr = base ^ rng.getrandbits(max(1, width - cidr + rng.randint(0, 6)))
            else:
                addr = rng.getrandbits(width)
            addr &= (1 << width) - 1
            peer = rng.choice(peers)
            t.insert((_addr_bytes(addr, width), cidr), peer)
            slow.insert(addr, cidr, peer)
        elif r < 0.20 and slow.routes:
            cidr, net = rng.choice(list(slow.routes))
            peer = slow.routes[(cidr, net)] if rng.random() < 0.7 else rng.choice(peers)
            host = rng.getrandbits(width - cidr) if cidr < width else 0
            t.remove((_addr_bytes(net | host, width), cidr), peer)
            slow.remove(net, cidr, peer)
        elif r < 0.21:
            peer = rng.choice(peers)
            t.remove_by_peer(peer)
            slow.remove_by_peer(peer)
        else:
            for _ in range(20):
                addr = _near(rng, slow) if rng.random() < 0.5 else base ^ rng.getrandbits(rng.randint(0, width))
                want = slow.lookup(addr)
                got = t.lookup_v4(addr) if width == 32 else t.lookup_v6(addr)
                assert got is want, (hex(addr), got, want)
                lookups += 1
    assert len(t) == len(slow.routes)
    for peer in peers:
        mine = {(n.prefixlen, int(n.network_address)) for n in t.entries_for_peer(peer)}
        assert mine == {k for k, p in slow.routes.items() if p is peer}


@settings(max_examples=150, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["insert", "remove", "remove_by_peer"]),
            st.integers(0, 255),  # address: high byte varies, the rest fixed, so prefixes nest
            st.integers(0, 32),
            st.integers(0, 3),
        ),
        max_size=40,
    ),
    probes=st.lists(st.integers(0, 2**32 - 1), max_size=20),
)
def test_hypothesis_ipv4(ops, probes):
    peers = [Peer(str(n)) for n in range(4)]
    t, slow = AllowedIPs(), SlowRouter(32)
    seen_addrs = []
    for op, hi, cidr, p in ops:
        addr = (hi << 24) | 0x00A5A5A5
        seen_addrs.append(addr)
        if op == "insert":
            t.insert((_addr_bytes(addr, 32), cidr), peers[p])
            slow.insert(addr, cidr, peers[p])
        elif op == "remove":
            t.remove((_addr_bytes(addr, 32), cidr), peers[p])
            slow.remove(addr, cidr, peers[p])
        else:
            t.remove_by_peer(peers[p])
            slow.remove_by_peer(peers[p])
        for a in seen_addrs[-3:] + probes:
            assert t.lookup_v4(a) is slow.lookup(a)
    for peer in peers:
        order = [(n.prefixlen, int(n.network_address)) for n in t.entries_for_peer(peer)]
        assert set(order) == {k for k, q in slow.routes.items() if q is peer}
