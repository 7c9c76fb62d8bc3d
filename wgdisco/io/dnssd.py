"""Unicast DNS-SD (RFC 6763) over plain DNS: browse and look up with queries, publish with
RFC 2136 UPDATE signed with TSIG (RFC 8945).  The record layout is wgsd's
(wgdisco/proto/records.py, docs/records.md); this shell only moves records.

Theory of operation
-------------------
``DnssdClient`` asks one nameserver (or, with ``nameserver=None``, the system
resolver through ``dns.asyncresolver``) for the PTR set of ``_wireguard._udp.<domain>``
(``browse``) and, per instance, for its SRV and TXT, then A/AAAA of the SRV target
(``lookup``).

A browse beyond one message (issue 26, docs/records.md "Shards"): while the plain PTR set
fits one UDP answer (≤ ``PTR_UDP_MAX`` instances) a browse is the one PTR query it always was.
When it does not, the zone's SOA serial is asked first (one small query; RFC 1035 §3.3.13, the
SOA comes in the answer or, for a name below the apex, in the authority section, RFC 2308 §3)
and, when it is the serial seen before the last full read, the last read's labels are returned
without reading again (``last_browse.how == "unchanged"``). Otherwise the plain set is read over
TCP while it holds at most ``PLAIN_BROWSE_MAX`` instances, else (or when the server cannot
answer it: SERVFAIL or TC over TCP, past 65,535 bytes) the ``SHARDS`` RFC 6763 §7.1 subtypes,
in parallel, each over UDP (TCP for a shard whose last answer was truncated).

Lookups skip what cannot have changed (issue 26): ``zone_serial`` gives the zone's SOA serial,
asked at most once per ``SERIAL_MAX_AGE`` (1 s) however many lookups want it, and the caller
(daemon/discovery.py) keeps each instance's last answer with the serial asked before it; while
the serial has not moved, the answer is the same one. A nameserver increments the serial with
every change to the zone (RFC 1996 §2, RFC 2136 §3.6) and not when an UPDATE changes nothing
(Knot 3.2, checked in the lab: a re-published identical record set leaves the serial as it was),
so an idle mesh's members no longer re-read every peer's SRV and TXT every PollInterval: one SOA
query a second at most instead of 2 per peer. Only against a named nameserver (``authoritative``):
a caching resolver may hand out an old SOA for its TTL.

Answers are read leniently because wgsd and hand-written zones differ from textbook
DNS-SD: TTL 0 everywhere, names echoed in upper case (name comparisons are
case-insensitive), the target's address in the additional section of the SRV answer
(used when present, so no extra query), and an A record in the answer to an AAAA
query (any A/AAAA at the target is taken, whatever was asked).  What comes back
is raw (``RawInstance``); wgdisco.proto.records judges it.

``DnssdPublisher`` sends one UPDATE per ``publish``: delete-then-add of the node's own
PTR value (other nodes' PTRs untouched), under the service name and under its shard, and
delete-rrset-then-add of its SRV, TXT and the target's A/AAAA.  ``withdraw`` sends the
deletes alone.  Both are idempotent, so a retransmitted UPDATE is harmless.

Transport: UDP on a connected socket (so an ICMP port-unreachable is seen at once),
retransmitted after 0.4 s and then at a doubling interval until the operation's deadline (as
STUN, RFC 8489 §6.2.1: a lost datagram costs one short wait, not the lookup); TCP when an
UPDATE exceeds 512 bytes or an answer comes back truncated (RFC 1035 §4.2.1, RFC 7766). With
the system resolver (no nameserver named) dnspython's per-try timeout is set to the same 0.4 s,
so it tries again within the lookup's bound instead of spending all of it on one datagram.
Datagrams that are not a response to our message are ignored, never fatal.

Errors: ``NameserverError`` (and ``NameserverTimeout``) for the transient kind —
timeout, unreachable, SERVFAIL — which ``Retry`` retries with exponential backoff and
jitter, logging one line when an outage starts and one when it ends.  A refused TSIG
key, REFUSED or NOTAUTH is a ``ConfigError`` naming the key, the zone and the server:
retrying cannot fix it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import NamedTuple, TypeVar

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.PTR
import dns.rdtypes.IN.SRV
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.resolver
import dns.tsig
import dns.update

from wgdisco.errors import AuthError, ConfigError, LocalError, WgdiscoError
from wgdisco.proto.records import PLAIN_BROWSE_MAX, PTR_UDP_MAX, service_name, shard_label, shard_names
from wgdisco.proto.tsig import TsigKey, parse_update_key

__all__ = [
    "BrowseCost",
    "DnssdClient",
    "DnssdPublisher",
    "NameserverError",
    "NameserverTimeout",
    "RawInstance",
    "Retry",
    "TsigKey",
    "parse_update_key",
    "stub_resolver",
]

log = logging.getLogger(__name__)

Nameserver = tuple[str, int]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
T = TypeVar("T")

EDNS_PAYLOAD = 1232  # the DNS flag day 2020 size: no IP fragmentation
UDP_LIMIT = 512  # RFC 1035 §4.2.1: larger UPDATEs go over TCP
FIRST_RTO = 0.4  # first UDP retransmission, doubling after (RFC 1536 §1 spirit)
MAX_CNAME = 8
SHARD_READS_IN_FLIGHT = 16  # shard queries of one browse in flight at once

TSIG_ALGORITHMS = {
    "hmac-sha1": dns.tsig.HMAC_SHA1,
    "hmac-sha224": dns.tsig.HMAC_SHA224,
    "hmac-sha256": dns.tsig.HMAC_SHA256,
    "hmac-sha384": dns.tsig.HMAC_SHA384,
    "hmac-sha512": dns.tsig.HMAC_SHA512,
}
_TSIG_ERRORS = {16: "BADSIG", 17: "BADKEY", 18: "BADTIME", 22: "BADTRUNC"}  # RFC 8945 §3


class NameserverError(WgdiscoError):
    """The nameserver gave no usable answer: unreachable, SERVFAIL, garbled.  Transient."""


class NameserverTimeout(NameserverError, TimeoutError):
    """No answer within the operation's timeout."""


