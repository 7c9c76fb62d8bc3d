"""wgdisco.io.dnssd: unicast DNS-SD client and RFC 2136 publisher, against a real Knot (netns).

A real Knot (wgdisco/lab/knot.py) on a "WAN" link behind a router; the
publisher and the browser are two other hosts on two other links.  Each client
runs its asyncio loop on a thread that entered the host's namespace (setns(2)
is per thread, and a socket stays in the namespace it was created in).

On loopback, against a wgsd-like server in this process: tests/unit/test_dnssd.py.
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import ipaddress
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from tests.observe import wait_until
from wgdisco.errors import ConfigError, DecodeError
from wgdisco.io import dnssd
from wgdisco.io.dnssd import (
    DnssdClient,
    DnssdPublisher,
    NameserverError,
    NameserverTimeout,
    RawInstance,
    Retry,
    parse_update_key,
)
from wgdisco.lab import Host, Lab
from wgdisco.lab.knot import Knot, member_zone, start_knot, zone_name
from wgdisco.proto import keys, records

ip = ipaddress.ip_address
DOMAIN = "wg.example.net."
SERVICE = "_wireguard._udp.wg.example.net."

# wgsd's README keys.
PUB1 = keys.key_from_base64("xScVkH3fUGUv4RrJFfmcqm8rs3SEHr41km6+yffAHw4=")
PUB2 = keys.key_from_base64("syKB97XhGnvC+kynh2KqQJPXoOoOpx/HmpMRTc+r4js=")
LABEL1, LABEL2 = keys.key_to_base32(PUB1), keys.key_to_base32(PUB2)


# ==================================================================== Knot in namespaces


CLONE_NEWNET = 0x40000000


def _enter_netns(ns: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {ns}: {os.strerror(err)}")
    finally:
        os.close(fd)


class InHost:
    """A thread inside ``host``'s namespace; ``run(coro_fn, ...)`` runs a coroutine there."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=host.name, initializer=_enter_netns,
                                        initargs=(host.ns,))

    def submit(self, fn: Callable, *args) -> Future:
        return self._pool.submit(lambda: asyncio.run(fn(*args)))

    def run(self, fn: Callable, *args, timeout: float = 60.0):
        return self.submit(fn, *args).result(timeout)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class Net:
    knot: Knot
    alice: InHost  # publishes
    bob: InHost  # browses, from another link behind the router
    router: Host | None = None  # between them and Knot

    def publisher(self, key: str | None = None, zone: str = DOMAIN) -> DnssdPublisher:
        return DnssdPublisher(self.knot.address, DOMAIN, zone, parse_update_key(key or self.knot.update_key))

    def client(self, nameserver: tuple[str, int] | None = None, timeout: float = 2.0) -> DnssdClient:
        return DnssdClient(nameserver or self.knot.address, DOMAIN, timeout=timeout)


def build_net(lab: Lab, **knot_args) -> Net:
    """router r: ns (Knot, 198.51.100.53 + 2001:db8:53::53), alice (203.0.113.10), bob (203.0.113.130)."""
    r = lab.router("r")
    ns, alice, bob = lab.host("ns"), lab.host("alice"), lab.host("bob")
    lab.link(r, ns, "198.51.100.1/24", "198.51.100.53/24", "2001:db8:53::1/64", "2001:db8:53::53/64")
    lab.link(r, alice, "203.0.113.1/25", "203.0.113.10/25", "2001:db8:a::1/64", "2001:db8:a::10/64")
    lab.link(r, bob, "203.0.113.129/25", "203.0.113.130/25", "2001:db8:b::1/64", "2001:db8:b::130/64")
    for host, gw4, gw6 in ((ns, "198.51.100.1", "2001:db8:53::1"), (alice, "203.0.113.1", "2001:db8:a::1"),
                           (bob, "203.0.113.129", "2001:db8:b::1")):
        host.add_route("default", via=gw4)
        host.add_route("default", via=gw6)
    knot = start_knot(ns, ["198.51.100.53", "2001:db8:53::53"], **knot_args)
    return Net(knot, InHost(alice), InHost(bob), r)


@pytest.fixture
def net(lab: Lab) -> Iterator[Net]:
    n = build_net(lab)
    try:
        yield n
    finally:
        n.alice.close()
        n.bob.close()


