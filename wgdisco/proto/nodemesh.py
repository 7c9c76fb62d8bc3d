"""The zero-config mesh's side of the node (docs/mesh.md), as a part of ``Node``.

``Node`` (proto/node.py) inherits these: admitting a key a valid mesh record names (AllowedIPs
from the key, never from the record), removing a member, what a member was last heard of, the
mesh keys and MeshDeny from the config, and the mesh's addresses and prefixes. The policy itself
is ``MeshMembership``'s (proto/membership.py); this is where its decisions meet the peer set.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from typing import Any, Iterable

from wgdisco.errors import LocalError
from wgdisco.proto.device import Peer
from wgdisco.proto.mesh import Mesh

__all__ = ["NodeMesh"]

Key = bytes


class NodeMesh:
    """Mesh membership meeting the peer set (mixed into ``Node``)."""

    device: Any
    membership: Any
    mesh: Any
    paths: Any
    lookups: Any
    strangers: Any
    probing: set[bytes]


    def _admit(self, public: Key, name: str | None, now: float) -> Peer | None:
        """A valid mesh record of a stranger: a peer, AllowedIPs from its key (never the record)."""
        m = self.membership
        assert m is not None
        if not m.has_room():
            return None
        self.strangers.discard(public)  # this sighting is newer
        peer = self.add_peer(public, now)
        m.admit(public, now, name)
        for net in m.addresses(public):  # its derived /32 and /128
            self.device.allowed_ips.insert(net, peer)
        return peer

    def _mesh_remove(self, public: Key, reason: str, now: float) -> None:
        assert self.membership is not None
        self.remove_peer(public)
        self.membership.remove(public, reason)
        self._collect(now)

    def last_heard(self, public: Key) -> float | None:
        """When a member was last heard of on its path: a WireGuard packet, or a probe answer or
        request (None: never)."""
        peer = self.device.peers.get(public)
        times = [t for t in (self.paths.selector.last_ok(public), peer and peer.last_authenticated) if t is not None]
        return max(times) if times else None

    def _heard(self) -> "Heard":
        """Members' last-heard times, computed when read (MeshMembership reads few of them)."""
        return Heard(self)

    def _heard_since(self, public: Key, since: float) -> bool:
        """Was a member heard of after ``since``: a newer valid record, a WireGuard packet, or a
        path that answered (from any of its addresses: a member that moved announces anew)."""
        assert self.membership is not None
        heard = self.last_heard(public)
        return self.membership.last_record(public) > since or (heard is not None and heard > since)

    def set_mesh(self, current: Mesh, previous: Mesh | None, until: float | None, deny: Iterable[Key],
                 now: float) -> None:
        """The mesh keys and MeshDeny (config, SIGHUP; proto/membership.py "Lifecycle"): ``until``
        is the previous key's end, wall-clock seconds. A new current key signs our record anew."""
        m = self.membership
        if m is None:
            raise LocalError("not a mesh node")
        end = None if until is None else until - self.device.wall_offset
        if m.set_keys(current, previous, end, now):
            self.mesh = current
            self.lookups.rejected.clear()  # records refused under the old key may be valid now
            self._update_record(now, force=True)
        for public in m.set_deny(frozenset(deny)):
            self.strangers.discard(public)
        self._collect(now)

    def _moved(self, event: Any, now: float) -> None:
        """The IPv4 plan moved a member (MeshAddressChanged): its AllowedIPs follow; ours: our
        record follows."""
        if (peer := self.device.peers.get(event.peer)) is not None:
            if event.old is not None:
                self.device.allowed_ips.remove(ipaddress.ip_network(f"{event.old}/32"), peer)
            if event.new is not None:
                self.device.allowed_ips.insert(ipaddress.ip_network(f"{event.new}/32"), peer)
        if event.peer == self.public_key:
            self._update_record(now)

    def _check_member(self, public: Key, now: float) -> None:
        """A member not heard of for a while (CheckWanted): is it still there? One probe on its
        current path (quiet when idle: no keepalive does this for us)."""
        if (current := self.paths.selector.current(public)) is not None:
            self.paths.probe(public, current, now)
            self._collect(now)

    def is_mesh_peer(self, public: Key) -> bool:
        return self.membership is not None and self.membership.is_member(public)

    def runs_wgdisco(self, public: Key) -> bool:
        """A mesh member, or a peer whose record says probe=1 (never a wireguard-go peer)."""
        return public in self.probing or self.is_mesh_peer(public)

    def mesh_addresses(self, public: Key) -> list[Any]:
        """A key's derived addresses as host networks (/32, /128): [] without a mesh."""
        return [] if self.membership is None else self.membership.addresses(public)

    def own_mesh_interfaces(self) -> list[Any]:
        """Our derived addresses as /32 and /128 interfaces (the mesh prefixes get routes of their
        own, so an address can move without taking the prefix route along): [] without a mesh."""
        return [ipaddress.ip_interface(str(n)) for n in self.mesh_addresses(self.public_key)]

    def mesh_prefixes(self) -> list[Any]:
        """The mesh's IPv4 block and IPv6 /48 (routes through the interface): [] without a mesh."""
        return [] if self.mesh is None else [self.mesh.ipv4, self.mesh.ipv6]


class Heard(Mapping[bytes, "float | None"]):
    """member -> when it was last heard of on its path (NodeMesh.last_heard), read lazily."""

    def __init__(self, node: NodeMesh) -> None:
        self.node = node

    def __getitem__(self, public: bytes) -> float | None:
        if not self.node.membership.is_member(public):
            raise KeyError(public)
        return self.node.last_heard(public)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.node.membership.members)

    def __len__(self) -> int:
        return len(self.node.membership.members)