def _where(nameserver: Nameserver) -> str:
    host, port = nameserver
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ------------------------------------------------------------------------------ TSIG keys
# (parsed in proto/tsig.py, which config.py uses; signed here with dnspython)


def dns_key(key: TsigKey) -> dns.tsig.Key:
    return dns.tsig.Key(key.name, key.secret, TSIG_ALGORITHMS[key.algorithm])


# ------------------------------------------------------------------------------ transport


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | Exception] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.queue.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        self.queue.put_nowait(exc)


class _Truncated(Exception):
    pass


class _Transport:
    """One nameserver, UDP with retransmission and TCP; responses matched to the request."""

    def __init__(self, nameserver: Nameserver) -> None:
        host, port = nameserver
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise LocalError(f"nameserver {host!r} must be an IP address") from None
        if not 0 < int(port) <= 65535:
            raise LocalError(f"nameserver port {port} is out of range 1..65535")
        self.host, self.port = host, int(port)
        self.where = _where((host, int(port)))
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET

    @staticmethod
    def _header(raw: bytes) -> tuple[int, int] | None:
        return struct.unpack("!HH", raw[:4]) if len(raw) >= 12 else None

    async def exchange(
        self,
        request: dns.message.Message,
        wire: bytes,
        deadline: float,
        parse: Callable[[bytes], dns.message.Message],
        *,
        tcp: bool = False,
        udp_only: bool = False,
    ) -> dns.message.Message:
        """Send ``wire`` (the rendered ``request``); the parsed response, or NameserverError.
        ``udp_only``: a truncated answer raises ``_Truncated`` instead of asking over TCP."""
        if not tcp:
            try:
                return await self._udp(request, wire, deadline, parse)
            except _Truncated:
                if udp_only:
                    raise
        return await self._tcp(request, wire, deadline, parse)

    def _accept(self, request: dns.message.Message, raw: bytes, parse: Callable) -> dns.message.Message | None:
        header = self._header(raw)
        if header is None or header[0] != request.id or not header[1] & dns.flags.QR:
            return None
        if header[1] & dns.flags.TC:
            raise _Truncated
        try:
            response = parse(raw)
        except dns.exception.DNSException:
            return None
        return response if request.is_response(response) else None

    async def _udp(
        self, request: dns.message.Message, wire: bytes, deadline: float, parse: Callable
    ) -> dns.message.Message:
        loop = asyncio.get_running_loop()
        try:
            transport, proto = await loop.create_datagram_endpoint(
                _UdpProtocol, remote_addr=(self.host, self.port), family=self.family
            )
        except OSError as e:
            raise NameserverError(f"cannot send to nameserver {self.where}: {e.strerror or e}") from None
        try:
            rto = FIRST_RTO
            resend = loop.time()
            while True:
                now = loop.time()
                if now >= deadline:
                    raise NameserverTimeout(f"no answer from nameserver {self.where}")
                if now >= resend:
                    transport.sendto(wire)
                    resend = now + rto
                    rto *= 2
                try:
                    item = await asyncio.wait_for(proto.queue.get(), min(resend, deadline) - now)
                except TimeoutError:
                    continue
                if isinstance(item, OSError):
                    raise NameserverError(f"nameserver {self.where} is unreachable: {item.strerror or item}")
                if isinstance(item, Exception):
                    raise NameserverError(f"nameserver {self.where}: {item}")
                if (response := self._accept(request, item, parse)) is not None:
                    return response
        finally:
            transport.close()

    async def _tcp(
        self, request: dns.message.Message, wire: bytes, deadline: float, parse: Callable
    ) -> dns.message.Message:
        writer = None
        try:
            async with asyncio.timeout_at(deadline):
                reader, writer = await asyncio.open_connection(self.host, self.port, family=self.family)
                writer.write(struct.pack("!H", len(wire)) + wire)
                await writer.drain()
                while True:
                    (length,) = struct.unpack("!H", await reader.readexactly(2))
                    raw = await reader.readexactly(length)
                    try:
                        response = self._accept(request, raw, parse)
                    except _Truncated:  # the answer does not fit even 65,535 bytes
                        raise NameserverError(f"nameserver {self.where} truncated its answer over TCP") from None
                    if response is not None:
                        return response
        except TimeoutError:
            raise NameserverTimeout(f"no answer from nameserver {self.where} over TCP") from None
        except asyncio.IncompleteReadError:
            raise NameserverError(f"nameserver {self.where} closed the TCP connection without an answer") from None
        except OSError as e:
            raise NameserverError(f"nameserver {self.where} is unreachable over TCP: {e.strerror or e}") from None
        finally:
            if writer is not None:
                writer.close()