def node_record(pub: bytes, port: int, addresses: list[str], candidates: list[tuple[str, int]]):
    return records.ServiceRecord(
        public_key=pub, port=port, target=records.instance_name(pub, DOMAIN),
        addresses=[ip(a) for a in addresses], allowed=[ipaddress.ip_network("10.0.0.1/32")],
        candidates=[(ip(a), p) for a, p in candidates],
    )


async def publish(publisher: DnssdPublisher, rec: records.ServiceRecord, ttl: int = 60) -> None:
    await publisher.publish(rec.instance_label, rec.port, rec.target, rec.addresses, records.build_txt(rec), ttl)


def lines(text: str) -> list[str]:
    return sorted(" ".join(line.split()) for line in text.splitlines() if line.strip())


@pytest.mark.netns
def test_publish_shows_the_wgsd_layout(net: Net) -> None:
    rec1 = node_record(PUB1, 51820, ["203.0.113.10", "2001:db8:a::10"], [("10.1.0.2", 51820)])
    rec2 = node_record(PUB2, 51821, ["198.51.100.77"], [])

    async def main() -> None:
        publisher = net.publisher()
        await publish(publisher, rec1)
        await publish(publisher, rec2)
        # Re-publishing replaces: new port and address; rec2's PTR stays.
        rec1.port, rec1.addresses = 4500, [ip("203.0.113.11")]
        await publish(publisher, rec1, ttl=30)

    net.alice.run(main)
    knot, bob = net.knot, net.bob.host
    inst1, inst2 = records.instance_name(PUB1, DOMAIN), records.instance_name(PUB2, DOMAIN)
    assert lines(knot.dig(bob, SERVICE, "PTR")) == sorted([
        f"{SERVICE} 30 IN PTR {inst1}",  # one RRset, one TTL: the last one written
        f"{SERVICE} 30 IN PTR {inst2}",
    ])
    assert lines(knot.dig(bob, inst1, "SRV", "+additional")) == sorted([
        f"{inst1} 30 IN SRV 0 0 4500 {inst1}",
        f"{inst1} 30 IN A 203.0.113.11",  # Knot adds the target's address, as wgsd does
    ])
    assert lines(knot.dig(bob, inst1, "TXT")) == [
        f'{inst1} 30 IN TXT "txtvers=1" "pub={keys.key_to_base64(PUB1)}" "allowed=10.0.0.1/32" '
        f'"cand=10.1.0.2:51820"'
    ]
    assert lines(knot.dig(bob, inst1, "AAAA")) == []
    assert lines(knot.dig(bob, inst2, "SRV")) == [f"{inst2} 60 IN SRV 0 0 51821 {inst2}"]


@pytest.mark.netns
def test_lookup_and_browse_from_another_link(net: Net) -> None:
    rec = node_record(PUB1, 51820, ["203.0.113.10", "2001:db8:a::10"],
                      [("10.1.0.2", 51820), ("fd00:1::2", 51820), ("203.0.113.10", 51820)])
    net.alice.run(publish, net.publisher(), rec)

    async def browse_and_lookup(nameserver: tuple[str, int]):
        client = net.client(nameserver)
        return await client.browse(), await client.lookup(LABEL1), await client.lookup(LABEL2)

    for nameserver in (("198.51.100.53", 53), ("2001:db8:53::53", 53)):
        labels, raw, missing = net.bob.run(browse_and_lookup, nameserver)
        assert labels == [LABEL1]
        assert missing is None
        assert raw == RawInstance(51820, records.instance_name(PUB1, DOMAIN),
                                  [ip("203.0.113.10"), ip("2001:db8:a::10")], records.build_txt(rec), 60)
        sighting = records.record_from_dns(LABEL1, *raw[:4])
        assert sighting.candidates == [(ip("203.0.113.10"), 51820), (ip("2001:db8:a::10"), 51820),
                                       (ip("10.1.0.2"), 51820), (ip("fd00:1::2"), 51820)]
        assert sighting.malformed == 0


