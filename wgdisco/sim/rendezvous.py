"""Where the simulated mesh's records go (issue 26): an mDNS-like directory per LAN and one
unicast DNS-SD nameserver that counts queries and the sizes of its answers.

``LanDirectory``: a record change is announced on the LAN (RFC 6762 §8.3: at least twice, one
second apart; counted as two multicast messages) and reaches every other member of that LAN as
a sighting from "mdns" after one network latency. zeroconf's cache-refresh queries are not
modelled.

``Nameserver``: the zone the members publish to with RFC 2136 UPDATEs and browse as the daemon
does (daemon/discovery.py, io/dnssd.py):

- a record change is one UPDATE (PTR value, SRV, TXT, the target's A), visible after one round
  trip, and moves the zone's SOA serial; the daemon also re-publishes every ``DNS_TTL * 2/3`` =
  40 s (``republish``), which changes nothing and leaves the serial (as Knot does);
- ``LookupWanted(keys)``: when a key has a kept answer, the zone's SOA serial first (one query,
  reused for 1 s: ``dnssd.SERIAL_MAX_AGE``; first lookups do not wait for one); a key whose last
  answer came under that serial gets it again with no query; others one SRV and one TXT query each (the target's A comes in the SRV answer's
  additional section, as Knot sends it), at most ``parallel`` keys in flight, each batch one
  round trip; the answer becomes ``receive_sighting(.., "dns", ..)``;
- ``BrowseWanted``: the browse io/dnssd.py makes (``Nameserver.browse``): one PTR query of
  ``_wireguard._udp.<domain>`` while the set fits one UDP answer; beyond, an SOA query first (an
  unchanged serial: nothing read again), then the plain set or its 256 shard subtypes; the
  labels go to ``browse_found``.

Answer sizes are the wire sizes of the real messages (dnspython, name compression), cached per
record version. An answer larger than the EDNS payload the client offers (1232, io/dnssd.py) is
truncated and asked again over TCP (RFC 7766; counted as a second query); one larger than a DNS
message can be (65,535 bytes, RFC 1035 §4.2.2) cannot be given at all: the query fails (the
daemon counts a lookup error and asks again on its schedule). ``max_message`` can lift that limit
to see what the rest of the protocol would do.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.PTR
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rdtypes.IN.SRV

from wgdisco.proto import records
from wgdisco.proto.events import BrowseWanted, LookupWanted

__all__ = ["LanDirectory", "Nameserver", "Rendezvous", "EDNS_PAYLOAD", "MAX_MESSAGE", "DNS_TTL"]

EDNS_PAYLOAD = 1232  # io/dnssd.py: the DNS flag day 2020 size
MAX_MESSAGE = 65535  # RFC 1035 §4.2.2: a message over TCP has a 16-bit length
SOA_ANSWER = 140  # bytes: the SOA serial check's answer (bench/dns_browse.py: 137–189 at Knot)
SHARD_NAME_EXTRA = 18  # a shard's PTR answer over the plain one's: "_xx._sub." in question and owner
DNS_TTL = 60  # daemon/discovery.py: our unicast records' TTL, re-published at 2/3 of it
MAX_PARALLEL_LOOKUPS = 16  # daemon/discovery.py
SERIAL_MAX_AGE = 1.0  # io/dnssd.py: a zone serial asked for lookups is used for a second
IN = dns.rdataclass.IN


class Nameserver:
    """A unicast DNS-SD zone in memory, with the counters a nameserver's operator would read."""

    def __init__(self, domain: str = "example.net", *, max_message: int = MAX_MESSAGE) -> None:
        self.domain = domain.rstrip(".") + "."
        self.service = dns.name.from_text(records.service_name(self.domain))
        self.max_message = max_message
        self.zone: dict[bytes, records.ServiceRecord] = {}  # key -> its published record
        self.ptr_version = 0  # bumped when the PTR set changes
        self.serial = 1  # the zone's SOA serial: bumped by every UPDATE that changes something
        self._ptr_size: tuple[int, int] | None = None  # (version, size)
        self._ptr_keys: list[bytes] = []
        self._sizes: dict[bytes, tuple[Any, ...]] = {}  # key -> (record, SRV size, TXT size, sighting)
        self.queries: Counter[str] = Counter()  # by type: PTR, SRV, TXT, and "tcp" retries
        self.updates = 0
        self.failed = 0  # answers too large for one message
        self.largest: dict[str, int] = {}  # query type -> largest answer, bytes
        self.unchanged = 0  # browses the SOA serial answered (nothing read again)
        self._read_by: dict[Any, tuple[int, int, bool]] = {}  # reader -> (serial, size, sharded) of its last full read
        self._shard_sizes: list[int] | None = None

    # --- the zone

    def update(self, record: records.ServiceRecord) -> None:
        """An UPDATE from the record's owner (delete-then-add of its PTR value, SRV, TXT, A)."""
        self.updates += 1
        old = self.zone.get(record.public_key)
        new = old is None
        if new or old != record:
            self.serial += 1
        self.zone[record.public_key] = record
        if new:
            self.ptr_version += 1

    def srv(self, record: records.ServiceRecord) -> tuple[int, list[Any]]:
        """The SRV port and the target's addresses (daemon/discovery.py ``_dns_srv``): the
        reflexive address when STUN found one behind an easy NAT, else the host addresses."""
        srflx = [(ip, port) for ip, port in record.candidates if ip not in record.addresses]
        if srflx and record.txt_extra.get("nat") != "hard":
            ip, port = srflx[0]
            return port, [ip]
        return record.port, list(record.addresses)

    # --- answers

    def _note(self, qtype: str, size: int) -> bool:
        """Count one query and its answer's size; False when it cannot be answered at all."""
        self.queries[qtype] += 1
        self.largest[qtype] = max(self.largest.get(qtype, 0), size)
        if size > EDNS_PAYLOAD:
            self.queries["tcp"] += 1  # truncated over UDP, asked again over TCP
        if size > self.max_message:
            self.failed += 1
            return False
        return True

    def soa(self) -> int:
        """The zone's SOA serial, asked (one small query, counted)."""
        self._note("SOA", SOA_ANSWER)
        return self.serial

    def browse(self, reader: Any = None) -> list[bytes] | None:
        """A browse as io/dnssd.py's ``DnssdClient`` makes it (issue 26, docs/records.md "Shards"):
        the keys its instance labels name (as the daemon reads them, ``records.key_of_label``), or
        None when nothing could be read. While the set fits one UDP answer (≤ ``PTR_UDP_MAX``) one
        PTR query; beyond, the zone's SOA serial first (one small query) and, when it did not move
        since ``reader``'s last full read, that read again; else the plain set (over TCP) while it
        holds at most ``PLAIN_BROWSE_MAX`` (half of it once ``reader`` reads shards) and fits a
        message, else the ``SHARDS`` subtypes, one query each."""
        if self._ptr_size is None or self._ptr_size[0] != self.ptr_version:
            self._ptr_size = (self.ptr_version, self._render_ptr())
            self._ptr_keys = list(self.zone)
            self._shard_sizes = None
        last = self._read_by.get(reader)  # (serial of its last full read, how many, sharded)
        if last is not None and last[1] > records.PTR_UDP_MAX:
            if self.soa() == last[0]:  # the serial of its last full read
                self.unchanged += 1
                return self._ptr_keys
        sharded = last is not None and last[2]
        plain_max = records.PLAIN_BROWSE_MAX // 2 if sharded else records.PLAIN_BROWSE_MAX
        if len(self._ptr_keys) <= plain_max and self._ptr_size[1] <= self.max_message:
            self._note("PTR", self._ptr_size[1])
            sharded = False
        else:
            for size in self._shards():
                self._note("PTR-shard", size)
            sharded = True
        self._read_by[reader] = (self.serial, len(self._ptr_keys), sharded)
        return self._ptr_keys

    def _shards(self) -> list[int]:
        """Each shard's answer size (worked out once per version of the PTR set)."""
        if self._shard_sizes is None:
            shards: dict[str, list[records.ServiceRecord]] = {}
            for record in self.zone.values():
                shards.setdefault(records.shard_label(record.instance_label), []).append(record)
            zone = list(self.zone.values())
            first = self._render_ptr(zone[:1]) if zone else 0
            per = self._render_ptr(zone[:2]) - first if len(zone) >= 2 else first
            base = first - per + SHARD_NAME_EXTRA  # the question names the shard: ``_xx._sub.`` more
            self._shard_sizes = [base + per * len(shards.get(label, ())) for label in records.SHARD_LABELS]
        return self._shard_sizes

    def lookup(self, public: bytes) -> records.Sighting | None:
        """SRV and TXT of one instance, as the daemon turns them into a sighting; None: no such
        name, or an answer too large."""
        record = self.zone.get(public)
        if record is None:
            self.queries["SRV"] += 1
            self.queries["TXT"] += 1
            return None
        cached = self._sizes.get(public)
        if cached is None or cached[0] is not record:
            port, addresses = self.srv(record)
            sighting = records.record_from_dns(record.instance_label, port, self._target(record),
                                               [str(a) for a in addresses], records.build_txt(record))
            cached = (record, *self._render_instance(record), sighting)
            self._sizes[public] = cached
        ok = self._note("SRV", cached[1])
        ok = self._note("TXT", cached[2]) and ok
        # the same answer parses to the same sighting: parsed once per record version (the
        # daemon parses every answer; that is the shell's cost, not the core's)
        return cached[3] if ok else None

    def _target(self, record: records.ServiceRecord) -> str:
        return records.target_name(record.instance_label, self.domain)

    def _response(self, qname: dns.name.Name, rdtype: int) -> dns.message.Message:
        query = dns.message.make_query(qname, rdtype, use_edns=0, payload=EDNS_PAYLOAD)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        return response

    def _render_ptr(self, zone: list[records.ServiceRecord] | None = None) -> int:
        zone = list(self.zone.values()) if zone is None else zone
        response = self._response(self.service, dns.rdatatype.PTR)
        rrset = response.find_rrset(response.answer, self.service, IN, dns.rdatatype.PTR, create=True)
        for record in zone:
            target = dns.name.from_text(record.instance_label, self.service)
            rrset.add(dns.rdtypes.ANY.PTR.PTR(IN, dns.rdatatype.PTR, target), DNS_TTL)
        try:
            return len(response.to_wire(max_size=MAX_MESSAGE))
        except dns.exception.TooBig:  # what it would take: every further PTR costs the same bytes
            one, two = self._render_ptr(zone[:1]), self._render_ptr(zone[:2])
            return one + (two - one) * (len(zone) - 1)

    def _render_instance(self, record: records.ServiceRecord) -> tuple[int, int]:
        instance = dns.name.from_text(record.instance_label, self.service)
        target = dns.name.from_text(self._target(record))
        port, addresses = self.srv(record)
        srv = self._response(instance, dns.rdatatype.SRV)
        srv.find_rrset(srv.answer, instance, IN, dns.rdatatype.SRV, create=True).add(
            dns.rdtypes.IN.SRV.SRV(IN, dns.rdatatype.SRV, 0, 0, port, target), DNS_TTL)
        for addr in addresses:
            ip = ipaddress.ip_address(addr)
            rdtype = dns.rdatatype.A if ip.version == 4 else dns.rdatatype.AAAA
            cls = dns.rdtypes.IN.A.A if ip.version == 4 else dns.rdtypes.IN.AAAA.AAAA
            srv.find_rrset(srv.additional, target, IN, rdtype, create=True).add(cls(IN, rdtype, str(ip)), DNS_TTL)
        txt = self._response(instance, dns.rdatatype.TXT)
        txt.find_rrset(txt.answer, instance, IN, dns.rdatatype.TXT, create=True).add(
            dns.rdtypes.ANY.TXT.TXT(IN, dns.rdatatype.TXT, records.build_txt(record) or [b""]), DNS_TTL)
        return len(srv.to_wire(max_size=1 << 20)), len(txt.to_wire(max_size=1 << 20))


