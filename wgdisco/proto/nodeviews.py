"""What a node shows (status, metrics, the log; proto/views.py), as a part of ``Node``.

``Node`` (proto/node.py) inherits these read-only views: its NAT as STUN sees it, each peer's
path, candidates and counts. Nothing here changes the node.
"""

from __future__ import annotations

from typing import Any

from wgdisco.proto import views
from wgdisco.proto.events import NodeStats, PathStatus
from wgdisco.proto.nat import Filtering, Mapping
from wgdisco.proto.paths import PathInfo

__all__ = ["NodeViews"]

Key = bytes


class NodeViews:
    """The node's views (mixed into ``Node``; they read its cores, never write them)."""

    device: Any
    paths: Any
    birthdays: Any
    nat: Any
    history: Any
    own: Any

    @property
    def local_networks(self) -> list[Any]:
        return self.own.local_networks

    @property
    def prober(self) -> Any:
        return self.paths.prober

    @property
    def birthday(self) -> Any:
        return self.birthdays.puncher

    @property
    def reflexive(self) -> list[tuple[str, int]]:
        return self.nat.reflexive if self.nat is not None else []

    @property
    def behaviour(self) -> str:
        """Our NAT's mapping (RFC 4787 §4.1) as STUN sees it, "unknown" without STUN."""
        return self.nat.behaviour if self.nat is not None else Mapping.UNKNOWN

    @property
    def filtering(self) -> str:
        return self.nat.filtering if self.nat is not None else Filtering.UNKNOWN

    @property
    def open_address(self) -> bool:
        """Our IPv4 address has no NAT and no filtering (its paths need no keepalive of ours)."""
        return self.nat is not None and self.nat.is_open(self.own.host_addresses)

    @property
    def mapping_detail(self) -> str:
        return self.nat.mapping_detail if self.nat is not None else Mapping.UNKNOWN


    def explain(self, public: Key, reason: str) -> str:
        return views.explain(reason, self.behaviour, self.paths.selector.peer_mapping(public))

    def path_status(self, public: Key, now: float) -> PathStatus:
        return views.path_status(self, public, now)

    def path_basis(self, public: Key) -> str | None:
        return views.path_basis(self, public)

    def endpoint_source(self, public: Key) -> str | None:
        peer = self.device.peers.get(public)
        return self.history.endpoint_source.get(public) if peer is not None and peer.endpoint is not None else None

    def pmtu_view(self, public: Key) -> Any:
        """The peer's path MTU for status (proto/pmtu.py PmtuView), None when not searched."""
        return self.paths.pmtu.view(public)

    def candidates(self, public: Key) -> list[PathInfo]:
        return self.paths.selector.paths(public)

    def handshakes(self, public: Key) -> int:
        return self.history.handshakes.get(public, 0)

    def path_changes(self, public: Key) -> int:
        return self.history.path_changes.get(public, 0)

    def stats(self) -> NodeStats:
        return views.stats(self)