@pytest.mark.netns
def test_withdraw(net: Net) -> None:
    async def main():
        publisher = net.publisher()
        await publish(publisher, node_record(PUB1, 1, ["203.0.113.10"], []))
        await publish(publisher, node_record(PUB2, 2, ["203.0.113.20"], []))
        await publisher.withdraw(LABEL1)
        await publisher.withdraw(LABEL1)  # again: nothing left to delete, still fine
        client = net.client()
        return await client.browse(), await client.lookup(LABEL1), await client.lookup(LABEL2)

    labels, gone, kept = net.alice.run(main)
    assert labels == [LABEL2] and gone is None and kept.srv_port == 2
    inst1 = records.instance_name(PUB1, DOMAIN)
    assert all(net.knot.dig(net.bob.host, inst1, t) == "" for t in ("SRV", "TXT", "A", "AAAA"))


@pytest.mark.netns
def test_large_update_goes_over_tcp(net: Net, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = node_record(PUB1, 51820, ["203.0.113.10"], [(f"2001:db8:ffff:{i:x}::abcd", 40000 + i) for i in range(40)])
    used: list[str] = []
    for kind in ("_udp", "_tcp"):
        original = getattr(dnssd._Transport, kind)

        async def spy(self, *args, _kind=kind, _original=original):
            used.append(_kind)
            return await _original(self, *args)

        monkeypatch.setattr(dnssd._Transport, kind, spy)

    async def main():
        await publish(net.publisher(), rec)
        return await net.client().lookup(LABEL1)

    raw = net.alice.run(main)
    assert used[0] == "_tcp"  # the UPDATE: > 512 bytes
    assert records.txt_wire_size(raw.txt) > 1200
    assert raw.txt == records.build_txt(rec)


@pytest.mark.netns
def test_wrong_tsig_keys_are_clear_errors(lab: Lab) -> None:
    net = build_net(lab, other_keys={"reader.": "cmVhZGVyLXNlY3JldA=="})
    wrong_secret = "hmac-sha256:wgdisco.:" + "QUFB" * 11
    rec = node_record(PUB1, 1, ["203.0.113.10"], [])
    try:
        def fails(key: str, zone: str = DOMAIN) -> str:
            async def main():
                await publish(net.publisher(key, zone), rec)
            with pytest.raises(ConfigError) as info:
                net.alice.run(main)
            return str(info.value)

        assert fails(wrong_secret).startswith("TSIG key 'wgdisco.' was refused by 198.51.100.53:53 (BADSIG)")
        assert fails("hmac-sha256:nobody.:" + "QUFB" * 11).startswith(
            "TSIG key 'nobody.' was refused by 198.51.100.53:53 (BADKEY)")
        # A key Knot knows but whose ACL does not cover the zone: Knot says BADKEY too (not REFUSED).
        message = fails("hmac-sha256:reader.:cmVhZGVyLXNlY3JldA==")
        assert message.startswith("TSIG key 'reader.' was refused by 198.51.100.53:53 (BADKEY)")
        assert "zone 'wg.example.net.'" in message
        # A zone Knot does not serve: NOTAUTH, unsigned.
        message = fails(net.knot.update_key, "example.net.")
        assert message == ("198.51.100.53:53 is not authoritative for zone 'example.net.' "
                           "or does not accept TSIG key 'wgdisco.' (NOTAUTH)")
        assert net.bob.run(net.client().browse) == []  # nothing got in
    finally:
        net.alice.close()
        net.bob.close()


WGSD_ZONE = f"""\
; What wgsd would serve, written by hand: TTL 0, names in upper case, the address on the instance name.
_WIREGUARD._UDP 0 PTR {zone_name(LABEL1.upper())}._WIREGUARD._UDP.WG.EXAMPLE.NET.
_WIREGUARD._UDP 0 PTR {zone_name(LABEL2)}._wireguard._udp
{zone_name(LABEL1.upper())}._WIREGUARD._UDP 0 SRV 0 0 7777 {zone_name(LABEL1.upper())}._WIREGUARD._UDP
{zone_name(LABEL1.upper())}._WIREGUARD._UDP 0 A 203.0.113.1
{zone_name(LABEL1.upper())}._WIREGUARD._UDP 0 TXT "txtvers=1" "pub={keys.key_to_base64(PUB1)}" "allowed=10.0.0.1/32"
{zone_name(LABEL2)}._wireguard._udp 0 SRV 0 0 8888 {zone_name(LABEL2)}._wireguard._udp
{zone_name(LABEL2)}._wireguard._udp 0 AAAA 2001:db8::2
"""


@pytest.mark.netns
def test_hand_written_wgsd_zone(lab: Lab) -> None:
    net = build_net(lab, extra_records=WGSD_ZONE)
    try:
        async def main():
            client = net.client()
            return await client.browse(), await client.lookup(LABEL1.upper()), await client.lookup(LABEL2)

        labels, raw1, raw2 = net.bob.run(main)
        assert sorted(labels) == sorted([LABEL1, LABEL2])  # Knot answers in canonical order
        assert raw1.srv_port == 7777 and raw1.addresses == [ip("203.0.113.1")] and raw1.ttl == 0
        assert raw1.srv_target.lower() == records.instance_name(PUB1, DOMAIN)
        s1 = records.record_from_dns(LABEL1, *raw1[:4])
        assert s1.candidates == [(ip("203.0.113.1"), 7777)] and s1.malformed == 0
        assert [str(n) for n in s1.allowed] == ["10.0.0.1/32"]
        s2 = records.record_from_dns(LABEL2, *raw2[:4])  # wgsd v0.2: no TXT at all
        assert s2.candidates == [(ip("2001:db8::2"), 8888)] and raw2.txt == [] and s2.malformed == 0
    finally:
        net.alice.close()
        net.bob.close()


KEY3 = keys.public_key(bytes(range(32)))
LABEL3 = keys.key_to_base32(KEY3)
MALFORMED_ZONE = f"""\
; Another publisher's mistakes.
_wireguard._udp 60 PTR {zone_name(LABEL1)}._wireguard._udp
_wireguard._udp 60 PTR not-a-key._wireguard._udp
_wireguard._udp 60 PTR {zone_name(LABEL2)}._wireguard._udp
_wireguard._udp 60 PTR {zone_name(LABEL3)}._wireguard._udp
_wireguard._udp 60 PTR elsewhere.example.org.
_wireguard._udp 60 PTR deeper.{zone_name(LABEL1)}._wireguard._udp
; 1: port 0, target without address, TXT full of junk (and a lying extra key)
{zone_name(LABEL1)}._wireguard._udp 60 SRV 0 0 0 nowhere
{zone_name(LABEL1)}._wireguard._udp 60 TXT "txtvers=1" "=junk" "cand=10.0.0.1:51820,bogus,[fd00::1]:0" "CAND=9.9.9.9:1" "\\255\\000" "pub" "cand1=[2001:db8::1]:443"
; 2: two SRVs (lowest priority wins), TXT naming a different key
{zone_name(LABEL2)}._wireguard._udp 60 SRV 10 0 2222 {zone_name(LABEL2)}._wireguard._udp
{zone_name(LABEL2)}._wireguard._udp 60 SRV 5 0 1111 {zone_name(LABEL2)}._wireguard._udp
{zone_name(LABEL2)}._wireguard._udp 60 A 203.0.113.2
{zone_name(LABEL2)}._wireguard._udp 60 TXT "pub={keys.key_to_base64(PUB1)}"
; 3: TXT only, no SRV
{zone_name(LABEL3)}._wireguard._udp 60 TXT "txtvers=1" "cand=203.0.113.3:3333"
not-a-key._wireguard._udp 60 SRV 0 0 1 not-a-key._wireguard._udp
"""


@pytest.mark.netns
def test_malformed_records_from_another_publisher(lab: Lab) -> None:
    net = build_net(lab, extra_records=MALFORMED_ZONE)
    try:
        async def main():
            client = net.client()
            labels = await client.browse()
            return labels, {label: await client.lookup(label) for label in labels}

        labels, raws = net.bob.run(main)
        # browse reports every instance name under the service, judged later.
        assert sorted(labels) == sorted([LABEL1, "not-a-key", LABEL2, LABEL3])
        with pytest.raises(DecodeError):
            records.record_from_dns("not-a-key", *raws["not-a-key"][:4])

        raw1 = raws[LABEL1]
        assert raw1.srv_port == 0 and raw1.addresses == []
        assert raw1.txt[:2] == [b"txtvers=1", b"=junk"] and b"\xff\x00" in raw1.txt
        s1 = records.record_from_dns(LABEL1, *raw1[:4])
        # cand= parsed up to its junk; CAND= is a duplicate key; "pub" without value.
        assert s1.candidates == [(ip("10.0.0.1"), 51820), (ip("2001:db8::1"), 443)]
        # SRV port 0, "=junk", bogus, [fd00::1]:0, duplicate CAND, "\xff\x00", pub without '='
        assert s1.malformed == 7

        raw2 = raws[LABEL2]
        assert raw2.srv_port == 1111 and raw2.addresses == [ip("203.0.113.2")]
        with pytest.raises(DecodeError, match="different key"):
            records.record_from_dns(LABEL2, *raw2[:4])

        raw3 = raws[LABEL3]
        assert raw3.srv_port is None and raw3.srv_target is None and raw3.addresses == []
        s3 = records.record_from_dns(LABEL3, *raw3[:4])
        assert s3.candidates == [(ip("203.0.113.3"), 3333)] and s3.malformed == 0
    finally:
        net.alice.close()
        net.bob.close()


@pytest.mark.netns
def test_nameserver_down_then_back(net: Net, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="wgdisco.io.dnssd")
    net.alice.run(publish, net.publisher(), node_record(PUB1, 51820, ["203.0.113.10"], []))
    net.knot.stop()

    async def fails_fast(nameserver: tuple[str, int]) -> tuple[type, str, float]:
        client = net.client(nameserver, timeout=1.0)
        started = time.monotonic()
        try:
            await client.lookup(LABEL1)
        except NameserverError as e:
            return type(e), str(e), time.monotonic() - started
        raise AssertionError("lookup succeeded with the nameserver down")

    # knotd stopped, host up: ICMP port unreachable arrives at once on the connected socket.
    kind, message, took = net.bob.run(fails_fast, ("198.51.100.53", 53))
    assert kind is NameserverError and "198.51.100.53:53 is unreachable" in message and took < 0.5, message
    # Nobody at that address: silence, a timeout within the timeout.
    kind, message, took = net.bob.run(fails_fast, ("198.51.100.99", 53))
    assert kind is NameserverTimeout and "198.51.100.99:53" in message and 0.95 < took < 1.3

    retries: list[Retry] = []

    async def retrying():
        client = net.client(timeout=0.5)
        retry = Retry(f"DNS-SD lookup via {client.where}", initial=0.1, maximum=0.4)
        retries.append(retry)
        return await retry.run(lambda: client.lookup(LABEL1)), retry

    pending = net.bob.submit(retrying)
    # a few failed attempts (the Retry counts them), and the lookup is still pending
    wait_until(lambda: retries and retries[0].failures >= 3, 10, "3 failed lookups")
    assert not pending.done() and retries[0].down
    net.knot.start()
    raw, retry = pending.result(30)
    assert raw.srv_port == 51820 and raw.addresses == [ip("203.0.113.10")]  # kept across the restart
    logged = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "wgdisco.io.dnssd"]
    assert [level for level, _ in logged] == ["WARNING", "INFO"], logged
    assert "198.51.100.53:53" in logged[0][1] and "working again" in logged[1][1]
    assert not retry.down


