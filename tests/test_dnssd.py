"""wgdisco.io.dnssd: unicast DNS-SD client and RFC 2136 publisher.

Two kinds of tests:

* loopback: a small in-process DNS server on 127.0.0.1 that answers like wgsd v0.3
  (TTL 0, address and TXT in the additional section of the SRV answer, an A record
  in the answer to an AAAA query, names echoed in upper case), or misbehaves on
  purpose (silence, wrong IDs, garbage, truncation, SERVFAIL).  No root needed.
* netns: a real Knot (wgdisco/lab/knot.py) on a "WAN" link behind a router; the
  publisher and the browser are two other hosts on two other links.  Each client
  runs its asyncio loop on a thread that entered the host's namespace (setns(2)
  is per thread, and a socket stays in the namespace it was created in).
"""

from __future__ import annotations

import asyncio
import ctypes
import ipaddress
import logging
import os
import struct
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import dns.asyncresolver
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from wgdisco.errors import ConfigError, DecodeError, LocalError
from wgdisco.io import dnssd
from wgdisco.io.dnssd import (
    DnssdClient,
    DnssdPublisher,
    NameserverError,
    NameserverTimeout,
    RawInstance,
    Retry,
    TsigKey,
    parse_update_key,
)
from wgdisco.lab import Host, Lab
from wgdisco.lab.knot import Knot, start_knot, zone_name
from wgdisco.proto import keys, records

ip = ipaddress.ip_address
DOMAIN = "wg.example.net."
SERVICE = "_wireguard._udp.wg.example.net."

# wgsd's README keys.
PUB1 = keys.key_from_base64("xScVkH3fUGUv4RrJFfmcqm8rs3SEHr41km6+yffAHw4=")
PUB2 = keys.key_from_base64("syKB97XhGnvC+kynh2KqQJPXoOoOpx/HmpMRTc+r4js=")
LABEL1, LABEL2 = keys.key_to_base32(PUB1), keys.key_to_base32(PUB2)


# ==================================================================== parse_update_key, TsigKey


def test_parse_update_key() -> None:
    key = parse_update_key("hmac-sha256:wgdisco:c2VjcmV0LXNlY3JldC1zZWNyZXQ=\n")
    assert key == TsigKey("wgdisco.", b"secret-secret-secret", "hmac-sha256")
    assert parse_update_key("HMAC-SHA512:k.example.:AAAA").algorithm == "hmac-sha512"
    assert "secret" not in repr(key) and "c2Vj" not in repr(key)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("wgdisco:AAAA", "three fields"),
        ("hmac-sha256:a:b:c", "three fields"),
        ("hmac-md5:wgdisco:AAAA", "not one of"),
        ("hmac-sha256::AAAA", "name is empty"),
        ("hmac-sha256:a..b:AAAA", "not a valid DNS name"),
        ("hmac-sha256:wgdisco:not base64!", "not valid base64"),
        ("hmac-sha256:wgdisco:", "not valid base64|empty"),
    ],
)
def test_parse_update_key_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_update_key(text)


def test_bad_arguments() -> None:
    with pytest.raises(LocalError):
        DnssdClient(("ns.example.net", 53), DOMAIN)  # an address, not a name: no resolver involved
    with pytest.raises(LocalError):
        DnssdClient(("127.0.0.1", 0), DOMAIN)
    with pytest.raises(ConfigError, match="not inside the update zone"):
        DnssdPublisher(("127.0.0.1", 53), "wg.example.net", "example.org", TsigKey("k.", b"k"))
    with pytest.raises(LocalError):
        TsigKey("k.", b"k", "hmac-md5")


# ==================================================================== Retry


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def make_retry(ft: FakeTime, **kw) -> Retry:
    return Retry("DNS-SD lookup via 198.51.100.53:53", initial=0.5, maximum=4.0, rng=lambda: 0.5,
                 sleep=ft.sleep, clock=ft.clock, **kw)


def flaky(failures: int, error: Exception | None = None) -> Callable:
    state = {"calls": 0}

    async def op() -> str:
        state["calls"] += 1
        if state["calls"] <= failures:
            raise error or NameserverTimeout("no answer from nameserver 198.51.100.53:53")
        return "ok"

    op.state = state  # type: ignore[attr-defined]
    return op