class LanDirectory:
    """One LAN's multicast DNS: every record change reaches the LAN's other members."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.members: list[Any] = []  # SimNodes
        self.messages = 0  # multicast messages sent (two announcements per change)


class Rendezvous:
    """The records' ways between members: their LAN's mDNS and (``nameserver``) unicast DNS-SD.
    Set as ``Net.rendezvous`` and ``Net.on_event``; ``rtt``: to the nameserver and back."""

    def __init__(self, net: Any, nameserver: Nameserver | None, *, rtt: float = 0.04,
                 republish: float = DNS_TTL * 2 / 3) -> None:
        self.net, self.nameserver, self.rtt, self.republish_every = net, nameserver, rtt, republish
        self.lan_of: dict[int, LanDirectory] = {}  # node index -> its LAN
        self.lans: dict[str, LanDirectory] = {}
        self.lookups_wanted = 0
        self.lookups_unchanged = 0  # lookups an unchanged SOA serial answered (no SRV/TXT asked)
        self.browses = 0
        self._serial_seen: dict[int, tuple[float, int]] = {}  # node index -> (asked at, serial)
        self._answers: dict[tuple[int, bytes], tuple[int | None, Any]] = {}  # (node, key) -> (serial, sighting)
        self._republish_at: dict[int, float] = {}  # node index -> its next periodic UPDATE
        net.rendezvous = self
        net.on_event = self.on_event

    def join(self, node: Any, lan: str) -> None:
        directory = self.lans.setdefault(lan, LanDirectory(lan))
        directory.members.append(node)
        self.lan_of[node.index] = directory

    # --- records out

    def publish(self, origin: Any, record: records.ServiceRecord) -> None:
        lan = self.lan_of.get(origin.index)
        if lan is not None and len(lan.members) > 1:
            lan.messages += 2  # RFC 6762 §8.3: announced twice
            sighting = records.record_from_dns(record.instance_label, record.port, record.target,
                                               [str(a) for a in record.addresses], records.build_txt(record))
            self.net.call_at(self.net.now + self.net.latency, lambda: self._multicast(origin, lan, sighting))
        if self.nameserver is not None:
            first = origin.index not in self._republish_at
            self.net.call_at(self.net.now + self.rtt, lambda: self.nameserver.update(record))
            self._republish_at[origin.index] = self.net.now + self.republish_every
            if first:
                self.net.call_at(self.net.now + self.republish_every, lambda: self._republish(origin))

    def _multicast(self, origin: Any, lan: LanDirectory, sighting: records.Sighting) -> None:
        now = self.net.now
        for node in lan.members:
            if node is not origin:
                node.node.receive_sighting(sighting, "mdns", now)
                node.pump()

    def _republish(self, origin: Any) -> None:
        """The daemon's publish loop wakes at 2/3 of the TTL with no change: the same UPDATE."""
        due = self._republish_at[origin.index]
        if self.net.now + 1e-9 >= due and origin.record is not None:
            self.nameserver.update(origin.record)
            due = self._republish_at[origin.index] = self.net.now + self.republish_every
        self.net.call_at(due, lambda: self._republish(origin))

    # --- the node's asks

    def on_event(self, node: Any, event: Any) -> None:
        if self.nameserver is None:
            return
        if isinstance(event, LookupWanted):
            self.lookups_wanted += len(event.peers)
            now, ns = self.net.now, self.nameserver
            seen = self._serial_seen.get(node.index)
            serial = seen[1] if seen is not None and now - seen[0] <= SERIAL_MAX_AGE else None
            wait = 0.0
            if serial is None and any((node.index, p) in self._answers for p in event.peers):
                serial = ns.soa()  # an answer may stand: ask the serial first (first lookups do not)
                self._serial_seen[node.index] = (now, serial)
                wait = self.rtt
            fresh = []
            for public in event.peers:
                kept = self._answers.get((node.index, public))
                if serial is not None and kept is not None and kept[0] == serial:
                    self.lookups_unchanged += 1
                    if kept[1] is not None:
                        self.net.call_at(now + wait, lambda s=kept[1]: self._hand(node, s))
                else:
                    fresh.append(public)
            for i, public in enumerate(fresh):
                when = now + wait + self.rtt * (1 + i // MAX_PARALLEL_LOOKUPS)
                self.net.call_at(when, lambda public=public, serial=serial: self._answer(node, public, serial))
        elif isinstance(event, BrowseWanted):
            self.browses += 1
            self.net.call_at(self.net.now + self.rtt, lambda: self._browse(node))

    def _answer(self, node: Any, public: bytes, serial: int | None) -> None:
        sighting = self.nameserver.lookup(public)
        self._answers[(node.index, public)] = (serial, sighting)
        if sighting is not None:
            self._hand(node, sighting)

    def _hand(self, node: Any, sighting: records.Sighting) -> None:
        node.node.receive_sighting(sighting, "dns", self.net.now)
        node.pump()

    def _browse(self, node: Any) -> None:
        found = self.nameserver.browse(node)
        if found is None:
            return  # the daemon counts dns-lookup-errors; the node's schedule browses again
        node.node.browse_found(found, self.net.now)
        node.pump()