def two_published(net: Net, router_table: str) -> tuple[list[bytes], Host]:
    """PUB1 and PUB2 published at Knot (ports 51820 and 51821), and ``router_table`` (nftables) on
    the router in front of it; the keys and the router."""
    pubs = [PUB1, PUB2]
    for n, pub in enumerate(pubs):
        net.alice.run(publish, net.publisher(), node_record(pub, 51820 + n, [f"203.0.113.{10 + n}"], []))
    router = net.router
    assert router is not None
    router.run(["nft", "-f", "-"], input=router_table)
    return pubs, router


def discovery_to(on_sighting: Callable[[records.Sighting], None], client: DnssdClient):
    """The daemon's Discovery looking up over ``client``, each record it hands the node going to
    ``on_sighting`` (call it inside the host's event loop)."""
    from wgdisco.daemon.discovery import Discovery

    class Node:
        def receive_sighting(self, sighting, source, now) -> None:
            on_sighting(sighting)

    node = Node()
    d = Discovery({}, "lab.conf", None, feed=lambda fn: fn(node, 0.0), peer_keys=frozenset)  # type: ignore[arg-type]
    d.client = client
    return d


LOSSY_DNS = """table inet lossydns {
    chain lossy {
        type filter hook forward priority 0;
        ip daddr 198.51.100.53 udp dport 53 quota until 200 bytes counter drop
    }
}
"""  # the first DNS datagrams towards Knot (about two queries) are lost at the router


