"""Status views (proto/views.py) as pure functions of a node's public state: explain(),
path_basis(), path_status(). The node is a plain namespace here; the device a real one."""

from __future__ import annotations

import ipaddress
from types import SimpleNamespace
from typing import Any

import pytest

from tests.unit.test_device import B_ADDR, Pair, ipv4_packet
from wgdisco.proto.events import BASES, PathStatus
from wgdisco.proto.paths import REASONS, PathInfo
from wgdisco.proto.views import REASON_TEXT, explain, path_basis, path_status

HARD_OURS = "this side's NAT maps per destination (hard NAT)"
HARD_THEIRS = "the peer's NAT maps per destination (hard NAT)"


def test_every_reason_has_words() -> None:
    assert set(REASON_TEXT) == set(REASONS)
    for reason in REASONS:
        assert explain(reason, "unknown", "unknown") == REASON_TEXT[reason]
    assert explain("something-new", "unknown", "unknown") == "something-new"


@pytest.mark.parametrize("ours, theirs, text", [
    ("endpoint-dependent", "endpoint-independent", f"probes to every candidate timed out; {HARD_OURS}: no direct path"),
    ("endpoint-independent", "address-dependent", f"probes to every candidate timed out; {HARD_THEIRS}: no direct path"),
    ("unknown", "address-and-port-dependent", f"probes to every candidate timed out; {HARD_THEIRS}: no direct path"),
    ("endpoint-dependent", "endpoint-dependent",
     f"probes to every candidate timed out; {HARD_OURS} and {HARD_THEIRS}: no direct path"),
    ("endpoint-independent", "endpoint-independent", "probes to every candidate timed out"),
    ("unknown", "unknown", "probes to every candidate timed out"),
])
def test_timed_out_probes_say_which_nat_is_hard(ours: str, theirs: str, text: str) -> None:
    assert explain("probes-timed-out", ours, theirs) == text


def test_hard_nats_matter_only_when_probes_timed_out() -> None:
    assert explain("probing", "endpoint-dependent", "endpoint-dependent") == "probing candidates"
    assert "hard NAT on both sides" in explain("hard-nat-both-sides", "endpoint-dependent", "endpoint-dependent")


PEER = b"P" * 32
LAN = [ipaddress.ip_network("10.1.0.0/24")]


def fake_node(endpoint: Any, *, paths: list[PathInfo] = (), socket: int | None = None, found: Any = None,
              source: str | None = None) -> Any:
    peer = SimpleNamespace(endpoint=endpoint)
    return SimpleNamespace(
        device=SimpleNamespace(peers={PEER: peer}), local_networks=LAN, host_of=lambda a: a[0],
        socket_of=lambda a: socket, birthdays=SimpleNamespace(found={PEER: found} if found else {}),
        candidates=lambda public: list(paths), endpoint_source=lambda public: source)


WAN = ("203.0.113.7", 51820)


@pytest.mark.parametrize("node, basis", [
    (fake_node(None), None),  # no endpoint, nothing based on anything
    (fake_node(WAN, socket=3), "birthday"),  # over one of our punched sockets
    (fake_node(WAN, found=WAN), "birthday"),  # the port a random-port probe hit
    (fake_node(("10.1.0.9", 51820)), "lan"),  # inside one of our networks
    (fake_node(WAN, source="config"), "config"),  # no candidate: the configured Endpoint
    (fake_node(WAN, source="roaming"), "roaming"),  # no candidate: WireGuard's roaming rule
    (fake_node(WAN, paths=[PathInfo(WAN, "lan", "mdns")]), "lan"),
    (fake_node(WAN, paths=[PathInfo(WAN, "host", "mdns")]), "record"),
    (fake_node(WAN, paths=[PathInfo(WAN, "srflx", "dns")]), "record"),
    (fake_node(WAN, paths=[PathInfo(WAN, "host", "config")]), "config"),
    (fake_node(WAN, paths=[PathInfo(WAN, "prflx", "probe")]), "peer-reflexive"),
    (fake_node(WAN, paths=[PathInfo(WAN, "prflx", "roaming")]), "roaming"),
    (fake_node(WAN, paths=[PathInfo(("198.51.100.1", 1), "host", "mdns")], source="probe"), "roaming"),
])
def test_path_basis(node: Any, basis: str | None) -> None:
    assert path_basis(node, PEER) == basis
    assert basis is None or basis in BASES
    assert path_basis(node, b"Q" * 32) is None  # not a peer


def status_node(pair: Pair, reason: str | None = None) -> Any:
    """A's view of B, for path_status."""
    return SimpleNamespace(
        device=pair.a, paths=SimpleNamespace(reasons={pair.b.identity.public: reason} if reason else {}),
        local_networks=[ipaddress.ip_network("198.51.100.0/24")], host_of=lambda a: a[0],
        format_addr=lambda a: f"{a[0]}:{a[1]}", explain=lambda public, r: f"words for {r}",
        socket_of=lambda a: None, birthdays=SimpleNamespace(found={}),
        candidates=lambda public: [], endpoint_source=lambda public: "config", traversal=False)


def test_path_status() -> None:
    pair = Pair(endpoint_b=False)
    b = pair.b.identity.public
    assert path_status(status_node(pair), b, pair.now) == PathStatus(
        "none", "no-endpoint", "no Endpoint configured and nothing discovered yet")
    assert path_status(status_node(pair, "probing"), b, pair.now) == PathStatus("none", "probing", "words for probing")
    pair.a.set_endpoint(pair.pa, B_ADDR)
    assert path_status(status_node(pair), b, pair.now) == PathStatus(
        "none", "no-handshake", "no handshake with 198.51.100.2:51820 yet")
    pair.send("a", ipv4_packet("10.0.0.1", "10.0.0.2"))
    assert pair.pa.current is not None
    # a session: the path is live, on our LAN here (198.51.100.0/24); a stale reason does not matter
    assert path_status(status_node(pair, "probing"), b, pair.now) == PathStatus("lan", None, None, "lan")
    node = status_node(pair)
    node.local_networks = []
    assert path_status(node, b, pair.now) == PathStatus("direct", None, None, "config")  # the configured Endpoint
    # long silent (REJECT_AFTER_TIME): no longer live
    later = pair.now + pair.a.timing.reject_after_time
    assert path_status(status_node(pair, "probes-timed-out"), b, later) == PathStatus(
        "none", "probes-timed-out", "words for probes-timed-out")
    # … unless the path selector keeps the path while idle (issue 26: dormant, trusted)
    kept = status_node(pair, "lan")
    kept.traversal = True
    kept.paths.selector = SimpleNamespace(current=lambda public: B_ADDR, is_live=lambda public, now: True)
    assert path_status(kept, b, later) == PathStatus("lan", None, None, "lan")
    kept.paths.selector = SimpleNamespace(current=lambda public: B_ADDR, is_live=lambda public, now: False)
    assert path_status(kept, b, later).path == "none"
