"""wgdisco.io.dnssd: unicast DNS-SD client and RFC 2136 publisher, on loopback.

A small in-process DNS server on 127.0.0.1 that answers like wgsd v0.3
(TTL 0, address and TXT in the additional section of the SRV answer, an A record
in the answer to an AAAA query, names echoed in upper case), or misbehaves on
purpose (silence, wrong IDs, garbage, truncation, SERVFAIL).  No root needed.

Against a real Knot in the namespace lab: tests/netns/test_dnssd_lab.py.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import ipaddress
import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from wgdisco.errors import ConfigError, LocalError
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
    truncates UDP answers that are longer (TC set, sections emptied); an answer beyond one
    message (65,535 bytes) is truncated over UDP and SERVFAIL over TCP, as Knot 3.2 does."""

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
        try:
            raw = out.to_wire(max_size=65535)
        except dns.exception.TooBig:  # as Knot 3.2: truncated over UDP, SERVFAIL over TCP
            out.answer, out.authority, out.additional = [], [], []
            if transport == "tcp":
                out.set_rcode(dns.rcode.SERVFAIL)
            else:
                out.flags |= dns.flags.TC
            raw = out.to_wire()
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
        # The set does not fit one datagram: the zone's SOA serial is asked before the TCP read,
        # so the next browse can skip it when nothing changed (test_browse_*, below).
        assert [(t, q) for t, _, q in server.seen] == [("udp", "PTR"), ("udp", "SOA"), ("tcp", "PTR")]


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
async def test_a_lost_query_is_sent_again_after_0_4_s_then_at_doubling_intervals() -> None:
    """As STUN (RFC 8489 §6.2.1): a short first timeout, doubling, within the lookup's bound."""
    inner = wgsd(PEERS)
    arrivals: list[float] = []

    def handler(query: dns.message.Message):
        if dns.rdatatype.to_text(query.question[0].rdtype) != "SRV":
            return inner(query)
        arrivals.append(time.monotonic())
        return inner(query) if len(arrivals) == 3 else None

    async with FakeDNS(handler) as server:
        raw = await DnssdClient(server.address, DOMAIN, timeout=2.0).lookup(LABEL1)
    assert raw is not None and raw.srv_port == 7777
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert len(gaps) == 2
    assert dnssd.FIRST_RTO - 0.05 < gaps[0] < dnssd.FIRST_RTO + 0.25, gaps
    assert 2 * dnssd.FIRST_RTO - 0.05 < gaps[1] < 2 * dnssd.FIRST_RTO + 0.25, gaps


@pytest.mark.asyncio
async def test_the_system_resolver_path_also_survives_one_lost_datagram() -> None:
    """dnspython's own per-try timeout (resolv.conf's, 2 s) is the whole lookup: one lost query
    failed it. stub_resolver tries again after FIRST_RTO."""
    inner = wgsd(PEERS)
    copies: dict[tuple[str, int], int] = {}

    def lossy(query: dns.message.Message):
        key = (query.question[0].name.to_text().lower(), query.question[0].rdtype)
        copies[key] = copies.get(key, 0) + 1
        return None if copies[key] == 1 else inner(query)  # every first copy is lost

    async with FakeDNS(lossy) as server:
        for resolver, survives in ((dnssd.stub_resolver(configure=False), True),
                                   (dns.asyncresolver.Resolver(configure=False), False)):
            copies.clear()
            resolver.nameservers = ["127.0.0.1"]
            resolver.port = server.port
            client = DnssdClient(None, DOMAIN, resolver=resolver, timeout=2.0)
            started = time.monotonic()
            if survives:
                raw = await client.lookup(LABEL1)
                assert raw is not None and raw.srv_port == 7777
                assert time.monotonic() - started < 1.2
            else:
                with pytest.raises(NameserverTimeout):
                    await client.lookup(LABEL1)


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


def lines(text: str) -> list[str]:
    return sorted(" ".join(line.split()) for line in text.splitlines() if line.strip())


# ==================================================================== browse beyond one message (issue 26)