@pytest.mark.asyncio
async def test_retry_backoff_logs_once_per_outage(caplog: pytest.LogCaptureFixture) -> None:
    ft = FakeTime()
    retry = make_retry(ft)
    caplog.set_level(logging.INFO, logger="wgdisco.io.dnssd")
    assert await retry.run(flaky(6)) == "ok"
    # 0.5 * 2**n capped at 4, each reduced by jitter 0.5 * rng() = 25 %.
    assert ft.sleeps == [0.375, 0.75, 1.5, 3.0, 3.0, 3.0]
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert lines == [
        ("WARNING", "DNS-SD lookup via 198.51.100.53:53: no answer from nameserver 198.51.100.53:53; "
                    "retrying with backoff"),
        ("INFO", "DNS-SD lookup via 198.51.100.53:53: working again after 11.6 s (6 failed attempts)"),
    ]
    assert not retry.down


@pytest.mark.asyncio
async def test_retry_outage_spans_calls(caplog: pytest.LogCaptureFixture) -> None:
    ft = FakeTime()
    retry = make_retry(ft)
    caplog.set_level(logging.INFO, logger="wgdisco.io.dnssd")
    for _ in range(3):  # a daemon calling every minute while the server is down
        with pytest.raises(NameserverTimeout):
            await retry.run(flaky(5), attempts=2)
    assert retry.down and retry.failures == 6
    assert await retry.run(flaky(0)) == "ok"
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO"]


@pytest.mark.asyncio
async def test_retry_passes_other_errors_through() -> None:
    ft = FakeTime()
    retry = make_retry(ft)
    op = flaky(1, ConfigError("TSIG key 'wgdisco.' was refused by 198.51.100.53:53 (BADSIG)"))
    with pytest.raises(ConfigError):
        await retry.run(op)
    assert op.state["calls"] == 1 and ft.sleeps == [] and not retry.down  # type: ignore[attr-defined]


def test_retry_jitter_bounds() -> None:
    retry = Retry("x", initial=1.0, maximum=30.0, jitter=0.5, rng=lambda: 0.999999)
    assert [round(retry.delay(n), 3) for n in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0]
    retry = Retry("x", initial=1.0, maximum=30.0, jitter=0.5, rng=lambda: 0.0)
    assert retry.delay(100000) == 30.0
    with pytest.raises(LocalError):
        Retry("x", initial=0)


# ==================================================================== a wgsd-like server on loopback


Handler = Callable[[dns.message.Message], "dns.message.Message | bytes | list[bytes] | None"]


class FakeDNS:
    """UDP + TCP DNS on 127.0.0.1 (one port); ``handler(query)`` returns the answer, raw
    bytes (sent as they are), a list of datagrams, or None (silence).  ``udp_limit``
    truncates UDP answers that are longer (TC set, sections emptied)."""

    def __init__(self, handler: Handler, udp_limit: int = 65535) -> None:
        self.handler = handler
        self.udp_limit = udp_limit
        self.seen: list[tuple[str, str, str]] = []  # (transport, qname, qtype)
        self.port = 0

    async def __aenter__(self) -> FakeDNS:
        loop = asyncio.get_running_loop()
        for _ in range(20):
            self.udp, _ = await loop.create_datagram_endpoint(lambda: _FakeUdp(self), local_addr=("127.0.0.1", 0))
            self.port = self.udp.get_extra_info("sockname")[1]
            try:
                self.tcp = await asyncio.start_server(self._tcp_client, "127.0.0.1", self.port)
                return self
            except OSError:
                self.udp.close()
        raise RuntimeError("no free port pair on 127.0.0.1")

    async def __aexit__(self, *exc: object) -> None:
        self.udp.close()
        self.tcp.close()

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    def answer(self, wire: bytes, transport: str) -> list[bytes]:
        query = dns.message.from_wire(wire)
        q = query.question[0]
        self.seen.append((transport, q.name.to_text().lower(), dns.rdatatype.to_text(q.rdtype)))
        out = self.handler(query)
        if out is None:
            return []
        if isinstance(out, bytes):
            return [out]
        if isinstance(out, list):
            return out
        raw = out.to_wire(max_size=65535)
        if transport == "udp" and len(raw) > self.udp_limit:
            out.answer, out.authority, out.additional = [], [], []
            out.flags |= dns.flags.TC
            raw = out.to_wire(max_size=65535)
        return [raw]

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (n,) = struct.unpack("!H", await reader.readexactly(2))
                for raw in self.answer(await reader.readexactly(n), "tcp"):
                    writer.write(struct.pack("!H", len(raw)) + raw)
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()


class _FakeUdp(asyncio.DatagramProtocol):
    def __init__(self, server: FakeDNS) -> None:
        self.server = server

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        for raw in self.server.answer(data, "udp"):
            self.transport.sendto(raw, addr)


@dataclass
class WgsdPeer:
    public: bytes
    endpoint: tuple[str, int]
    allowed: str