@pytest.mark.netns
def test_lost_queries_cost_one_short_retransmission_and_names_go_in_parallel(net: Net) -> None:
    """A router in front of Knot loses the first queries: each lost one is sent again after
    dnssd.FIRST_RTO (0.4 s), and the lookups of several names run at once (discovery.py
    look_up_all), so the whole round costs one retransmission wait, not one per name."""
    pubs, router = two_published(net, LOSSY_DNS)

    async def look_up_both() -> tuple[list[bytes], float, bool]:
        seen: list[bytes] = []
        d = discovery_to(lambda sighting: seen.append(sighting.public_key), net.client(timeout=2.0))
        started = time.monotonic()
        failed = await d.look_up_all(Retry("lab"), pubs)
        return seen, time.monotonic() - started, failed

    seen, took, failed = net.bob.run(look_up_both)
    dropped = int(router.run(["nft", "list", "table", "inet", "lossydns"]).stdout.split("packets ")[1].split()[0])
    print(f"{dropped} DNS queries lost at the router; both names looked up in {took:.2f} s")
    assert not failed and sorted(seen) == sorted(pubs)
    assert dropped >= 1
    assert took < 2 * dnssd.FIRST_RTO + 0.4, took


DNS_COUNTERS = """table inet dnscount {
    chain count {
        type filter hook forward priority 0;
        ip daddr 198.51.100.53 udp dport 53 counter
        ip daddr 198.51.100.53 tcp dport 53 tcp flags & (syn | ack) == syn counter
    }
}
"""  # queries that reach Knot: UDP datagrams, and TCP connections