def member_label(i: int) -> str:
    return keys.key_to_base32(hashlib.blake2s(i.to_bytes(4, "big")).digest())


shard_of = functools.lru_cache(maxsize=None)(records.shard_label)


def labels_in_shard(shard: str, count: int) -> list[str]:
    """``count`` instance labels that all fall into ``shard`` (ground, as a vanity key would be)."""
    out, i = [], 1 << 20
    while len(out) < count:
        if records.shard_label(label := member_label(i)) == shard:
            out.append(label)
        i += 1
    return out


class Directory:
    """A zone as Knot serves it after members published with RFC 2136: the plain PTR set and the
    shards (RFC 6763 §7.1 subtypes), the SOA serial bumped by every change (FakeDNS answers what does
    not fit 65,535 bytes as Knot 3.2 does: TC over UDP, SERVFAIL over TCP). ``sharded=False``: the
    members are only in the plain set (publishers from before the shards)."""

    def __init__(self, labels: list[str], *, sharded: bool = True) -> None:
        self.origin = dns.name.from_text(DOMAIN)
        self.service = dns.name.from_text(SERVICE)
        self.serial = 1
        self.sharded = sharded
        self.labels: list[str] = []
        self.add(*labels)

    def add(self, *labels: str) -> None:
        self.labels += labels
        self.serial += 1

    def remove(self, *labels: str) -> None:
        self.labels = [x for x in self.labels if x not in labels]
        self.serial += 1

    def soa(self) -> dns.rrset.RRset:
        return dns.rrset.from_text(self.origin, 60, "IN", "SOA",
                                   f"ns.{DOMAIN} hostmaster.{DOMAIN} {self.serial} 3600 600 86400 60")

    def __call__(self, query: dns.message.Message) -> dns.message.Message:
        q = query.question[0]
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        members = None
        if q.rdtype == dns.rdatatype.PTR and q.name == self.service:
            members = self.labels
        elif q.rdtype == dns.rdatatype.PTR and q.name.parent().parent() == self.service and self.sharded:
            shard = q.name.labels[0].decode()
            members = [x for x in self.labels if shard_of(x) == shard]
        if members:
            response.answer.append(dns.rrset.from_text_list(
                q.name, 60, "IN", "PTR", [f"{x}.{SERVICE}" for x in members]))
        elif q.rdtype == dns.rdatatype.SOA and q.name == self.origin:
            response.answer.append(self.soa())
        else:  # NODATA or a name without records: the SOA in the authority section (RFC 2308 §3)
            response.authority.append(self.soa())
        return response


def asked(server: FakeDNS, since: int = 0) -> list[tuple[str, str, str]]:
    """(transport, plain|shard|zone, type) of the queries since ``since``, each once: a UDP query
    sent again after 0.4 s (this process's server is slow on a loaded machine) is not another
    query; within one browse no name and type is asked twice over one transport."""
    def kind(name: str) -> str:
        return "plain" if name == SERVICE else "shard" if name.endswith("._sub." + SERVICE) else name
    return [(t, kind(n), q) for t, n, q in dict.fromkeys(server.seen[since:])]


@pytest.mark.asyncio
async def test_a_small_mesh_is_browsed_with_one_ptr_query_as_before() -> None:
    zone = Directory([member_label(i) for i in range(3)])
    async with FakeDNS(zone, udp_limit=dnssd.EDNS_PAYLOAD) as server:
        client = DnssdClient(server.address, DOMAIN)
        for _ in range(2):
            n = len(server.seen)
            assert sorted(await client.browse()) == sorted(zone.labels)
            assert client.last_browse == dnssd.BrowseCost("plain", 1, client.last_browse.largest)
            # no SOA check: it would cost as much as the read it could spare
            assert asked(server, n) == [("udp", "plain", "PTR")]


