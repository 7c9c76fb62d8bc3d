"""Link-local multicast over the tunnel: which packets fan out to which peers, within budgets (sans-I/O).

Theory of operation
-------------------
WireGuard is layer 3 and point to point: a packet is sent to the one peer whose AllowedIPs hold
its destination (whitepaper §2), and no peer holds a multicast group, so mDNS dies at the
interface. With ``[Discovery] Multicast`` (docs/mesh.md, "Services across the mesh") the device
(proto/device.py) hands this core the two moments where multicast differs from unicast:

- ``admit_send(packet, now)``: a packet read from TUN whose destination no peer's AllowedIPs
  hold. None: not multicast, the unicast rules go on (no route, ICMP unreachable). Otherwise
  True when it is for an enabled group and within the group's budget: the device then encrypts
  one copy for every peer with a session for which ``eligible(public key)`` holds (wgdisco
  members; never a wireguard-go peer unless configured), and reports each copy with ``sent``.
- ``admit_received(public, packet, now)``: a packet a peer sent us whose destination is
  multicast, after the usual checks (decryption, replay, its source in the peer's AllowedIPs:
  cryptokey routing, §2). True: write it to TUN. A packet from the tunnel never goes to the send
  side again (the kernel does not forward what TUN delivers, and the device only fans out what
  it reads from TUN), so there is no loop and no transit, even in a full mesh; the TTL / hop
  limit is never touched (mDNS needs 255, RFC 6762 §11).

Budgets (token buckets; every refusal is counted, docs/mesh.md has the reasoning):

- per group, outgoing: ``GROUP_RATE`` packets a second, bursts of ``GROUP_BURST``. One packet
  costs one encryption per peer, so a flood from a local program costs at most
  GROUP_RATE × peers encryptions a second.
- per peer, incoming: ``PEER_RATE`` a second, bursts of ``PEER_BURST``: what one member (even
  one whose wgdisco was modified to send more) can make us write into TUN, for the local
  responders to parse. Twice a group's rate, so both mDNS groups of an honest member fit.

State: one bucket per enabled group (a configured few) and one per peer that sent multicast,
capped at ``MAX_PEER_BUCKETS`` and dropped with the peer (``forget``): a flood grows nothing.
The core has no timers (buckets refill on use): ``next_deadline()`` is always None.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from typing import Any, Callable, Iterable

from wgdisco.proto.core import Core
from wgdisco.proto.ratelimiter import TokenBucket

__all__ = [
    "MDNS_GROUPS", "GROUP_RATE", "GROUP_BURST", "PEER_RATE", "PEER_BURST", "MAX_PEER_BUCKETS",
    "destination", "is_link_local_group", "Multicast",
]

# RFC 6762 §3 (224.0.0.251) and §20 (ff02::fb)
MDNS_GROUPS = (ipaddress.ip_address("224.0.0.251"), ipaddress.ip_address("ff02::fb"))
# RFC 6762 §6: a responder multicasts a given record at most once a second, §5.2 queries back off
# from one a second; a LAN with a few dozen services answering a browse sends tens of packets in
# a second, in a burst when a browser starts. 50 a second with bursts of 100 carries that with
# room to spare and bounds the encryption work of a flood to 50 × peers a second.
GROUP_RATE, GROUP_BURST = 50.0, 100
PEER_RATE, PEER_BURST = 100.0, 200
MAX_PEER_BUCKETS = 4096


def destination(packet: bytes | memoryview) -> bytes | None:
    """The destination of an IPv4 or IPv6 ``packet`` if it is a multicast group (224.0.0.0/4,
    RFC 5771; ff00::/8, RFC 4291 §2.7), else None."""
    n = len(packet)
    version = packet[0] >> 4 if n else 0
    if version == 4 and n >= 20:
        return bytes(packet[16:20]) if packet[16] & 0xF0 == 0xE0 else None
    if version == 6 and n >= 40:
        return bytes(packet[24:40]) if packet[24] == 0xFF else None
    return None


def is_link_local_group(group: Any) -> bool:
    """224.0.0.0/24 (RFC 5771 §4, never forwarded) or scope 2 of ff00::/8 (RFC 4291 §2.7)."""
    if group.version == 4:
        return group in ipaddress.ip_network("224.0.0.0/24")
    return group.packed[1] & 0x0F == 2


class Multicast(Core):
    """Enabled groups, who may receive, and the budgets (see the module docstring)."""

    def __init__(
        self, groups: Iterable[Any], *, eligible: Callable[[bytes], bool],
        group_rate: float = GROUP_RATE, group_burst: int = GROUP_BURST,
        peer_rate: float = PEER_RATE, peer_burst: int = PEER_BURST, max_peer_buckets: int = MAX_PEER_BUCKETS,
    ) -> None:
        super().__init__()
        self.groups = tuple(ipaddress.ip_address(g) for g in groups)
        self._group_buckets = {g.packed: TokenBucket(group_rate, group_burst) for g in self.groups}
        self.eligible = eligible  # public key -> may multicast go to / come from this peer
        self.peer_rate, self.peer_burst, self.max_peer_buckets = peer_rate, peer_burst, max_peer_buckets
        self._peer_buckets: OrderedDict[bytes, TokenBucket] = OrderedDict()

    def next_deadline(self) -> float | None:
        return None  # buckets refill when used

    def handle_timer(self, now: float) -> None:
        pass

    def admit_send(self, packet: bytes | memoryview, now: float) -> bool | None:
        """A packet from TUN no peer's AllowedIPs hold: None if it is not multicast; else whether
        to fan it out (an enabled group within its budget)."""
        group = destination(packet)
        if group is None:
            return None
        bucket = self._group_buckets.get(group)
        if bucket is None:
            self._count("multicast-group-off")
            return False
        if not bucket.take(now):
            self._count("multicast-group-over-budget")
            return False
        self._count("multicast-fanned-out")
        return True

    def sent(self, n: int = 1) -> None:
        """``n`` copies of an admitted packet went to peers."""
        self._count("multicast-sent", n)

    def admit_received(self, public: bytes, packet: bytes | memoryview, now: float) -> bool:
        """A multicast packet from peer ``public`` that passed cryptokey routing: write it to TUN?"""
        group = destination(packet)
        if group is None or group not in self._group_buckets:
            self._count("multicast-received-group-off")
            return False
        if not self.eligible(public):
            self._count("multicast-received-not-member")
            return False
        bucket = self._peer_buckets.get(public)
        if bucket is None:
            if len(self._peer_buckets) >= self.max_peer_buckets:
                self._peer_buckets.popitem(last=False)
            bucket = self._peer_buckets[public] = TokenBucket(self.peer_rate, self.peer_burst)
        if not bucket.take(now):
            self._count("multicast-received-over-budget")
            return False
        self._count("multicast-received")
        return True

    def forget(self, public: bytes) -> None:
        """The peer is gone: its budget goes."""
        self._peer_buckets.pop(public, None)

    def __len__(self) -> int:
        """Peers with a budget (bounded by ``max_peer_buckets``)."""
        return len(self._peer_buckets)
