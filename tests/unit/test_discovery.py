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


def with_serial(inner: Any, serial: list[int], refuse: bool = False) -> Any:
    """``inner`` (wgsd) with the zone's SOA at ``serial[0]``; ``refuse``: SOA queries REFUSED."""
    def handler(query: dns.message.Message) -> Any:
        if query.question[0].rdtype != dns.rdatatype.SOA:
            return inner(query)
        response = dns.message.make_response(query)
        if refuse:
            response.set_rcode(dns.rcode.REFUSED)
            return response
        response.authority.append(dns.rrset.from_text(
            DOMAIN, 60, "IN", "SOA", f"ns1.{DOMAIN} postmaster.{DOMAIN} {serial[0]} 86400 7200 3600000 60"))
        return response
    return handler


def kinds(server: FakeDNS, since: int) -> list[str]:
    return sorted(q for _, _, q in dict.fromkeys(server.seen[since:]))


@pytest.mark.asyncio
async def test_lookups_under_an_unchanged_zone_serial_hand_over_the_last_answers_without_a_query(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 26: an idle mesh's members looked every peer up every PollInterval (2 queries each,
    quadratic at the nameserver); now one SOA query a second tells that nothing changed."""
    serial = [7]
    async with FakeDNS(with_serial(wgsd(PEERS), serial)) as server:
        d, node = make(server)
        publics = [p.public for p in PEERS]
        assert not await d.look_up_all(dnssd.Retry("test"), publics)
        # the first lookups wait for no SOA query (a lost one would delay them): kept untagged
        assert kinds(server, 0) == ["SRV"] * 5 + ["TXT"] * 5
        n = len(server.seen)
        assert not await d.look_up_all(dnssd.Retry("test"), publics)
        assert kinds(server, n) == ["SOA"] + ["SRV"] * 5 + ["TXT"] * 5  # now under the serial asked before
        n = len(server.seen)
        assert not await d.look_up_all(dnssd.Retry("test"), publics)  # within 1 s: the same serial
        assert server.seen[n:] == []  # not even the SOA again
        assert d.counters["dns-lookups-unchanged"] == 5
        assert sorted(k for _, k in node.sightings[10:]) == sorted(publics)  # the same answers again
        monkeypatch.setattr(dnssd, "SERIAL_MAX_AGE", 0.0)
        n = len(server.seen)
        assert not await d.look_up_all(dnssd.Retry("test"), publics[:2])
        assert kinds(server, n) == ["SOA"]  # asked again, unchanged
        serial[0] += 1  # anything in the zone changed
        n = len(server.seen)
        assert not await d.look_up_all(dnssd.Retry("test"), publics[:2])
        assert kinds(server, n) == ["SOA", "SRV", "SRV", "TXT", "TXT"]
    assert len(node.sightings) == 19


@pytest.mark.asyncio
async def test_a_nameserver_that_refuses_soa_queries_gets_every_lookup_as_before() -> None:
    async with FakeDNS(with_serial(wgsd(PEERS), [1], refuse=True)) as server:
        d, node = make(server)
        for _ in range(3):
            assert not await d.look_up_all(dnssd.Retry("test"), [PEERS[0].public])
    assert [q for _, _, q in server.seen].count("SOA") == 1  # asked once, then not again
    assert [q for _, _, q in server.seen].count("SRV") == 3 and len(node.sightings) == 3
    assert "dns-lookups-unchanged" not in d.counters
