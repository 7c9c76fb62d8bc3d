"""Discovery: publish our own record, browse for peers' records, hand the sightings to the node.

Wires the shells ``io/mdns.py`` (LAN, zeroconf) and ``io/dnssd.py`` (unicast DNS-SD,
RFC 2136 + TSIG) to the node core (proto/node.py) on the daemon's asyncio loop. The node decides
everything: which record is ours (``RecordChanged``), what a sighting or a goodbye means, which
candidate to probe or try. This module only moves records: what it sees goes in through
``feed`` (the tunnel's lock, then the node's output sent and the data plane woken); what the
node wants published comes back through ``record_changed``. It never imports the daemon.

Trust: records are hints; the node acts on a configured peer's record only (ARCHITECTURE.md,
"Trust model").
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Any, Callable

from wgdisco.config import DiscoveryConfig
from wgdisco.errors import AuthError, ConfigError, DecodeError, LocalError
from wgdisco.io import dnssd, mdns
from wgdisco.proto import keys, records
from wgdisco.proto.hints import MAX_BACKOFF
from wgdisco.proto.node import Node, srv_target

Feed = Callable[[Callable[[Node, float], Any]], Any]  # fn(node, now) under the tunnel's lock; its result

log = logging.getLogger("wgdisco")

DNS_TTL = 60  # seconds, for our unicast records; re-published at 2/3 of it
MAX_PARALLEL_LOOKUPS = 16  # DNS-SD lookups in flight at once (each is 2 to 4 queries)
ANSWERS_KEPT = 4096  # lookups' last answers kept for the SOA check (a peer's, or a browsed key's)
BROWSE_TIMEOUT = 8.0  # one browse, all its queries (257 on a big mesh), below the default PollInterval


class Discovery:
    def __init__(self, settings: DiscoveryConfig, config_path: str, record: records.ServiceRecord, *,
                 feed: Feed, peer_keys: Callable[[], frozenset[bytes]]) -> None:
        self.settings = settings  # the config's [Discovery]
        self.config_path = config_path
        self.feed = feed
        self.peer_keys = peer_keys
        self.mdns: mdns.MdnsService | None = None
        self.client: dnssd.DnssdClient | None = None
        self.publisher: dnssd.DnssdPublisher | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.record = record  # what the node wants published (RecordChanged)
        self.mdns_withdraw: list[str] = []  # instance labels of our old identities, to withdraw
        self.dns_withdraw: list[str] = []
        self.counters: dict[str, int] = {}
        self.mdns_names: list[str] = []  # interfaces mDNS should be bound to
        self.mdns_addresses: list[str] = []  # what our A/AAAA records should carry
        self.mdns_published: tuple[Any, ...] | None = None  # (label, addresses, TXT, port) last announced
        self.mdns_dirty = asyncio.Event()  # the network or our record changed: bind/publish again
        self.mdns_announce = False  # announce our unchanged record again (the node's AnnounceWanted)
        self.mdns_waiting = ""  # why mDNS is not bound (logged once per reason)
        self.republish = asyncio.Event()  # our record changed: publish it again now
        self.lookup_kick = asyncio.Event()  # the node wants lookups or a browse (LookupWanted, BrowseWanted)
        self.pending: list[bytes] = []  # keys to look up, in the order the node asked
        self.soa_usable = True  # False once the nameserver refused the SOA query or had none
        # key -> (zone serial asked before its last lookup, what that lookup handed the node):
        # while the serial stays, the answer would be the same (io/dnssd.py zone_serial)
        self.answers: OrderedDict[bytes, tuple[int | None, records.Sighting | None]] = OrderedDict()
        self.browse_pending = False

    # --- lifecycle ----------------------------------------------------------------

    async def start(self, lan: list[tuple[str, Any]]) -> None:
        s = self.settings
        if s.mdns:
            self._mdns_wanted(lan)
            await self._mdns_bind()  # browsing before start() returns; publishing (~1 s) in the loop
            self.tasks.append(asyncio.create_task(self._mdns_loop(), name="mdns"))
            self.mdns_dirty.set()
        if s.domain is not None:
            self.client = dnssd.DnssdClient(s.nameserver, s.domain, browse_timeout=BROWSE_TIMEOUT)
            if s.update_key is not None:
                if s.nameserver is None:
                    raise ConfigError("publishing with UpdateKey needs a Nameserver", file=self.config_path, key="Nameserver")
                self.publisher = dnssd.DnssdPublisher(s.nameserver, s.domain, s.zone or s.domain,
                                                      s.update_key)
                self.tasks.append(asyncio.create_task(self._publish_loop(), name="dns-publish"))
            self.tasks.append(asyncio.create_task(self._poll_loop(), name="dns-poll"))

    # --- mDNS follows the network ------------------------------------------------------
    #
    # zeroconf joins its multicast groups once, when it starts. A daemon started before its
    # network (at boot, before DHCP) or whose LAN address changes would otherwise stay deaf
    # on the LAN and publish stale or no addresses. After every change (io/netmon.py) the
    # wanted binding is computed again; when it differs from the running one, the service
    # is closed (goodbyes, RFC 6762 §10.1) and started anew, which probes and announces on
    # the new links (RFC 6762 §8). One task does all of it, so nothing overlaps.

    def _mdns_wanted(self, lan: list[tuple[str, Any]]) -> None:
        """Interfaces (configured, else every one with an address but lo and the tunnel)
        and the addresses their A/AAAA records carry."""
        names = self.settings.mdns_interfaces or sorted({name for name, _ in lan})
        self.mdns_names = names
        self.mdns_addresses = [str(a.ip) for name, a in lan if name in names and not a.ip.is_link_local]

    async def _mdns_loop(self) -> None:
        while True:
            await self.mdns_dirty.wait()
            self.mdns_dirty.clear()
            try:
                await self._mdns_bind()
                await self._mdns_publish()
            except Exception as e:  # never let this loop die: the next change tries again
                log.error("mDNS: unexpected %s: %s", type(e).__name__, e, exc_info=True)

    async def _mdns_bind(self) -> None:
        """Start, restart or stop the mDNS service so it is bound as ``mdns_names`` want."""
        names = self.mdns_names
        asked, prefer = mdns.FAMILIES[self.settings.mdns_family]  # [Discovery] mDNSFamily
        why = ""
        wanted = None
        if not names:
            why = "no LAN interface yet; mDNS starts when one has an address"
        else:
            try:
                choice, version = await asyncio.to_thread(mdns.bind_choice, names, asked, prefer_ipv4=prefer)
                wanted = (choice, version)
            except LocalError as e:
                why = f"{e}; mDNS waits for the network"
        if self.mdns is not None:
            if wanted == self.mdns.bound:
                return
            log.info("mDNS: rebinding to %s (the network changed)", ", ".join(names) or "nothing")
            self._count("mdns-rebinds")
            old, self.mdns, self.mdns_published = self.mdns, None, None
            await old.close()
        if wanted is None:
            if why != self.mdns_waiting:
                log.warning("mDNS: %s", why)
            self.mdns_waiting = why
            return
        self.mdns_waiting = ""
        service = self.mdns = mdns.MdnsService(names, bound=wanted)  # bound as compared above
        try:
            await service.start()
            await service.browse(self._on_mdns)
        except (LocalError, OSError) as e:  # retried at the next network change
            log.warning("mDNS: cannot start on %s: %s", ", ".join(names), e)
            self.mdns = None
            await service.close()
            return

    async def _mdns_publish(self) -> None:
        """Publish our record, or update it when its addresses or TXT changed.

        Probing and announcing take ~1 s (RFC 6762 §8): never on the start-up path."""
        if self.mdns is None:
            return
        while self.mdns_withdraw:
            old = self.mdns_withdraw.pop()
            if old in self.mdns.published:
                await self.mdns.unpublish(old)  # goodbye for our old identity (RFC 6762 §10.1)
        label = self.record.instance_label
        txt = records.build_txt(self.record)
        wanted = (label, tuple(self.mdns_addresses), tuple(txt), self.record.port)
        again, self.mdns_announce = self.mdns_announce, False
        if wanted == self.mdns_published and not again:
            return
        if not self.mdns_addresses:
            log.info("mDNS: browsing on %s; nothing to publish until it has a routable address",
                     ", ".join(self.mdns_names))
            return
        try:
            if label in self.mdns.published:
                await self.mdns.update(label, self.record.port, self.mdns_addresses, txt)
            else:
                await self.mdns.publish(label, self.record.port, self.mdns_addresses, txt)
                log.info("mDNS: published %s on %s (%s)", label[:16] + "…", ", ".join(self.mdns_names),
                         mdns.family_text(self.mdns.bound))
        except LocalError as e:
            log.warning("mDNS: cannot publish our record: %s", e)
            return
        self.mdns_published = wanted

    def record_changed(self, record: records.ServiceRecord, withdrawn: str | None) -> None:
        """The node's RecordChanged (asyncio loop): publish the new record, withdraw the old name."""
        if withdrawn is not None:
            self.mdns_withdraw.append(withdrawn)
            self.dns_withdraw.append(withdrawn)
        self.record = record
        self.republish.set()
        self.mdns_dirty.set()
        self.lookup_kick.set()

    def announce_again(self) -> None:
        """The node's AnnounceWanted (asyncio loop): members may have missed our mDNS announcement
        (RFC 6762 §8.3 sends it only a few times): send it again."""
        if self.mdns is not None and self.mdns_published is not None:
            self.mdns_announce = True
            self.mdns_dirty.set()
            self._count("mdns-announced-again")

    def rescan(self) -> None:
        """The mesh key changed: every record seen is handed to the node again (mDNS from what
        the browser last resolved, unicast DNS-SD looked up at once), since some that were
        refused under the old key may be valid now."""
        if self.mdns is not None:
            self._count("mdns-replayed", self.mdns.replay())
        if self.client is not None:
            self.feed(lambda node, now: node.lookup_all(now))

    def lookup(self, peers: tuple[bytes, ...]) -> None:
        """The node's LookupWanted (asyncio loop): look these keys up (the poll loop)."""
        if self.client is None:
            return
        self.pending.extend(p for p in peers if p not in self.pending)
        self.lookup_kick.set()

    def browse(self) -> None:
        """The node's BrowseWanted (asyncio loop): browse the mesh's PTR set (the poll loop)."""
        if self.client is None:
            return
        self.browse_pending = True
        self.lookup_kick.set()

    def host_addresses_changed(self, lan: list[tuple[str, Any]]) -> None:
        """The network changed: mDNS may bind elsewhere (the record itself comes from the node)."""
        if self.settings.mdns:
            self._mdns_wanted(lan)
            self.mdns_dirty.set()  # interfaces may have come or gone even if no candidate changed

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()
        if self.publisher is not None:
            try:
                await asyncio.wait_for(self.publisher.withdraw(self.record.instance_label, self.record.target), 3)
            except (Exception, asyncio.TimeoutError) as e:  # shutting down: report, never hang
                log.warning("DNS: could not withdraw our records: %s", e)
        if self.mdns is not None:
            await self.mdns.close()  # goodbyes (RFC 6762 §10.1)

    # --- sightings --------------------------------------------------------------------

    def dns_errors(self) -> int:
        return self.counters.get("dns-lookup-errors", 0) + self.counters.get("dns-publish-errors", 0)

    def _count(self, what: str, n: int = 1) -> None:
        self.counters[what] = self.counters.get(what, 0) + n

    def mdns_counts(self) -> dict[str, int]:
        """The mDNS browser's own counts (for the shutdown line), those not zero."""
        m = self.mdns
        counts = {} if m is None else {"mdns-unresolved": m.unresolved, "mdns-names-ignored": m.ignored_names}
        return {k: v for k, v in counts.items() if v}

    def _on_mdns(self, event: mdns.Seen | mdns.Removal) -> None:
        if isinstance(event, mdns.Removal):
            try:
                public = records.key_of_label(event.instance)
            except DecodeError:
                return  # not a wgsd instance name: nothing of ours to forget
            self.feed(lambda node, now: node.receive_goodbye(public, "mdns", now))
            return
        try:
            sighting = records.record_from_dns(event.instance, event.port, event.server, event.addresses, event.txt)
        except DecodeError:
            self._count("records-malformed")
            return
        self.feed(lambda node, now: node.receive_sighting(sighting, "mdns", now))

    # --- unicast DNS-SD -----------------------------------------------------------------

    async def _poll_loop(self) -> None:
        """Look up the keys the node asks for (LookupWanted: proto/lookups.py schedules them: at
        once, every 0.5 s for 2 s, then 1, 2, 4 … s while a peer has no path, every PollInterval once it has one, at
        once after our record changed) and browse when it asks (BrowseWanted)."""
        assert self.client is not None
        retry = dnssd.Retry("DNS-SD lookups", logger=log, maximum=MAX_BACKOFF)
        self.feed(lambda node, now: node.lookup_all(now))  # what the node asked before we ran
        while True:
            await self.lookup_kick.wait()
            self.lookup_kick.clear()
            failed = False
            due, self.pending = self.pending, []
            failed = await self.look_up_all(retry, due)  # in parallel; Retry logs an outage once
            if not failed and self.browse_pending:
                self.browse_pending = False
                failed = await self._mesh_browse(retry)
            if failed:  # Retry logged the outage once; the node's schedule asks again
                self.pending.clear()
                await asyncio.sleep(retry.delay(retry.failures - 1))  # exponential backoff, with jitter

    async def look_up_all(self, retry: dnssd.Retry, publics: Any) -> bool:
        """Look the keys up in parallel (at most MAX_PARALLEL_LOOKUPS at once), each handed to
        the node as it comes: a lost answer delays its own name by one retransmission
        (io/dnssd.py), not every name after it. A key whose last answer came under the zone
        serial the nameserver still has gets that answer again, without a query
        (``dns-lookups-unchanged``). True when the nameserver failed for any."""
        assert self.client is not None
        publics = list(publics)
        serial = None
        if publics and self._serial_checked:
            if any(p in self.answers for p in publics):  # an answer may stand: ask (or reuse) the serial
                try:
                    serial = await self.client.zone_serial()
                except dnssd.NameserverTimeout:
                    self._count("dns-lookup-errors")
                    return True
                except (dnssd.NameserverError, ConfigError, AuthError):
                    self.soa_usable = False  # a server that will not say: look everything up, as before
                if serial is None:
                    self.soa_usable = False  # no SOA where the service is: nothing to compare
            else:  # first lookups wait for nothing (a lost SOA query would delay them): a serial
                serial = self.client.recent_serial()  # asked within the second, or None (kept untagged)
        if serial is not None:
            fresh = []
            for public in publics:
                kept = self.answers.get(public)
                if kept is None or kept[0] is None or kept[0] != serial:
                    fresh.append(public)
                    continue
                self._count("dns-lookups-unchanged")
                if (sighting := kept[1]) is not None:
                    self.feed(lambda node, now, s=sighting: node.receive_sighting(s, "dns", now))
            publics = fresh
        if len(publics) <= 1:
            return any([await self._look_up(retry, p, serial) for p in publics])
        slots = asyncio.Semaphore(MAX_PARALLEL_LOOKUPS)

        async def one(public: bytes) -> bool:
            async with slots:
                return await self._look_up(retry, public, serial)

        return any(await asyncio.gather(*(one(p) for p in publics)))

    @property
    def _serial_checked(self) -> bool:
        """Lookups go by the zone's serial (docs/records.md): a named nameserver that answers SOA."""
        return self.client is not None and self.client.authoritative and self.soa_usable

    async def _look_up(self, retry: dnssd.Retry, public: bytes, serial: int | None = None) -> bool:
        """Look up one key's instance and hand its record to the node; True when the
        nameserver failed (no record, or a malformed one, is counted and is not a failure).
        ``serial``: the zone's, asked before this lookup; the answer is kept under it."""
        assert self.client is not None
        label = keys.key_to_base32(public)
        try:
            raw = await retry.run(lambda: self.client.lookup(label), attempts=1)  # type: ignore[union-attr]
        except (dnssd.NameserverError, ConfigError, AuthError):
            self._count("dns-lookup-errors")
            return True
        sighting = None
        if raw is not None:
            try:
                sighting = records.record_from_dns(label, raw.srv_port, raw.srv_target, raw.addresses, raw.txt)
            except DecodeError:
                self._count("records-malformed")
                return False
        if self._serial_checked:  # untagged (None): looked up again next time
            self.answers[public] = (serial, sighting)
            self.answers.move_to_end(public)
            while len(self.answers) > ANSWERS_KEPT:
                self.answers.popitem(last=False)
        if sighting is not None:
            self.feed(lambda node, now: node.receive_sighting(sighting, "dns", now))
        return False

    async def _mesh_browse(self, retry: dnssd.Retry) -> bool:
        """The mesh over unicast DNS-SD: browse the PTR set and hand the keys to the node, which
        asks for the new ones (LookupWanted); it admits those with a valid mesh MAC. True when
        the nameserver failed."""
        assert self.client is not None
        try:
            labels = await retry.run(self.client.browse, attempts=1)
        except (dnssd.NameserverError, ConfigError, AuthError):
            self._count("dns-lookup-errors")
            return True
        cost = self.client.last_browse
        if cost is not None:  # dns-browse-plain, -shards, -unchanged (a re-read the SOA serial spared)
            self._count(f"dns-browse-{cost.how}")
            self._count("dns-browse-queries", cost.queries)
        found = []
        for label in labels:
            try:
                found.append(records.key_of_label(label))
            except DecodeError:
                self._count("records-malformed")
        self.feed(lambda node, now: node.browse_found(found, now))  # its LookupWanted comes back
        return False

    def _dns_srv(self) -> tuple[int, list[Any]]:
        """Beyond the LAN, SRV/A point at the best reachable candidate: the reflexive address
        when STUN found one behind an easy NAT, else our host addresses (the TXT lists all)."""
        r = self.record
        srflx = [(ip, port) for ip, port in r.candidates if ip not in r.addresses]
        if srflx and r.txt_extra.get("nat") != "hard":
            ip, port = srflx[0]
            return port, [ip]
        return r.port, r.addresses

    async def _publish_loop(self) -> None:
        assert self.publisher is not None
        delay = 1.0
        while True:
            self.republish.clear()  # before publishing: a change during the UPDATE triggers another
            r = self.record
            while self.dns_withdraw:
                old = self.dns_withdraw.pop()
                target = srv_target(records.key_of_label(old), self.settings.domain)
                try:
                    await self.publisher.withdraw(old, target)
                except (dnssd.NameserverError, AuthError, OSError) as e:
                    log.warning("DNS: could not withdraw our old name: %s", e)
            port, addresses = self._dns_srv()
            try:
                await self.publisher.publish(r.instance_label, port, r.target, addresses,
                                             records.build_txt(r), ttl=DNS_TTL)
            except ConfigError as e:
                log.error("DNS: %s (not retrying until the configuration changes)", e)
                return
            except (dnssd.NameserverError, AuthError, OSError) as e:
                self._count("dns-publish-errors")
                log.warning("DNS: publishing failed: %s; retrying in %.0f s", e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)
                continue
            log.info("DNS: published %s in %s", r.instance_label[:16] + "…", self.settings.domain)
            delay = 1.0
            try:  # again before the TTL runs out, or at once when the candidates change
                await asyncio.wait_for(self.republish.wait(), DNS_TTL * 2 / 3)
            except asyncio.TimeoutError:
                pass
