"""wgdisco.daemon.discovery: unicast DNS-SD lookups run in parallel, against the loopback DNS server of
test_dnssd.py (answering like wgsd). mDNS and publishing: tests/netns/test_dnssd_lab.py,
test_mdns_lab.py."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from tests.unit.test_dnssd import DOMAIN, FakeDNS, WgsdPeer, wgsd
from wgdisco.daemon import discovery
from wgdisco.daemon.discovery import Discovery
from wgdisco.io import dnssd
from wgdisco.proto import keys

PEERS = [WgsdPeer(keys.public_key(keys.clamp(hashlib.blake2s(bytes([i])).digest())), (f"203.0.113.{i}", 7000 + i),
                  f"10.0.0.{i}/32") for i in range(1, 6)]


class FakeNode:
    """What Discovery feeds: the sightings, with when each arrived."""

    def __init__(self) -> None:
        self.sightings: list[tuple[float, bytes]] = []

    def receive_sighting(self, sighting: Any, source: str, now: float) -> None:
        assert source == "dns"
        self.sightings.append((time.monotonic(), sighting.public_key))


def make(server: FakeDNS) -> tuple[Discovery, FakeNode]:
    node = FakeNode()
    d = Discovery({}, "test.conf", None, feed=lambda fn: fn(node, 0.0), peer_keys=frozenset)  # type: ignore[arg-type]
    d.client = dnssd.DnssdClient(server.address, DOMAIN, timeout=2.0)
    return d, node


def lose_first_srv(inner: Any) -> Any:
    """Every name's first SRV query is lost (its TXT and the rest get through)."""
    copies: dict[str, int] = {}

    def handler(query: dns.message.Message) -> Any:
        q = query.question[0]
        if q.rdtype == dns.rdatatype.SRV:
            name = q.name.to_text().lower()
            copies[name] = copies.get(name, 0) + 1
            if copies[name] == 1:
                return None
        return inner(query)

    return handler


@pytest.mark.asyncio
async def test_lookups_of_different_names_run_in_parallel() -> None:
    """Five names, each with its first query lost: in sequence that is five retransmission
    waits (2 s at 0.4 s each), in parallel one."""
    async with FakeDNS(lose_first_srv(wgsd(PEERS))) as server:
        d, node = make(server)
        started = time.monotonic()
        failed = await d.look_up_all(dnssd.Retry("test"), [p.public for p in PEERS])
        took = time.monotonic() - started
    assert not failed
    assert sorted(k for _, k in node.sightings) == sorted(p.public for p in PEERS)
    assert took < 2 * dnssd.FIRST_RTO + 0.3, took  # one retransmission wait, not five


@pytest.mark.asyncio
async def test_a_failing_name_does_not_hold_the_others_back() -> None:
    inner = wgsd(PEERS)
    bad = keys.key_to_base32(PEERS[0].public)

    def handler(query: dns.message.Message) -> Any:
        if query.question[0].name.labels[0].decode().lower() == bad:
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.SERVFAIL)
            return response
        return inner(query)

    async with FakeDNS(handler) as server:
        d, node = make(server)
        failed = await d.look_up_all(dnssd.Retry("test"), [p.public for p in PEERS])
    assert failed  # the round backs off afterwards (Discovery's poll loop)
    assert sorted(k for _, k in node.sightings) == sorted(p.public for p in PEERS[1:])
    assert d.counters.get("dns-lookup-errors") == 1


@pytest.mark.asyncio
async def test_at_most_max_parallel_lookups_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(discovery, "MAX_PARALLEL_LOOKUPS", 2)
    inner = wgsd(PEERS)
    async with FakeDNS(lose_first_srv(inner)) as server:
        d, node = make(server)
        started = time.monotonic()
        await d.look_up_all(dnssd.Retry("test"), [p.public for p in PEERS])
        took = time.monotonic() - started
    assert len(node.sightings) == len(PEERS)
    assert took > 3 * dnssd.FIRST_RTO - 0.05  # five names, two at a time: three waits


@pytest.mark.asyncio
async def test_mesh_browse_counts_what_each_read_cost() -> None:
    """dns-browse-plain / -shards / -unchanged and dns-browse-queries, in the status counters."""
    from tests.unit.test_dnssd import Directory, member_label

    zone = Directory([member_label(i) for i in range(40)])  # beyond one datagram: the SOA check pays
    found: list[list[bytes]] = []

    class Node:
        def browse_found(self, keys_found: list[bytes], now: float) -> None:
            found.append(keys_found)

    node = Node()
    async with FakeDNS(zone, udp_limit=dnssd.EDNS_PAYLOAD) as server:
        d = Discovery({}, "test.conf", None, feed=lambda fn: fn(node, 0.0), peer_keys=frozenset)  # type: ignore[arg-type]
        d.client = dnssd.DnssdClient(server.address, DOMAIN, browse_timeout=discovery.BROWSE_TIMEOUT)
        retry = dnssd.Retry("test")
        assert not await d._mesh_browse(retry)
        assert not await d._mesh_browse(retry)  # unchanged: the same keys handed over again
    assert [len(f) for f in found] == [40, 40] and found[0] == found[1]
    assert {k: v for k, v in d.counters.items() if k.startswith("dns-browse")} == {
        "dns-browse-plain": 1, "dns-browse-unchanged": 1, "dns-browse-queries": 3 + 1}
