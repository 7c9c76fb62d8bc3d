"""Zero-config mesh: everything derived from a shared mesh key (docs/mesh.md).

Pure: only hashlib, hmac and ipaddress; no I/O, no clock, no randomness.

Key derivation
--------------
``master = scrypt(MeshKey, salt=SALT, n=2**14, r=8, p=1, dklen=32)``. scrypt because the mesh
key may be a pass phrase ("correct horse battery staple") and anyone who sees one record can
try guesses offline against its MAC: scrypt is memory-hard (128·r·n = 16 MiB per guess, about
50 ms here), which costs GPU/ASIC guessing much more than a plain hash, and it is in Python's
standard library (hashlib.scrypt, OpenSSL), so no extra package is needed. n=2**14, r=8, p=1
is the parameter set RFC 7914 §2 and the scrypt paper give for interactive use; it runs once
per daemon start. ``wgdisco genmesh`` keys (128 random bits) do not need the KDF at all; pass
phrases need it.

From the master secret, separate values by BLAKE2b keyed with the master and a label (BLAKE2b
keyed mode is a PRF, RFC 7693 §2.5), one label each:

- ``mesh id``: 8 bytes, hex; published in ``mesh=`` so members find each other's records.
- ``record key``: 32 bytes; authenticates records (``mac=``, HMAC-SHA256 truncated to 16 bytes).
- ``address key``: 32 bytes; hashes public keys to host parts.
- ``ULA``: 40 bits after ``fd`` (RFC 4193 §3.1): the IPv6 /48.
- ``IPv4 /16``: one of the 64 /16s in 10.64.0.0/10, unless ``MeshIPv4`` names the block.

The address plan (``MeshId``)
-----------------------------
The address key, the ULA and the IPv4 /16 index form the mesh's **address plan**. By default it
is derived from the mesh key as above, so a mesh configured with only ``MeshKey`` keeps the
addresses it always had. A rotation (docs/mesh.md "Rotating the mesh key") gives members a new
mesh key but must not renumber them: ``MeshId`` carries the plan across in the config, as text
(``MeshId.text``: ``m1.`` + unpadded URL-safe base64 of address key ‖ ULA ‖ IPv4 index, 38
bytes). It is not a secret: it lets nobody make or check a record (the record key and the
published id still come from the current mesh key), it only says which address a public key
gets, which every record's ``allowed=`` shows anyway.

Addresses
---------
IPv6: the /48, subnet id 0, interface id = 64 bits of BLAKE2b(address key, "v6" || public key)
(all-zero id avoided). Collisions need 2^32 members: none in practice.

IPv4: host numbers are few, so there is a collision rule that every node computes alike over
the keys it knows: each key has a fixed sequence of candidate host numbers (BLAKE2b with a
counter, 32 of them, then every host in order after the last); keys are taken in ascending
byte order and each takes its first candidate that no lower key took. So the lower key keeps a
contested host and the other takes its next candidate; no host is given twice; hosts whose
last octet is 0 or 255 are never used. A key gets no IPv4 when the block is full.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
from typing import Iterable, Iterator

__all__ = ["Mesh", "MeshId", "SCRYPT_N", "SCRYPT_R", "SCRYPT_P", "SALT", "IPV4_POOL", "HASH_CANDIDATES",
           "MAC_LEN", "derive_master"]

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SALT = b"wgdisco mesh v1"
IPV4_POOL = ipaddress.IPv4Network("10.64.0.0/10")  # the default /16 comes from here
HASH_CANDIDATES = 32  # hashed candidates per key before the linear scan
MAC_LEN = 16  # bytes of HMAC-SHA256 in mac=


def derive_master(mesh_key: str | bytes) -> bytes:
    """The 32-byte master secret of a mesh key (scrypt, parameters above)."""
    raw = mesh_key.encode("utf-8") if isinstance(mesh_key, str) else bytes(mesh_key)
    return hashlib.scrypt(raw, salt=SALT, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=64 << 20, dklen=32)


def _prf(key: bytes, label: bytes, size: int = 32) -> bytes:
    return hashlib.blake2b(label, key=key, digest_size=size).digest()


def _usable_v4(network: ipaddress.IPv4Network, offset: int) -> bool:
    """A host offset inside ``network`` that is not the network/broadcast and not x.x.x.0/.255."""
    if not 0 < offset < network.num_addresses - 1:
        return False
    last = (int(network.network_address) + offset) & 0xFF
    return last not in (0, 255)


class MeshId:
    """The address plan a mesh keeps across key rotations: the address key, the ULA and the
    IPv4 /16 index (module docstring). ``text`` is the ``MeshId =`` value; not a secret."""

    PREFIX = "m1."
    SIZE = 38  # address key 32 + ULA 5 + IPv4 index 1

    def __init__(self, address_key: bytes, ula: bytes, ipv4_index: int) -> None:
        if len(address_key) != 32 or len(ula) != 5 or not 0 <= ipv4_index < 1 << (16 - IPV4_POOL.prefixlen):
            raise ValueError("not a mesh id")
        self.address_key, self.ula, self.ipv4_index = bytes(address_key), bytes(ula), ipv4_index

    @classmethod
    def from_master(cls, master: bytes) -> MeshId:
        """The plan a mesh key gives by default (the derivation every mesh had before MeshId)."""
        index = _prf(master, b"wgdisco ipv4", 1)[0] % (1 << (16 - IPV4_POOL.prefixlen))
        return cls(_prf(master, b"wgdisco address key"), _prf(master, b"wgdisco ula", 5), index)

    @classmethod
    def parse(cls, text: str) -> MeshId:
        """``m1.<base64url>`` (ValueError, naming no part of it, when it is not one)."""
        text = text.strip()
        if not text.startswith(cls.PREFIX):
            raise ValueError(f"a mesh id starts with {cls.PREFIX!r} (wgdisco genmesh --rotate prints one)")
        body = text[len(cls.PREFIX):]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (ValueError, TypeError):
            raise ValueError("the mesh id is not base64") from None
        if len(raw) != cls.SIZE:
            raise ValueError("the mesh id has the wrong length")
        return cls(raw[:32], raw[32:37], raw[37])

    @property
    def text(self) -> str:
        raw = self.address_key + self.ula + bytes([self.ipv4_index])
        return self.PREFIX + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MeshId) and self.text == other.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"MeshId({self.text})"


class Mesh:
    """One mesh key's view of a mesh: its published id and record key (from the key), and the
    address plan (``plan``: from ``MeshId``, else from the key). ``repr`` shows the id only."""

    def __init__(self, mesh_key: str | bytes, ipv4: ipaddress.IPv4Network | str | None = None, *,
                 max_peers: int = 256, master: bytes | None = None, plan: MeshId | None = None) -> None:
        master = derive_master(mesh_key) if master is None else master
        self.id = _prf(master, b"wgdisco mesh id", 8).hex()
        self._record_key = _prf(master, b"wgdisco record key")
        self.plan = MeshId.from_master(master) if plan is None else plan
        self._address_key = self.plan.address_key
        self.ipv6 = ipaddress.IPv6Network((b"\xfd" + self.plan.ula + bytes(10), 48))
        if ipv4 is None:
            index = self.plan.ipv4_index
            ipv4 = ipaddress.IPv4Network((int(IPV4_POOL.network_address) + (index << 16), 16))
        self.ipv4 = ipaddress.IPv4Network(ipv4)
        if not any(_usable_v4(self.ipv4, o) for o in range(min(self.ipv4.num_addresses, 512))):
            raise ValueError(f"{self.ipv4} has no usable host addresses")
        self.max_peers = max_peers

    def __repr__(self) -> str:
        return f"Mesh(id={self.id}, ipv4={self.ipv4}, ipv6={self.ipv6})"

    def same_addresses(self, other: Mesh) -> bool:
        """Would ``other`` give every key the address this mesh gives it (a rotation keeps them)?"""
        return self.plan == other.plan and self.ipv4 == other.ipv4

    # --- records ------------------------------------------------------------------

    def _mac_input(self, public: bytes, candidates: str, counter: int, name: str = "") -> bytes:
        parts = [self.id.encode(), bytes(public), candidates.encode("utf-8"), str(counter).encode()]
        if name:  # name= (docs/mesh.md "Names"): a fifth part, so records without one keep their MAC
            parts.append(name.encode("utf-8"))
        return b"".join(len(p).to_bytes(2, "big") + p for p in parts)  # length-prefixed: unambiguous

    def mac(self, public: bytes, candidates: str, counter: int, name: str = "") -> str:
        """``mac=`` for a record: base64 of HMAC-SHA256(record key, id || key || cand || counter
        [|| name])[:16], each part length-prefixed."""
        tag = hmac.new(self._record_key, self._mac_input(public, candidates, counter, name), hashlib.sha256).digest()
        return base64.b64encode(tag[:MAC_LEN]).decode("ascii")

    def verify(self, public: bytes, candidates: str, counter: int, mac: bytes | str, name: str = "") -> bool:
        want = self.mac(public, candidates, counter, name).encode("ascii")
        got = mac.encode("ascii", "replace") if isinstance(mac, str) else bytes(mac)
        return hmac.compare_digest(want, got)

    # --- addresses ----------------------------------------------------------------

    def ipv6_of(self, public: bytes) -> ipaddress.IPv6Address:
        iid = _prf(self._address_key, b"v6" + bytes(public), 8)
        if iid == bytes(8):
            iid = bytes(7) + b"\x01"
        return ipaddress.IPv6Address(self.ipv6.network_address.packed[:8] + iid)

    def ipv4_candidates(self, public: bytes) -> Iterator[int]:
        """Host offsets in the IPv4 block, in the order ``public`` tries them."""
        net = self.ipv4
        size = net.num_addresses
        last = 0
        for counter in range(HASH_CANDIDATES):
            h = _prf(self._address_key, b"v4" + bytes(public) + counter.to_bytes(4, "big"), 8)
            offset = int.from_bytes(h, "big") % size
            last = offset
            if _usable_v4(net, offset):
                yield offset
        for step in range(1, size):
            offset = (last + step) % size
            if _usable_v4(net, offset):
                yield offset

    def assign_ipv4(self, publics: Iterable[bytes]) -> dict[bytes, ipaddress.IPv4Address | None]:
        """The IPv4 address of each key among ``publics`` (lower key first; None: the block is full)."""
        taken: set[int] = set()
        out: dict[bytes, ipaddress.IPv4Address | None] = {}
        base = int(self.ipv4.network_address)
        for public in sorted(set(bytes(p) for p in publics)):
            out[public] = None
            for offset in self.ipv4_candidates(public):
                if offset not in taken:
                    taken.add(offset)
                    out[public] = ipaddress.IPv4Address(base + offset)
                    break
        return out