def wgsd(peers: list[WgsdPeer], zone: str = DOMAIN, *, additional: bool = True, upper: bool = True) -> Handler:
    """wgsd v0.3's ServeDNS, transcribed (jwhited/wgsd wgsd.go), plus upper-case echoing."""
    origin = dns.name.from_text(zone)
    service = dns.name.from_text(f"_wireguard._udp.{zone}")

    def owner(query: dns.message.Message) -> dns.name.Name:
        name = query.question[0].name
        return dns.name.from_text(name.to_text().upper()) if upper else name

    def host_rr(name: dns.name.Name, peer: WgsdPeer) -> dns.rrset.RRset:
        kind = "AAAA" if ":" in peer.endpoint[0] else "A"  # whatever was asked
        return dns.rrset.from_text(name, 0, "IN", kind, peer.endpoint[0])

    def txt_rr(name: dns.name.Name, peer: WgsdPeer) -> dns.rrset.RRset:
        return dns.rrset.from_text(name, 0, "IN", "TXT",
                                   f'"txtvers=1" "pub={keys.key_to_base64(peer.public)}" "allowed={peer.allowed}"')

    def handler(query: dns.message.Message) -> dns.message.Message:
        q = query.question[0]
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        name = owner(query)
        rel = q.name.relativize(origin) if q.name.is_subdomain(origin) else None
        peer = None
        if rel is not None and len(rel) == 3 and q.name.parent() == service:
            label = rel.labels[0].decode().upper()
            peer = next((p for p in peers if keys.key_to_base32(p.public).upper() == label), None)
        if q.name == service and q.rdtype == dns.rdatatype.PTR:
            for p in peers:
                response.answer.append(dns.rrset.from_text(
                    name, 0, "IN", "PTR", f"{keys.key_to_base32(p.public)}.{SERVICE}"))
        elif peer is not None and q.rdtype == dns.rdatatype.SRV:
            response.answer.append(dns.rrset.from_text(name, 0, "IN", "SRV", f"0 0 {peer.endpoint[1]} {name}"))
            if additional:
                response.additional += [host_rr(name, peer), txt_rr(name, peer)]
        elif peer is not None and q.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            response.answer.append(host_rr(name, peer))
        elif peer is not None and q.rdtype == dns.rdatatype.TXT:
            response.answer.append(txt_rr(name, peer))
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(dns.rrset.from_text(
                origin, 60, "IN", "SOA", f"ns1.{zone} postmaster.{zone} 1 86400 7200 3600000 60"))
        return response

    return handler


PEERS = [
    WgsdPeer(PUB1, ("203.0.113.1", 7777), "10.0.0.1/32"),
    WgsdPeer(PUB2, ("2001:db8::2", 8888), "10.0.0.2/32,fd00::2/128"),
]


@pytest.mark.asyncio
async def test_wgsd_lookup_uses_the_additional_section() -> None:
    async with FakeDNS(wgsd(PEERS)) as server:
        client = DnssdClient(server.address, DOMAIN)
        assert await client.browse() == [LABEL1, LABEL2]
        raw = await client.lookup(LABEL1)
        assert raw == RawInstance(7777, f"{LABEL1.upper()}.{SERVICE.upper()}", [ip("203.0.113.1")],
                                  [b"txtvers=1", b"pub=xScVkH3fUGUv4RrJFfmcqm8rs3SEHr41km6+yffAHw4=",
                                   b"allowed=10.0.0.1/32"], 0)
        # SRV and TXT only: the address came with the SRV answer.
        assert sorted(t for _, _, t in server.seen) == ["PTR", "SRV", "TXT"]
        sighting = records.record_from_dns(LABEL1, *raw[:4])
        assert sighting.public_key == PUB1
        assert sighting.candidates == [(ip("203.0.113.1"), 7777)]
        assert sighting.malformed == 0


@pytest.mark.asyncio
async def test_wgsd_without_additional_and_a_for_aaaa() -> None:
    # No additional section: A and AAAA are asked; wgsd answers both with the one host RR it has.
    async with FakeDNS(wgsd(PEERS, additional=False)) as server:
        raw = await DnssdClient(server.address, DOMAIN).lookup(LABEL2.upper())
        assert raw is not None
        assert raw.srv_port == 8888 and raw.addresses == [ip("2001:db8::2")] and raw.ttl == 0
        assert sorted(t for _, _, t in server.seen) == ["A", "AAAA", "SRV", "TXT"]
        sighting = records.record_from_dns(LABEL2.upper(), *raw[:4])
        assert sighting.candidates == [(ip("2001:db8::2"), 8888)]
        assert [str(n) for n in sighting.allowed] == ["10.0.0.2/32", "fd00::2/128"]