# ------------------------------------------------------------------------------ client


class RawInstance(NamedTuple):
    """What the DNS holds for one instance, unjudged (records.record_from_dns judges it).

    ``srv_port``/``srv_target`` are None without an SRV record; ``ttl`` is the
    smallest TTL among the records used (0 is legal and common: wgsd).
    """

    srv_port: int | None
    srv_target: str | None
    addresses: list[IPAddress]
    txt: list[bytes]
    ttl: int


class BrowseCost(NamedTuple):
    """What one ``browse`` did: ``how`` it read ("plain", "shards", or "unchanged": the SOA serial
    had not moved and the last labels were returned), the ``queries`` it sent (a truncated UDP
    answer asked again over TCP counts twice), and the size of its ``largest`` answer in bytes."""

    how: str
    queries: int
    largest: int


SERIAL_MAX_AGE = 1.0  # seconds a zone serial asked for lookups is used for (zone_serial)


class _Tally:
    """Queries sent and the largest answer seen, within one browse."""

    def __init__(self) -> None:
        self.queries = 0
        self.largest = 0

    def parse(self, raw: bytes) -> dns.message.Message:
        self.largest = max(self.largest, len(raw))
        return dns.message.from_wire(raw)


def _chase(msg: dns.message.Message, name: dns.name.Name, rdtypes: Iterable[int], section: str = "answer"):
    """RRsets of ``rdtypes`` at ``name`` in a section, following CNAMEs within the message."""
    rrsets = getattr(msg, section)
    wanted = set(rdtypes)
    for _ in range(MAX_CNAME):
        found = [r for r in rrsets if r.name == name and r.rdtype in wanted and r.rdclass == dns.rdataclass.IN]
        if found:
            return found
        cname = [r for r in rrsets if r.name == name and r.rdtype == dns.rdatatype.CNAME]
        if not cname:
            return []
        name = cname[0][0].target
    return []


async def _all(*coros: Awaitable[T]) -> list[T]:
    """``gather``, but the others are cancelled as soon as one fails."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()


def stub_resolver(configure: bool = True) -> dns.asyncresolver.Resolver:
    """The system resolver (``/etc/resolv.conf``; ``configure=False``: none, for tests), trying
    again after FIRST_RTO: dnspython's per-try timeout is resolv.conf's, 2 s by default, the
    whole of a lookup's bound, so one lost datagram would fail the lookup."""
    resolver = dns.asyncresolver.Resolver(configure=configure)
    resolver.timeout = FIRST_RTO
    return resolver


def _label_name(label: str, service: dns.name.Name) -> dns.name.Name:
    if not label or "." in label or len(label) > 63 or not label.isascii():
        raise LocalError(f"instance label {label!r} must be one ASCII DNS label")
    return dns.name.Name([label.encode("ascii")]).concatenate(service)


