"""proto/mesh.py: key derivation vectors, addresses, the IPv4 collision rule, record MACs."""

from __future__ import annotations

import hashlib
import ipaddress
import random

import pytest

from wgdisco.proto import mesh as meshmod
from wgdisco.proto.mesh import Mesh

KEY = "correct horse battery staple"


@pytest.fixture(scope="module")
def m() -> Mesh:
    return Mesh(KEY)


def test_vectors(m: Mesh) -> None:
    # fixed mesh key -> fixed id and prefixes (a change here breaks every deployed mesh)
    assert m.id == "9cbcfe9418a16861"
    assert m.ipv4 == ipaddress.ip_network("10.103.0.0/16")
    assert m.ipv6 == ipaddress.ip_network("fd57:c54b:6e47::/48")
    assert str(m.ipv6_of(bytes(32))) == "fd57:c54b:6e47:0:1d9a:7bc0:8a9c:2943"
    assert m.mac(bytes(32), "10.0.0.1:51820", 5) == "zIfmYfEZAvfRI13SL3iJwg=="
    assert meshmod.derive_master(KEY) == hashlib.scrypt(KEY.encode(), salt=b"wgdisco mesh v1",
                                                        n=2**14, r=8, p=1, dklen=32)


def test_other_keys_give_other_meshes(m: Mesh) -> None:
    other = Mesh(KEY + "!")
    assert other.id != m.id and other.ipv6 != m.ipv6
    assert other.mac(bytes(32), "", 1) != m.mac(bytes(32), "", 1)


def test_ipv4_block_set_by_hand_and_default_pool() -> None:
    master = bytes(range(32))
    assert Mesh("", "10.77.0.0/16", master=master).ipv4 == ipaddress.ip_network("10.77.0.0/16")
    for i in range(40):
        net = Mesh("", master=bytes([i]) * 32).ipv4
        assert net.prefixlen == 16 and net.subnet_of(meshmod.IPV4_POOL)
        ula = Mesh("", master=bytes([i]) * 32).ipv6
        assert ula.prefixlen == 48 and ula.network_address.packed[0] == 0xFD


def test_repr_shows_no_secret(m: Mesh) -> None:
    assert KEY not in repr(m) and m.id in repr(m)


def test_mac_verify(m: Mesh) -> None:
    pub = bytes(range(32))
    tag = m.mac(pub, "10.1.0.1:51820", 7)
    assert m.verify(pub, "10.1.0.1:51820", 7, tag.encode())
    assert not m.verify(pub, "10.1.0.1:51821", 7, tag)
    assert not m.verify(pub, "10.1.0.1:51820", 8, tag)
    assert not m.verify(bytes(32), "10.1.0.1:51820", 7, tag)
    assert not m.verify(pub, "10.1.0.1:51820", 7, b"\xff" * 24)


def test_ipv6_of_is_in_the_ula_and_differs(m: Mesh) -> None:
    keys = [bytes([i]) * 32 for i in range(200)]
    addrs = {m.ipv6_of(k) for k in keys}
    assert len(addrs) == 200 and all(a in m.ipv6 for a in addrs)


def test_ipv4_never_0_or_255_and_unique(m: Mesh) -> None:
    keys = [hashlib.sha256(bytes([i])).digest() for i in range(256)]
    got = m.assign_ipv4(keys)
    addrs = list(got.values())
    assert None not in addrs and len(set(addrs)) == 256
    assert all(a in m.ipv4 and a.packed[3] not in (0, 255) for a in addrs)  # type: ignore[union-attr]


def test_collision_lower_key_keeps_it() -> None:
    tiny = Mesh("", "10.5.0.0/29", master=bytes(32))  # hosts .1-.6
    keys = [hashlib.sha256(bytes([i])).digest() for i in range(60)]
    first = {k: next(tiny.ipv4_candidates(k)) for k in keys}
    a, b = next((x, y) for x in keys for y in keys if x < y and first[x] == first[y])
    got = tiny.assign_ipv4([b, a])
    assert got[a] == ipaddress.IPv4Address(int(tiny.ipv4.network_address) + first[a])  # the lower key keeps it
    assert got[b] is not None and got[b] != got[a]
    assert tiny.assign_ipv4([a, b]) == got  # order of arrival does not matter
    assert tiny.assign_ipv4([b]) == {b: got[a]}  # alone, b has its first choice


def test_full_block_gives_none() -> None:
    tiny = Mesh("", "10.5.0.0/29", master=bytes(32))
    keys = [bytes([i]) * 32 for i in range(10)]
    got = tiny.assign_ipv4(keys)
    given = [a for a in got.values() if a is not None]
    assert len(given) == 6 and len(set(given)) == 6
    assert [got[k] for k in sorted(keys)][6:] == [None] * 4  # the highest keys go without


def naive(mesh: Mesh, publics: list[bytes]) -> dict[bytes, ipaddress.IPv4Address | None]:
    """The rule as stated: everyone tries its first candidate; at each contested host the lowest
    key keeps it and the others move to their next candidate; until nothing changes."""
    seqs = {p: list(mesh.ipv4_candidates(p)) for p in publics}
    pos = {p: 0 for p in publics}
    while True:
        holders: dict[int, list[bytes]] = {}
        for p in publics:
            if pos[p] < len(seqs[p]):
                holders.setdefault(seqs[p][pos[p]], []).append(p)
        moved = False
        for host, ps in holders.items():
            for loser in sorted(ps)[1:]:
                pos[loser] += 1
                moved = True
        if not moved:
            break
    base = int(mesh.ipv4.network_address)
    return {p: ipaddress.IPv4Address(base + seqs[p][pos[p]]) if pos[p] < len(seqs[p]) else None for p in publics}


@pytest.mark.parametrize("prefix", ["10.5.0.0/28", "10.5.0.0/26", "10.5.0.0/24"])
def test_randomized_against_the_naive_rule(prefix: str) -> None:
    rnd = random.Random(prefix)
    mesh = Mesh("", prefix, master=bytes(32))
    for _ in range(30):
        keys = [rnd.randbytes(32) for _ in range(rnd.randint(1, 40))]
        fast = mesh.assign_ipv4(keys)
        assert fast == naive(mesh, keys)
        given = [a for a in fast.values() if a is not None]
        assert len(given) == len(set(given))