@pytest.mark.asyncio
async def test_nxdomain() -> None:
    async with FakeDNS(wgsd([])) as server:
        client = DnssdClient(server.address, DOMAIN)
        assert await client.lookup(LABEL1) is None
        assert await client.browse() == []


@pytest.mark.asyncio
async def test_truncated_answers_are_asked_again_over_tcp() -> None:
    peers = [WgsdPeer(keys.public_key(bytes([i]) * 32), ("203.0.113.9", 1000 + i), "") for i in range(1, 60)]
    async with FakeDNS(wgsd(peers), udp_limit=512) as server:
        labels = await DnssdClient(server.address, DOMAIN).browse()
        assert labels == [keys.key_to_base32(p.public) for p in peers]
        assert [t for t, _, _ in server.seen] == ["udp", "tcp"]


@pytest.mark.asyncio
async def test_stray_datagrams_are_ignored_and_lost_ones_resent() -> None:
    inner = wgsd(PEERS)
    copies: dict[str, int] = {}

    def handler(query: dns.message.Message):
        key = dns.rdatatype.to_text(query.question[0].rdtype)
        copies[key] = copies.get(key, 0) + 1
        if key == "SRV" and copies[key] < 3:
            return None  # the first two copies are "lost"
        good = inner(query)
        wrong_id = dns.message.from_wire(good.to_wire())
        wrong_id.id ^= 0x5555
        return [b"\x00" * 5, wrong_id.to_wire(), good.to_wire()[:20], good.to_wire()]

    async with FakeDNS(handler) as server:
        started = time.monotonic()
        raw = await DnssdClient(server.address, DOMAIN, timeout=3.0).lookup(LABEL1)
        assert raw is not None and raw.addresses == [ip("203.0.113.1")]
        assert copies["SRV"] == 3 and copies["TXT"] == 1
        assert time.monotonic() - started < 2.0  # resent after 0.4 s and 0.8 s more


@pytest.mark.asyncio
async def test_silent_server_times_out_within_the_timeout() -> None:
    async with FakeDNS(lambda q: None) as server:
        client = DnssdClient(server.address, DOMAIN, timeout=0.7)
        for call in (client.browse, lambda: client.lookup(LABEL1)):
            started = time.monotonic()
            with pytest.raises(NameserverTimeout, match=r"127\.0\.0\.1:\d+"):
                await call()
            assert 0.65 < time.monotonic() - started < 1.2


@pytest.mark.asyncio
async def test_error_rcodes() -> None:
    def rcode(code: int) -> Handler:
        def handler(query: dns.message.Message) -> dns.message.Message:
            response = dns.message.make_response(query)
            response.set_rcode(code)
            return response
        return handler

    async with FakeDNS(rcode(dns.rcode.SERVFAIL)) as server:
        with pytest.raises(NameserverError, match="SERVFAIL"):
            await DnssdClient(server.address, DOMAIN).browse()
    async with FakeDNS(rcode(dns.rcode.REFUSED)) as server:
        with pytest.raises(ConfigError, match=r"refused the query .*REFUSED.*wg\.example\.net"):
            await DnssdClient(server.address, DOMAIN).lookup(LABEL1)


@pytest.mark.asyncio
async def test_resolver_path() -> None:
    # nameserver=None goes through dns.asyncresolver; here a resolver configured by hand
    # (never the system's) that points at the loopback server.
    async with FakeDNS(wgsd(PEERS)) as server:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = server.port
        client = DnssdClient(None, DOMAIN, resolver=resolver)
        assert await client.browse() == [LABEL1, LABEL2]
        raw = await client.lookup(LABEL1)
        assert raw is not None and raw.addresses == [ip("203.0.113.1")] and raw.srv_port == 7777
        assert await client.lookup(keys.key_to_base32(bytes(32))) is None


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
    return Net(knot, InHost(alice), InHost(bob))


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

    async def retrying():
        client = net.client(timeout=0.5)
        retry = Retry(f"DNS-SD lookup via {client.where}", initial=0.1, maximum=0.4)
        return await retry.run(lambda: client.lookup(LABEL1)), retry

    pending = net.bob.submit(retrying)
    time.sleep(1.5)  # a few failed attempts
    assert not pending.done()
    net.knot.start()
    raw, retry = pending.result(30)
    assert raw.srv_port == 51820 and raw.addresses == [ip("203.0.113.10")]  # kept across the restart
    logged = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "wgdisco.io.dnssd"]
    assert [level for level, _ in logged] == ["WARNING", "INFO"], logged
    assert "198.51.100.53:53" in logged[0][1] and "working again" in logged[1][1]
    assert not retry.down