@pytest.mark.asyncio
async def test_a_set_beyond_one_datagram_is_read_again_only_when_the_soa_serial_moved() -> None:
    zone = Directory([member_label(i) for i in range(100)])
    async with FakeDNS(zone, udp_limit=dnssd.EDNS_PAYLOAD) as server:
        client = DnssdClient(server.address, DOMAIN)
        assert sorted(await client.browse()) == sorted(zone.labels)
        assert asked(server) == [("udp", "plain", "PTR"), ("udp", "plain", "SOA"), ("tcp", "plain", "PTR")]
        assert client.last_browse.how == "plain" and client.last_browse.queries == 3
        assert client.last_browse.largest > 71 * 100

        n = len(server.seen)
        assert sorted(await client.browse()) == sorted(zone.labels)  # nothing changed: the labels of the last read
        assert asked(server, n) == [("udp", "plain", "SOA")]
        assert client.last_browse == dnssd.BrowseCost("unchanged", 1, client.last_browse.largest)
        assert client.last_browse.largest < 200

        zone.add(new := member_label(1000))
        n = len(server.seen)
        labels = await client.browse()
        assert new in labels and len(labels) == 101
        assert asked(server, n) == [("udp", "plain", "SOA"), ("tcp", "plain", "PTR")]  # known big: TCP at once


@pytest.mark.asyncio
async def test_beyond_one_message_the_shards_are_read() -> None:
    # 1,000 members (71 kB of PTRs: Knot cannot answer the plain set), 20 of them in shard _00,
    # which then does not fit one datagram.
    crowded = labels_in_shard("_00", 20)
    zone = Directory([member_label(i) for i in range(980)] + crowded)
    async with FakeDNS(zone, udp_limit=dnssd.EDNS_PAYLOAD) as server:
        client = DnssdClient(server.address, DOMAIN, browse_timeout=60.0)  # not a timing test
        labels = await client.browse()
        assert sorted(labels) == sorted(zone.labels) and len(labels) == 1000
        first = asked(server)
        assert first[:3] == [("udp", "plain", "PTR"), ("udp", "plain", "SOA"), ("tcp", "plain", "PTR")]
        shard_udp = [q for t, k, q in first if (t, k) == ("udp", "shard")]
        assert len(shard_udp) == records.SHARDS and first.count(("tcp", "shard", "PTR")) == 1  # _00
        cost = client.last_browse
        assert cost.how == "shards" and cost.queries == 3 + records.SHARDS + 1 and cost.largest < 65535

        n = len(server.seen)
        assert sorted(await client.browse()) == sorted(zone.labels)
        assert asked(server, n) == [("udp", "plain", "SOA")] and client.last_browse.how == "unchanged"

        zone.add(new := member_label(5000))
        n = len(server.seen)
        assert new in await client.browse()
        again = asked(server, n)
        # SOA, then every shard (no plain query); _00 over TCP at once, as it was truncated last time
        assert again[0] == ("udp", "plain", "SOA") and len(again) == 1 + records.SHARDS
        assert ("tcp", "shard", "PTR") in again and not [x for x in again if x[1] == "plain" and x[2] == "PTR"]

        # Down to 300 members: one more read through the shards, then the plain set again.
        zone.remove(*zone.labels[300:])
        assert len(await client.browse()) == 300 and client.last_browse.how == "shards"
        zone.add(member_label(6000))
        assert len(await client.browse()) == 301 and client.last_browse.how == "plain"


@pytest.mark.asyncio
async def test_a_big_plain_set_nobody_sharded_is_an_error_not_an_empty_mesh() -> None:
    zone = Directory([member_label(i) for i in range(1000)], sharded=False)
    async with FakeDNS(zone, udp_limit=dnssd.EDNS_PAYLOAD) as server:
        with pytest.raises(NameserverError, match="SERVFAIL"):
            await DnssdClient(server.address, DOMAIN, browse_timeout=60.0).browse()


@pytest.mark.asyncio
async def test_lookups_are_not_held_by_the_soa_check() -> None:
    # A known peer's SRV/TXT are asked every time, whatever the serial (a member's own lookups).
    handler = wgsd(PEERS)
    async with FakeDNS(handler) as server:
        client = DnssdClient(server.address, DOMAIN)
        for _ in range(2):
            n = len(server.seen)
            assert (await client.lookup(LABEL1)).srv_port == 7777
            assert sorted(q for _, _, q in asked(server, n)) == ["SRV", "TXT"]