def knot_saw(router: Host) -> tuple[int, int]:
    """(UDP queries, TCP connections) towards Knot so far, counted at the router."""
    out = router.run(["nft", "list", "table", "inet", "dnscount"]).stdout
    udp, tcp = (int(part.split()[0]) for part in out.split("packets ")[1:3])
    return udp, tcp


@pytest.mark.netns
def test_a_browse_of_1500_members_within_one_poll_interval(lab: Lab) -> None:
    """Issue 26: 1,500 members in Knot's zone, each record set as DnssdPublisher.publish leaves it
    (written before Knot starts: fast). The plain PTR set (106 kB) cannot be one DNS message (Knot
    answers SERVFAIL); a DnssdClient with the daemon's settings reads the 256 shards and has every
    member within one PollInterval. Nothing changed: the next browse is one SOA query at Knot. A
    member publishes (a real RFC 2136 UPDATE, its shard PTR too): the next browse finds it."""
    from wgdisco.config import DiscoveryConfig
    from wgdisco.daemon.discovery import BROWSE_TIMEOUT

    members = [node_record(keys.public_key(keys.clamp(hashlib.sha256(i.to_bytes(4, "big")).digest())), 51820,
                           [f"203.0.113.{1 + i % 250}"], []) for i in range(1500)]
    net = build_net(lab, extra_records=member_zone(members, DOMAIN))
    router = net.router
    assert router is not None
    try:
        router.run(["nft", "-f", "-"], input=DNS_COUNTERS)
        client = DnssdClient(net.knot.address, DOMAIN, browse_timeout=BROWSE_TIMEOUT)

        async def timed(fn, *args):
            started = time.monotonic()
            result = await fn(*args)
            return result, time.monotonic() - started

        want = {m.instance_label for m in members}
        labels, took = net.bob.run(timed, client.browse)
        first, seen = client.last_browse, knot_saw(router)
        print(f"browse of 1,500 members: {took:.2f} s, {first.queries} queries ({seen[0]} UDP, "
              f"{seen[1]} TCP at Knot), largest answer {first.largest} bytes")
        assert len(labels) == 1500 and set(labels) == want
        assert first.how == "shards" and first.queries >= 3 + records.SHARDS
        assert took < DiscoveryConfig().poll_interval

        # A member's own lookup of a known peer works as before.
        raw = net.bob.run(client.lookup, members[7].instance_label)
        sighting = records.record_from_dns(members[7].instance_label, *raw[:4])
        assert sighting.public_key == members[7].public_key and sighting.candidates == [(ip("203.0.113.8"), 51820)]

        before = knot_saw(router)
        assert set(net.bob.run(client.browse)) == want
        assert client.last_browse.how == "unchanged" and client.last_browse.queries == 1
        assert knot_saw(router) == (before[0] + 1, before[1])  # one SOA datagram, nothing else

        new = node_record(PUB1, 51820, ["203.0.113.251"], [])
        net.alice.run(publish, net.publisher(), new)
        shard = f"{records.shard_label(LABEL1)}._sub.{SERVICE}"
        assert LABEL1 in net.knot.dig(net.bob.host, shard, "PTR")  # the UPDATE listed it in its shard
        labels, took = net.bob.run(timed, client.browse)
        print(f"after one publish: {took:.2f} s, {client.last_browse.queries} queries")
        assert client.last_browse.how == "shards" and len(labels) == 1501 and LABEL1 in labels

        net.alice.run(net.publisher().withdraw, LABEL1)
        assert LABEL1 not in net.knot.dig(net.bob.host, shard, "PTR")
    finally:
        net.alice.close()
        net.bob.close()


