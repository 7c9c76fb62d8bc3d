"""What ``wgdisco status`` says about a peer's path, as pure functions of the node's public state."""

from __future__ import annotations

from typing import Any, Iterator, Mapping

from wgdisco.proto.device import EndpointChanged, HandshakeCompleted
from wgdisco.proto.events import NodeStats, PathStatus
from wgdisco.proto.nat import HARD_MAPPINGS
from wgdisco.proto.nat import Mapping as NatMapping
from wgdisco.proto.paths import host_kind
from wgdisco.proto.timers import LIVE_TIME

__all__ = ["PeerHistory", "REASON_TEXT", "explain", "path_status", "path_basis", "stats", "PathView"]

Key = bytes

REASON_TEXT = {
    "lan": "direct on the LAN",
    "direct": "direct",
    "no-candidates": "no record found for it yet",
    "probing": "probing candidates",
    "probes-timed-out": "probes to every candidate timed out",
    "hard-nat-both-sides": "both NATs map per destination (hard NAT on both sides): no direct path",
}


def explain(reason: str, ours: str, theirs: str) -> str:
    """The reason for a peer's path in words, with which NAT is hard when that is why
    (``ours``/``theirs``: the two NATs' mappings, RFC 4787 §4.1)."""
    text = REASON_TEXT.get(reason, reason)
    if reason == "probes-timed-out":
        hard = []
        if ours == NatMapping.DEPENDENT:
            hard.append("this side's NAT maps per destination (hard NAT)")
        if theirs in HARD_MAPPINGS:
            hard.append("the peer's NAT maps per destination (hard NAT)")
        if hard:
            text += "; " + " and ".join(hard) + ": no direct path"
    return text


def path_status(node: Any, public: Key, now: float) -> PathStatus:
    """``node``: a proto/node.py Node."""
    device = node.device
    peer = device.peers[public]
    live = device.is_live(peer, now, device.timing.reject_after_time) and peer.current is not None
    if not live and node.traversal and peer.endpoint is not None:  # a path kept while idle (issue 26)
        selector = node.paths.selector
        live = selector.current(public) == peer.endpoint and selector.is_live(public, now)
    reason = node.paths.reasons.get(public)
    if live and peer.endpoint is not None:
        lan = host_kind(node.host_of(peer.endpoint), node.local_networks) == "lan"
        return PathStatus("lan" if lan else "direct", None, None, path_basis(node, public))
    if reason is not None and reason not in ("lan", "direct"):
        return PathStatus("none", reason, node.explain(public, reason))
    if peer.endpoint is None:
        return PathStatus("none", "no-endpoint", "no Endpoint configured and nothing discovered yet")
    return PathStatus("none", "no-handshake", f"no handshake with {node.format_addr(peer.endpoint)} yet")


def path_basis(node: Any, public: Key) -> str | None:
    """What the peer's endpoint is based on (one of events.BASES), None without one."""
    peer = node.device.peers.get(public)
    if peer is None or peer.endpoint is None:
        return None
    endpoint = peer.endpoint
    if node.socket_of(endpoint) is not None or node.birthdays.found.get(public) == endpoint:
        return "birthday"
    if host_kind(node.host_of(endpoint), node.local_networks) == "lan":
        return "lan"
    info = next((p for p in node.candidates(public) if p.addr == endpoint), None)
    if info is None:
        return "config" if node.endpoint_source(public) == "config" else "roaming"
    if info.kind == "lan":
        return "lan"
    if info.source in ("mdns", "dns"):
        return "record"
    if info.source == "config":
        return "config"
    return "peer-reflexive" if info.source == "probe" else "roaming"


def stats(node: Any) -> NodeStats:
    """The node's counters for metrics and the shutdown log: its own and its cores'."""
    nat = node.nat
    c = nat.stun.counters if nat is not None else None
    selector = node.paths.selector
    counters = dict(node.counters)
    cores = [node.paths.counters, node.paths.pmtu.counters, node.birthdays.counters, node.lookups.counters,
             node.calls.counters]
    if node.membership is not None:
        cores.append(node.membership.counters)
    for core in cores:
        for k, v in core.items():
            counters[k] = counters.get(k, 0) + v
    counters.update({k: v for k, v in (
        ("candidates-dropped", selector.candidates_dropped),
        ("probes-over-budget", selector.probes_over_budget),
        ("idle-paths-let-go", selector.paths_let_go),
        ("birthday-probes", node.birthday.probes_sent),
        ("probe-answers-late", node.prober.late_answers),
        *((f"probes-{why}", n) for why, n in selector.probes_by.items())) if v})
    return NodeStats(
        probes_sent=selector.probes_sent, probe_replies=node.prober.replies, probe_drops=dict(node.prober.drops),
        stun_errors=c.timeouts + c.error_responses if c is not None else 0, counters=counters)


class PathView(Mapping[bytes, tuple[bool, "float | None"]]):
    """peer -> (has a path we trust: a live session or a verified path, and no unanswered data;
    when its session stops being live), computed when read (proto/lookups.py reads due keys only)."""

    def __init__(self, node: Any, now: float) -> None:
        self.node, self.now = node, now

    def __getitem__(self, public: bytes) -> tuple[bool, float | None]:
        node, now = self.node, self.now
        peer = node.device.peers.get(public)
        if peer is None:
            return False, None
        path = node.has_path(public, now) and public not in node.paths.suspected
        if node.traversal and node.paths.selector.is_dormant(public):
            return path, None  # quiet because idle (issue 26): trusted, no boundary to check at
        ends = [t for t in (None if peer.last_authenticated is None else peer.last_authenticated + LIVE_TIME,
                            node.paths.selector.current_until(public) if node.traversal else None) if t is not None]
        return path, max(ends) if ends else None

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.node.device.peers)

    def __len__(self) -> int:
        return len(self.node.device.peers)


class PeerHistory:
    """Per-peer counts for status and metrics, from the device's events: handshakes, endpoint
    changes, and what set the current endpoint."""

    def __init__(self) -> None:
        self.handshakes: dict[bytes, int] = {}
        self.path_changes: dict[bytes, int] = {}
        self.endpoint_source: dict[bytes, str] = {}

    def absorb(self, event: Any) -> None:
        if isinstance(event, HandshakeCompleted):
            self.handshakes[event.peer] = self.handshakes.get(event.peer, 0) + 1
        elif isinstance(event, EndpointChanged):
            self.endpoint_source[event.peer] = event.cause
            if event.old is not None:
                self.path_changes[event.peer] = self.path_changes.get(event.peer, 0) + 1

    def forget(self, public: bytes) -> None:
        for table in (self.handshakes, self.path_changes, self.endpoint_source):
            table.pop(public, None)