class DnssdClient:
    """Browse and look up ``_wireguard._udp.<domain>`` at one nameserver.

    ``nameserver=None`` uses the system resolver configuration (``resolver`` may
    supply a configured ``dns.asyncresolver.Resolver`` instead).  ``timeout``
    bounds each ``lookup``/``browse`` call as a whole.
    """

    def __init__(
        self,
        nameserver: Nameserver | None,
        domain: str,
        *,
        timeout: float = 2.0,
        browse_timeout: float | None = None,
        resolver: dns.asyncresolver.Resolver | None = None,
    ) -> None:
        self.service = dns.name.from_text(service_name(domain))
        self.shards = [dns.name.from_text(n) for n in shard_names(domain)]
        self.timeout = timeout
        self.browse_timeout = timeout if browse_timeout is None else browse_timeout
        # What the last full read saw (the SOA check and the plain/shards choice; issue 26):
        self._serial: int | None = None  # the zone's SOA serial asked before it, if it was asked
        self._labels: list[str] = []
        self._big = False  # it took more than one UDP answer: the SOA check pays off
        self._sharded = False  # read the shards, not the plain set
        self._tcp_shards: set[int] = set()  # shards whose last UDP answer was truncated
        self.last_browse: BrowseCost | None = None
        self._seen_serial: tuple[float, int | None] | None = None  # (asked at, serial) for lookups
        self._serial_lock = asyncio.Lock()
        self._transport = _Transport(nameserver) if nameserver is not None else None
        self._resolver = resolver
        self.where = self._transport.where if self._transport else "the system resolver"

    def __repr__(self) -> str:
        return f"<DnssdClient {self.service} via {self.where}>"

    async def browse(self) -> list[str]:
        """Instance labels under the service name (lowercase, deduplicated, in answer order; from
        the shards, in shard order, on a big mesh). ``last_browse`` says what it cost."""
        return await self._bounded(self._browse, self.browse_timeout)

    async def lookup(self, instance_label: str) -> RawInstance | None:
        """SRV, TXT and target addresses of one instance; None if the name does not exist."""
        name = _label_name(instance_label, self.service)
        return await self._bounded(lambda deadline: self._lookup(name, deadline))

    @property
    def authoritative(self) -> bool:
        """Asking a named nameserver (its SOA serial is the zone's own), not the system resolver."""
        return self._transport is not None

    def recent_serial(self) -> int | None:
        """The serial ``zone_serial`` asked within ``SERIAL_MAX_AGE``, without asking (None: none)."""
        seen = self._recent()
        return None if seen is None else seen[1]

    async def zone_serial(self) -> int | None:
        """The zone's SOA serial as asked at most ``SERIAL_MAX_AGE`` ago (one query for all the
        lookups of that second); None when the zone has no SOA at the service name's place.
        Raises as a lookup does (NameserverError, NameserverTimeout)."""
        async with self._serial_lock:
            if (seen := self._recent()) is not None:
                return seen[1]
            asked = asyncio.get_running_loop().time()  # a change after this moment is not hidden
            serial = await self._bounded(lambda deadline: self._zone_serial(deadline, _Tally()))
            self._seen_serial = (asked, serial)
            return serial

    def _recent(self) -> tuple[float, int | None] | None:
        """(asked at, serial) of the last serial asked, if within ``SERIAL_MAX_AGE``."""
        seen = self._seen_serial
        if seen is not None and asyncio.get_running_loop().time() - seen[0] <= SERIAL_MAX_AGE:
            return seen
        return None

    async def _browse(self, deadline: float) -> list[str]:
        tally = _Tally()
        serial = None
        big = self._big
        if big:  # the last read cost more than one datagram: one SOA query may spare this one
            serial = await self._zone_serial(deadline, tally)
            if serial is not None and serial == self._serial:
                self.last_browse = BrowseCost("unchanged", tally.queries, tally.largest)
                return list(self._labels)
        labels: list[str] | None = None
        plain_error: NameserverError | None = None
        if not self._sharded:
            msg = None
            try:
                msg = await self._ask(self.service, dns.rdatatype.PTR, deadline, tally, tcp=big)
            except _Truncated:
                big = True
                if serial is None:  # asked before the read, so no change after it is missed
                    serial = await self._zone_serial(deadline, tally)
                try:
                    msg = await self._ask(self.service, dns.rdatatype.PTR, deadline, tally, tcp=True)
                except NameserverTimeout:
                    raise
                except NameserverError as e:  # past 65,535 bytes: Knot says SERVFAIL
                    plain_error = e
            except NameserverTimeout:
                raise
            except NameserverError as e:
                if not big:
                    raise
                plain_error = e
            if msg is not None:
                labels = self._instances(msg, self.service)
                big = big or len(labels) > PTR_UDP_MAX
        how = "plain"
        if labels is None:
            how, big = "shards", True
            if serial is None:
                serial = await self._zone_serial(deadline, tally)
            labels = await self._read_shards(deadline, tally)
            if plain_error is not None and not labels:
                raise plain_error  # nothing in the shards either: the plain set's error stands
        # Plain while it is answerable with room to spare; back from the shards with hysteresis.
        self._sharded = len(labels) > (PLAIN_BROWSE_MAX if how == "plain" else PLAIN_BROWSE_MAX // 2)
        self._serial, self._labels, self._big = serial, labels, big
        self.last_browse = BrowseCost(how, tally.queries, tally.largest)
        return list(labels)

    def _instances(self, msg: dns.message.Message, owner: dns.name.Name) -> list[str]:
        """Instance labels a PTR answer at ``owner`` names: one label under the service name
        (RFC 6763 §7.1: a subtype's PTRs name the same instances as the plain set's)."""
        labels: dict[str, None] = {}  # deduplicated in answer order
        for rrset in _chase(msg, owner, [dns.rdatatype.PTR]):
            for rdata in rrset:
                target = rdata.target
                if len(target) != len(self.service) + 1 or not target.is_subdomain(self.service):
                    continue  # not an instance of this service
                try:
                    label = target.labels[0].decode("ascii").lower()
                except UnicodeDecodeError:
                    continue
                labels[label] = None
        return list(labels)

    async def _read_shards(self, deadline: float, tally: _Tally) -> list[str]:
        """Every shard's PTR set, SHARD_READS_IN_FLIGHT at a time; labels in shard order."""
        slots = asyncio.Semaphore(SHARD_READS_IN_FLIGHT)

        async def one(n: int) -> list[str]:
            async with slots:
                name = self.shards[n]
                try:
                    found = self._instances(
                        await self._ask(name, dns.rdatatype.PTR, deadline, tally, tcp=n in self._tcp_shards), name)
                    if n in self._tcp_shards and len(found) <= PTR_UDP_MAX // 2:
                        self._tcp_shards.discard(n)  # it shrank: UDP again next time
                    return found
                except _Truncated:
                    self._tcp_shards.add(n)
                    return self._instances(await self._ask(name, dns.rdatatype.PTR, deadline, tally, tcp=True), name)

        # each answer parsed once; one label once, where its first shard puts it
        return list(dict.fromkeys(label for found in await _all(*(one(n) for n in range(len(self.shards))))
                                  for label in found))

    async def _zone_serial(self, deadline: float, tally: _Tally) -> int | None:
        """The SOA serial of the zone holding the service name (RFC 1035 §3.3.13): in the answer
        at a zone apex, else in the authority section (RFC 2308 §3); None when there is none."""
        msg = await self._ask(self.service, dns.rdatatype.SOA, deadline, tally)
        for section in (msg.answer, msg.authority):
            for rrset in section:
                if rrset.rdtype == dns.rdatatype.SOA and self.service.is_subdomain(rrset.name):
                    return rrset[0].serial
        return None

    async def _ask(self, qname: dns.name.Name, rdtype: int, deadline: float, tally: _Tally, *,
                   tcp: bool = False) -> dns.message.Message:
        """One query of a browse, counted: over TCP, or over UDP raising ``_Truncated`` (the
        browse decides what a truncated answer means)."""
        tally.queries += 1
        return await self._query(qname, rdtype, deadline, via="tcp" if tcp else "udp", parse=tally.parse)

    async def _lookup(self, name: dns.name.Name, deadline: float) -> RawInstance | None:
        srv_msg, txt_msg = await _all(
            self._query(name, dns.rdatatype.SRV, deadline),
            self._query(name, dns.rdatatype.TXT, deadline),
        )
        srv_sets = _chase(srv_msg, name, [dns.rdatatype.SRV])
        txt_sets = _chase(txt_msg, name, [dns.rdatatype.TXT])
        if not srv_sets and not txt_sets:
            return None  # NXDOMAIN, or a name with neither record
        ttls = [r.ttl for r in srv_sets + txt_sets]
        # One TXT record per instance (RFC 6763 §6); if there are several, their strings in wire order.
        txt = [bytes(s) for r in txt_sets for rdata in r for s in rdata.strings]

        srv = None
        if srv_sets:
            # RFC 2782: lowest priority first, then the heaviest; no random pick, it is only a hint.
            srv = min((rd for r in srv_sets for rd in r),
                      key=lambda rd: (rd.priority, -rd.weight, rd.port, rd.target.to_text()))
        addresses: list[IPAddress] = []
        if srv is not None and srv.target != dns.name.root:  # "." = no service (RFC 2782)
            types = [dns.rdatatype.A, dns.rdatatype.AAAA]
            found = _chase(srv_msg, srv.target, types, "additional")
            if not found:
                a_msg, aaaa_msg = await _all(
                    self._query(srv.target, dns.rdatatype.A, deadline),
                    self._query(srv.target, dns.rdatatype.AAAA, deadline),
                )
                found = _chase(a_msg, srv.target, types) + _chase(aaaa_msg, srv.target, types)
            for rrset in found:
                ttls.append(rrset.ttl)
                for rd in rrset:
                    addr = ipaddress.ip_address(rd.address)
                    if addr not in addresses:
                        addresses.append(addr)
        return RawInstance(
            srv_port=srv.port if srv is not None else None,
            srv_target=srv.target.to_text() if srv is not None else None,
            addresses=addresses,
            txt=txt,
            ttl=min(ttls),
        )

    # -- plumbing

    async def _bounded(self, fn: Callable[[float], Awaitable[T]], timeout: float | None = None) -> T:
        """``fn(deadline)`` within ``timeout`` (``self.timeout``); NameserverTimeout when it runs out."""
        timeout = self.timeout if timeout is None else timeout
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            async with asyncio.timeout_at(deadline):
                return await fn(deadline)
        except NameserverTimeout:
            raise
        except TimeoutError:
            raise NameserverTimeout(f"no answer from {self.where} within {timeout:g} s") from None

    async def _query(self, qname: dns.name.Name, rdtype: int, deadline: float, *, via: str | None = None,
                     parse: Callable[[bytes], dns.message.Message] = dns.message.from_wire) -> dns.message.Message:
        """One question; the response (NOERROR or NXDOMAIN) or an error for any other rcode.
        ``via``: None (UDP, then TCP when truncated), "udp" (``_Truncated`` when truncated), "tcp"."""
        if self._transport is None:
            return await self._resolve(qname, rdtype, deadline)
        tcp, udp_only = via == "tcp", via == "udp"
        query = dns.message.make_query(qname, rdtype, use_edns=0, payload=EDNS_PAYLOAD)
        response = await self._transport.exchange(query, query.to_wire(), deadline, parse, tcp=tcp, udp_only=udp_only)
        if response.rcode() == dns.rcode.FORMERR and query.edns >= 0:
            # An old server that does not speak EDNS (RFC 6891 §7): ask again without it.
            query = dns.message.make_query(qname, rdtype, use_edns=False)
            response = await self._transport.exchange(query, query.to_wire(), deadline, parse, tcp=tcp,
                                                      udp_only=udp_only)
        return self._check_rcode(response, qname, rdtype)

    def _check_rcode(self, response: dns.message.Message, qname: dns.name.Name, rdtype: int) -> dns.message.Message:
        rcode = response.rcode()
        if rcode in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            return response
        what = f"{qname} {dns.rdatatype.to_text(rdtype)}"
        if rcode in (dns.rcode.REFUSED, dns.rcode.NOTAUTH):
            raise ConfigError(f"nameserver {self.where} refused the query {what} "
                              f"({dns.rcode.to_text(rcode)}): does it serve {self.service.parent().parent()}?")
        raise NameserverError(f"nameserver {self.where} answered {what} with {dns.rcode.to_text(rcode)}")

    async def _resolve(self, qname: dns.name.Name, rdtype: int, deadline: float) -> dns.message.Message:
        if self._resolver is None:
            self._resolver = stub_resolver()
        remaining = max(0.01, deadline - asyncio.get_running_loop().time())
        try:
            answer = await self._resolver.resolve(qname, rdtype, raise_on_no_answer=False, lifetime=remaining,
                                                  search=False)
        except dns.resolver.NXDOMAIN as e:
            response = e.responses().get(qname)
            if response is None:
                response = dns.message.make_response(dns.message.make_query(qname, rdtype))
                response.set_rcode(dns.rcode.NXDOMAIN)
            return response
        except dns.resolver.LifetimeTimeout:
            raise NameserverTimeout(f"no answer from the system resolver for {qname}") from None
        except dns.resolver.NoNameservers as e:
            raise NameserverError(f"no nameserver could answer {qname}: {e}") from None
        except dns.exception.DNSException as e:
            raise NameserverError(f"resolving {qname}: {e}") from None
        return answer.response


# ------------------------------------------------------------------------------ publisher


class DnssdPublisher:
    """Publish this node's record set in ``zone`` at its primary ``nameserver`` (RFC 2136 + TSIG)."""

    def __init__(self, nameserver: Nameserver, domain: str, zone: str, key: TsigKey, *, timeout: float = 5.0) -> None:
        if nameserver is None:
            raise LocalError("publishing needs the address of the zone's primary nameserver")
        self.zone = dns.name.from_text(zone)
        self.service = dns.name.from_text(service_name(domain))
        if not self.service.is_subdomain(self.zone):
            raise ConfigError(f"DNS-SD domain {domain!r} is not inside the update zone {self.zone}")
        self.key = key
        self.timeout = timeout
        self._transport = _Transport(nameserver)
        self.where = self._transport.where

    def __repr__(self) -> str:
        return f"<DnssdPublisher {self.service} in {self.zone} via {self.where} key {self.key.name}>"

    async def publish(
        self,
        instance_label: str,
        port: int,
        target: str,
        addresses: Sequence[IPAddress | str],
        txt_strings: Sequence[bytes],
        ttl: int = 60,
    ) -> None:
        """Replace this instance's PTR value, SRV, TXT and the target's A/AAAA in one UPDATE."""
        instance = _label_name(instance_label, self.service)
        target_name = dns.name.from_text(target)
        if not 0 <= port <= 65535:
            raise LocalError(f"SRV port {port} is out of range")
        if not 0 <= ttl <= 0x7FFFFFFF:
            raise LocalError(f"TTL {ttl} is out of range")
        addrs = [ipaddress.ip_address(a) for a in addresses]
        in_zone = target_name.is_subdomain(self.zone)
        if addrs and not in_zone:
            raise LocalError(f"SRV target {target_name} is outside zone {self.zone}: cannot publish its addresses")
        strings = [bytes(s) for s in txt_strings] or [b""]  # RFC 6763 §6.1: an empty TXT is one empty string
        IN = dns.rdataclass.IN
        update = self._update()
        ptr = dns.rdtypes.ANY.PTR.PTR(IN, dns.rdatatype.PTR, instance)
        for owner in self._ptr_owners(instance_label):
            update.delete(owner, ptr)
            update.add(owner, ttl, ptr)
        update.delete(instance, dns.rdatatype.SRV)
        update.add(instance, ttl, dns.rdtypes.IN.SRV.SRV(IN, dns.rdatatype.SRV, 0, 0, port, target_name))
        update.delete(instance, dns.rdatatype.TXT)
        update.add(instance, ttl, dns.rdtypes.ANY.TXT.TXT(IN, dns.rdatatype.TXT, strings))
        if in_zone:
            update.delete(target_name, dns.rdatatype.A)
            update.delete(target_name, dns.rdatatype.AAAA)
            v4 = [dns.rdtypes.IN.A.A(IN, dns.rdatatype.A, str(a)) for a in addrs if a.version == 4]
            v6 = [dns.rdtypes.IN.AAAA.AAAA(IN, dns.rdatatype.AAAA, str(a)) for a in addrs if a.version == 6]
            if v4:
                update.add(target_name, ttl, *v4)
            if v6:
                update.add(target_name, ttl, *v6)
        await self._send(update, f"publish {instance}")

    async def withdraw(self, instance_label: str, target: str | None = None) -> None:
        """Delete this instance's PTR value, SRV, TXT and (target in zone) the target's A/AAAA.

        ``target`` defaults to the instance name (wgsd layout).
        """
        instance = _label_name(instance_label, self.service)
        target_name = dns.name.from_text(target) if target else instance
        update = self._update()
        ptr = dns.rdtypes.ANY.PTR.PTR(dns.rdataclass.IN, dns.rdatatype.PTR, instance)
        for owner in self._ptr_owners(instance_label):
            update.delete(owner, ptr)
        update.delete(instance, dns.rdatatype.SRV)
        update.delete(instance, dns.rdatatype.TXT)
        if target_name.is_subdomain(self.zone):
            update.delete(target_name, dns.rdatatype.A)
            update.delete(target_name, dns.rdatatype.AAAA)
        await self._send(update, f"withdraw {instance}")

    # -- plumbing

    def _ptr_owners(self, instance_label: str) -> tuple[dns.name.Name, dns.name.Name]:
        """Where the instance's PTR value goes: the plain set and its shard (RFC 6763 §7.1)."""
        return self.service, dns.name.from_text(f"{shard_label(instance_label)}._sub", self.service)

    def _update(self) -> dns.update.UpdateMessage:
        return dns.update.UpdateMessage(self.zone, keyring=dns_key(self.key))

    async def _send(self, update: dns.update.UpdateMessage, what: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        wire = update.to_wire()  # signs; update.mac is the MAC of exactly this wire
        try:
            response = await self._transport.exchange(
                update, wire, deadline, lambda raw: dns.message.from_wire(raw, keyring=False),
                tcp=len(wire) > UDP_LIMIT,
            )
        except NameserverTimeout:
            raise NameserverTimeout(f"{what}: no answer from {self.where} within {self.timeout:g} s") from None
        self._check_response(update, response, what)

    def _check_response(self, update: dns.update.UpdateMessage, response: dns.message.Message, what: str) -> None:
        rcode = response.rcode()
        key = f"TSIG key '{self.key.name}'"
        tsig_error = response.tsig_error if response.had_tsig else None
        if tsig_error:
            name = _TSIG_ERRORS.get(tsig_error, f"TSIG error {tsig_error}")
            hint = {
                "BADSIG": "the server has a different secret for this key name",
                # Knot also answers BADKEY for a key it knows but whose ACL does not cover the zone.
                "BADKEY": f"the server does not know this key, or does not let it update zone '{self.zone}'",
                "BADTIME": "the clocks of this host and the server differ by more than the fudge (300 s)",
            }.get(name)
            raise ConfigError(f"{key} was refused by {self.where} ({name})" + (f": {hint}" if hint else ""))
        if rcode == dns.rcode.NOTAUTH:
            raise ConfigError(f"{self.where} is not authoritative for zone '{self.zone}' "
                              f"or does not accept {key} (NOTAUTH)")
        if rcode == dns.rcode.REFUSED:
            raise ConfigError(f"{self.where} refused the update of zone '{self.zone}' "
                              f"signed with {key} (REFUSED): is the key allowed to update it?")
        if rcode == dns.rcode.SERVFAIL:
            raise NameserverError(f"{what}: {self.where} answered SERVFAIL")
        if rcode != dns.rcode.NOERROR:
            raise ConfigError(f"{what}: {self.where} rejected the update of zone '{self.zone}' "
                              f"({dns.rcode.to_text(rcode)})")
        # Success claimed: believe it only with a valid signature of our key (RFC 8945 §5.3).
        try:
            dns.message.from_wire(response.wire, keyring=dns_key(self.key), request_mac=update.mac)
        except dns.exception.DNSException as e:
            raise AuthError(f"{what}: the answer from {self.where} is not signed with {key}: "
                            f"{e.__class__.__name__} {e}") from None


# ------------------------------------------------------------------------------ retry


class Retry:
    """Retry an operation on transient errors with exponential backoff and jitter.

    The delay before retry n (0-based) is ``min(maximum, initial * factor**n)``
    reduced by a random fraction up to ``jitter`` (so peers do not retry in step).
    The object remembers an outage across calls: the first failure logs one warning,
    the first success afterwards logs one info line; failures in between are silent.
    ``rng``, ``sleep`` and ``clock`` are parameters for tests.
    """

    def __init__(
        self,
        what: str,
        *,
        initial: float = 0.5,
        maximum: float = 30.0,
        factor: float = 2.0,
        jitter: float = 0.5,
        transient: tuple[type[BaseException], ...] = (NameserverError,),
        rng: Callable[[], float] = random.random,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger = log,
    ) -> None:
        if not (0 < initial <= maximum and factor >= 1 and 0 <= jitter < 1):
            raise LocalError("Retry wants 0 < initial <= maximum, factor >= 1, 0 <= jitter < 1")
        self.what = what
        self.initial, self.maximum, self.factor, self.jitter = initial, maximum, factor, jitter
        self.transient = transient
        self._rng, self._sleep, self._clock, self._log = rng, sleep, clock, logger
        self.down_since: float | None = None
        self.failures = 0

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def delay(self, attempt: int) -> float:
        base = min(self.maximum, self.initial * self.factor ** min(attempt, 64))
        return base * (1.0 - self.jitter * self._rng())

    async def run(self, op: Callable[[], Awaitable[T]], *, attempts: int | None = None) -> T:
        """``await op()`` until it succeeds; after ``attempts`` failures the last error is raised."""
        if attempts is not None and attempts < 1:
            raise LocalError("attempts must be at least 1")
        n = 0
        while True:
            try:
                result = await op()
            except self.transient as e:
                self._failed(e)
                n += 1
                if attempts is not None and n >= attempts:
                    raise
                await self._sleep(self.delay(n - 1))
                continue
            self._recovered()
            return result

    def _failed(self, error: BaseException) -> None:
        self.failures += 1
        if self.down_since is None:
            self.down_since = self._clock()
            self._log.warning("%s: %s; retrying with backoff", self.what, error)

    def _recovered(self) -> None:
        if self.down_since is not None:
            self._log.info("%s: working again after %.1f s (%d failed attempts)",
                           self.what, self._clock() - self.down_since, self.failures)
        self.down_since = None
        self.failures = 0