@pytest.mark.netns
def test_lookups_under_an_unchanged_serial_ask_knot_one_soa_query_and_a_change_is_read_again(net: Net) -> None:
    """Issue 26 with the real Knot and the defaults (SERIAL_MAX_AGE 1 s): a member's regular
    lookups of unchanged records cost Knot one SOA query, not SRV and TXT per peer; a
    re-publication of the same record leaves Knot's serial, so it does not undo that; a changed
    record moves the serial and is read again at the next round."""
    pubs, router = two_published(net, DNS_COUNTERS)

    def serial() -> str:
        return net.knot.dig(net.bob.host, DOMAIN, "SOA").split()[6]

    async def rounds() -> tuple[list[tuple[bytes, int]], list[int], dict[str, int], list[str]]:
        seen: list[tuple[bytes, int]] = []
        d = discovery_to(lambda sighting: seen.append((sighting.public_key, sighting.candidates[0][1])),  # SRV port
                         net.client())
        queries, serials = [], []
        for step in range(4):
            if step == 2:  # the same record again (what a member does every 40 s): the serial stays
                serials.append(await asyncio.to_thread(serial))
                await asyncio.to_thread(net.alice.run, publish, net.publisher(),
                                        node_record(PUB1, 51820, ["203.0.113.10"], []))
                serials.append(await asyncio.to_thread(serial))
            if step == 3:  # PUB1 moved to another port: the serial moves
                await asyncio.to_thread(net.alice.run, publish, net.publisher(),
                                        node_record(PUB1, 51999, ["203.0.113.10"], []))
                serials.append(await asyncio.to_thread(serial))
            await asyncio.sleep(dnssd.SERIAL_MAX_AGE + 0.1)  # the lookup rounds of a PollInterval are seconds apart
            before = knot_saw(router)[0]
            assert not await d.look_up_all(Retry("lab"), pubs)
            queries.append(knot_saw(router)[0] - before)
        return seen, queries, dict(d.counters), serials

    seen, queries, counters, serials = net.bob.run(rounds)
    print(f"UDP queries at Knot per round: {queries}; serials {serials}; counters {counters}")
    # 1: SRV+TXT each (no SOA: a first lookup waits for none); 2: SOA + SRV+TXT each (now under the
    # serial); 3: the SOA alone, though PUB1 was re-published; 4: SOA + SRV+TXT each (it moved)
    assert queries == [4, 5, 1, 5], queries
    assert serials[0] == serials[1] != serials[2], serials
    assert counters.get("dns-lookups-unchanged") == 2, counters
    assert len(seen) == 8 and seen[-2:] != seen[:2] and (PUB1, 51999) in seen[-2:], seen
