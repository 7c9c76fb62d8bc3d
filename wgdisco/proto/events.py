"""The node's typed events and the small value types of its views (proto/node.py drains every
core's events into one queue; the daemon dispatches them by type through one table,
daemon/dispatch.py, which a test keeps exhaustive over ``Event``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable

from wgdisco.proto import records
from wgdisco.proto.birthday import SocketsClosed, SocketsWanted
from wgdisco.proto.device import EndpointChanged, GaveUp, HandshakeCompleted
from wgdisco.proto.pmtu import PmtuChanged
from wgdisco.proto.stun import StunChanged, StunFailed

__all__ = [
    "Event", "EVENT_TYPES", "PathStatus", "NodeStats", "BASES",
    "HandshakeCompleted", "EndpointChanged", "GaveUp",
    "PathReasonChanged", "RecordChanged", "ReflexiveChanged", "StunFailed", "StunChanged",
    "CandidateProbed", "HandshakeTried", "NatSuspected", "LookupWanted", "BrowseWanted",
    "PeerAdmitted", "PeerRemoved", "MeshAddressChanged", "PortMappingChanged",
    "BirthdayChanged", "NatClassified", "SocketsWanted", "SocketsClosed",
    "MeshNamesChanged", "AnnounceWanted", "PmtuChanged",
]

Addr = Hashable
Key = bytes


@dataclass(frozen=True)
class PathReasonChanged:
    """Why ``peer`` has the path it has (one of paths.REASONS), in words too."""

    peer: Key
    reason: str
    text: str


@dataclass(frozen=True)
class RecordChanged:
    """Our own record changed: publish ``record``. ``withdrawn`` names the instance label that
    must go (the identity changed), else None."""

    record: records.ServiceRecord
    withdrawn: str | None = None


@dataclass(frozen=True)
class ReflexiveChanged:
    """STUN sees us at ``reflexive`` ((ip, port) pairs); our NAT maps ``behaviour`` (RFC 4787)."""

    reflexive: tuple[tuple[str, int], ...]
    behaviour: str
    moved: bool = False  # the addresses changed from known ones (a router rebooted, renumbered)


@dataclass(frozen=True)
class CandidateProbed:
    """A live peer published a new candidate; it got one probe (it may have moved)."""

    peer: Key
    addr: Addr
    source: str


@dataclass(frozen=True)
class HandshakeTried:
    """A hinted endpoint got a handshake initiation (a peer that does not answer probes)."""

    peer: Key
    addr: Addr
    source: str


@dataclass(frozen=True)
class LookupWanted:
    """Look ``peers`` up now (unicast DNS-SD; proto/lookups.py decides when)."""

    peers: tuple[Key, ...]


@dataclass(frozen=True)
class BrowseWanted:
    """Browse the mesh's PTR set now (unicast DNS-SD); hand the keys found to ``Node.browse_found``."""


@dataclass(frozen=True)
class NatSuspected:
    """Data to ``peer`` went unanswered for ``silent_for`` seconds: STUN asks again."""

    peer: Key
    silent_for: float


@dataclass(frozen=True)
class PeerAdmitted:
    """A valid mesh record made ``peer`` a peer; ``addresses`` (its derived /32 and /128, computed
    here from its key) are its AllowedIPs, already inserted."""

    peer: Key
    addresses: tuple[Any, ...]


@dataclass(frozen=True)
class PeerRemoved:
    """The mesh removed ``peer``: ``reason`` is "goodbye" or "expired"."""

    peer: Key
    reason: str


@dataclass(frozen=True)
class NatClassified:
    """RFC 5780 tests (proto/natclass.py) found our NAT's ``filtering`` and, for a mapping that
    depends on the destination, whether on its ``mapping`` address only or its port too."""

    filtering: str
    mapping: str | None


@dataclass(frozen=True)
class BirthdayChanged:
    """A birthday punching attempt for ``peer`` (proto/birthday.py) started ("started", with our
    ``role``, HARD or EASY), found the path ("won") or ran out ("failed", then a backoff)."""

    peer: Key
    state: str
    role: str
    probes: int
    text: str


@dataclass(frozen=True)
class MeshAddressChanged:
    """The collision rule moved ``peer``'s IPv4 (a lower key arrived or left); ``peer`` may be our
    own key (then the interface address must follow). AllowedIPs already follow."""

    peer: Key
    old: Any
    new: Any


@dataclass(frozen=True)
class PortMappingChanged:
    """Our record now carries ``external`` (ip, port), the gateway's port mapping of our listen
    port (a candidate of kind "mapped"), or None: the mapping went."""

    external: tuple[str, int] | None


@dataclass(frozen=True)
class MeshNamesChanged:
    """The names that resolve on this host changed (docs/mesh.md "Names"): ``hosts`` is every
    (address, names) line to keep, ours included; ``contested`` the names two members claim."""

    hosts: tuple[tuple[str, tuple[str, ...]], ...]
    contested: tuple[str, ...]


@dataclass(frozen=True)
class AnnounceWanted:
    """``unreached`` mesh peers have had no handshake since they were admitted: announce our
    record again (mDNS), they may have missed it."""

    unreached: int


Event = (HandshakeCompleted | EndpointChanged | GaveUp | PathReasonChanged | RecordChanged
         | ReflexiveChanged | StunFailed | StunChanged | CandidateProbed | HandshakeTried | NatSuspected
         | LookupWanted | BrowseWanted | PeerAdmitted | PeerRemoved | MeshAddressChanged | PortMappingChanged
         | BirthdayChanged | NatClassified | SocketsWanted | SocketsClosed | MeshNamesChanged | AnnounceWanted
         | PmtuChanged)
EVENT_TYPES: tuple[type, ...] = Event.__args__  # every member of the union, for the dispatch table



@dataclass(frozen=True)
class PathStatus:
    """A peer's path for ``wgdisco status``: "lan", "direct" or "none", and why when none;
    for a live path, what it is based on (one of BASES)."""

    path: str
    reason: str | None
    reason_text: str | None
    basis: str | None = None


# what a live path is based on: a LAN address, a published candidate (host or STUN-reflexive),
# an address learnt from the peer's probe (peer-reflexive), a birthday-punched port (ours or the
# peer's), WireGuard's roaming rule, or the configured Endpoint
BASES = ("lan", "record", "peer-reflexive", "birthday", "roaming", "config")


@dataclass(frozen=True)
class NodeStats:
    probes_sent: int
    probe_replies: int
    probe_drops: dict[str, int]
    stun_errors: int
    counters: dict[str, int]
