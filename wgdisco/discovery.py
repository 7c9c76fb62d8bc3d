"""Discovery: publish our own record, browse for peers' records, try what they hint.

Wires the shells ``io/mdns.py`` (LAN, zeroconf) and ``io/dnssd.py`` (unicast
DNS-SD, RFC 2136 + TSIG) to the pure cores ``proto/records.py`` (wgsd layout)
and ``proto/hints.py`` (which candidate to try when), on the daemon's asyncio
loop. Every touch of the device happens under the tunnel's lock, and the data
plane is woken afterwards so the new handshake goes out at once.

Trust: a record only ever leads to a handshake attempt towards a configured
peer's key; a peer with a live session (authenticated packet < 15 s ago) is
never redirected by a record (ARCHITECTURE.md, "Trust model").
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import time
from typing import TYPE_CHECKING, Any

from wgdisco.errors import AuthError, ConfigError, DecodeError, LocalError
from wgdisco.io import dnssd, mdns, netlink, udp
from wgdisco.proto import keys, records
from wgdisco.proto.hints import HintTrier

if TYPE_CHECKING:
    from wgdisco.daemon import Tunnel

log = logging.getLogger("wgdisco")

DNS_TTL = 60  # seconds, for our unicast records; re-published at 2/3 of it
NAT_TXT = {"endpoint-independent": "easy", "endpoint-dependent": "hard"}  # TXT nat= (RFC 4787 terms)
NAT_MAPPING = {v: k for k, v in NAT_TXT.items()}
LIVE_TIME = 15.0


class Discovery:
    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel
        self.settings = tunnel.cfg.discovery
        self.trier = HintTrier(live_time=LIVE_TIME)
        self.mdns: mdns.MdnsService | None = None
        self.client: dnssd.DnssdClient | None = None
        self.publisher: dnssd.DnssdPublisher | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.kick = asyncio.Event()
        self.record: records.ServiceRecord | None = None
        self.counters: dict[str, int] = {}
        self.rng = random.Random()
        self.host_candidates: list[Any] = []  # (ip, port) of our own interfaces
        self.srflx: list[Any] = []  # (ip, port) STUN saw us as
        self.mdns_names: list[str] = []  # interfaces mDNS should be bound to
        self.mdns_addresses: list[str] = []  # what our A/AAAA records should carry
        self.mdns_published: tuple[Any, ...] | None = None  # (addresses, TXT, port) last announced
        self.mdns_dirty = asyncio.Event()  # the network or our record changed: bind/publish again
        self.mdns_waiting = ""  # why mDNS is not bound (logged once per reason)
        self.republish = asyncio.Event()  # our record changed: publish it again now

    # --- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        t = self.tunnel
        assert t.device is not None and t.sock is not None
        lan = await asyncio.to_thread(netlink.interface_addresses, {t.name, "lo"})
        self.record = self._own_record(lan)
        self.host_candidates = list(self.record.candidates)
        if t.nat is not None:
            from wgdisco.nat import networks_of

            with t.lock:
                t.nat.local_networks = networks_of(lan)
            if t.nat.reflexive:
                self.reflexive_changed(list(t.nat.reflexive), t.nat.behaviour)
        s = self.settings
        if s["mDNS"]:
            self._mdns_wanted(lan)
            await self._mdns_bind()  # browsing before start() returns; publishing (~1 s) in the loop
            self.tasks.append(asyncio.create_task(self._mdns_loop(), name="mdns"))
            self.mdns_dirty.set()
        if s["Domain"] is not None:
            self.client = dnssd.DnssdClient(s["Nameserver"], s["Domain"])
            if s["UpdateKey"] is not None:
                if s["Nameserver"] is None:
                    raise ConfigError("publishing with UpdateKey needs a Nameserver", file=t.cfg.path, key="Nameserver")
                self.publisher = dnssd.DnssdPublisher(s["Nameserver"], s["Domain"], s["Zone"] or s["Domain"],
                                                      s["UpdateKey"])
                self.tasks.append(asyncio.create_task(self._publish_loop(), name="dns-publish"))
            self.tasks.append(asyncio.create_task(self._poll_loop(), name="dns-poll"))
        self.tasks.append(asyncio.create_task(self._try_loop(), name="hint-tries"))

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
        names = self.settings["mDNSInterfaces"] or sorted({name for name, _ in lan})
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
        why = ""
        wanted = None
        if not names:
            why = "no LAN interface yet; mDNS starts when one has an address"
        else:
            try:
                choice, version = await asyncio.to_thread(mdns.bind_choice, names)
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
        service = self.mdns = mdns.MdnsService(names)
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
        if self.mdns is None or self.record is None:
            return
        txt = records.build_txt(self.record)
        wanted = (tuple(self.mdns_addresses), tuple(txt), self.record.port)
        if wanted == self.mdns_published:
            return
        if not self.mdns_addresses:
            log.info("mDNS: browsing on %s; nothing to publish until it has a routable address",
                     ", ".join(self.mdns_names))
            return
        label = self.record.instance_label
        try:
            if label in self.mdns.published:
                await self.mdns.update(label, self.record.port, self.mdns_addresses, txt)
            else:
                await self.mdns.publish(label, self.record.port, self.mdns_addresses, txt)
                log.info("mDNS: published %s on %s", label[:16] + "…", ", ".join(self.mdns_names))
        except LocalError as e:
            log.warning("mDNS: cannot publish our record: %s", e)
            return
        self.mdns_published = wanted

    def reflexive_changed(self, reflexive: list[tuple[str, int]], behaviour: str = "unknown") -> None:
        """STUN learnt (new) reflexive addresses: publish them after the host candidates, and
        our NAT's mapping behaviour as ``nat=easy|hard`` (docs/records.md)."""
        if self.record is None:
            return
        self.srflx = [(ipaddress.ip_address(ip), port) for ip, port in reflexive]
        candidates = self.host_candidates + [c for c in self.srflx if c not in self.host_candidates]
        nat = NAT_TXT.get(behaviour)
        extra = dict(self.record.txt_extra)
        if nat is None:
            extra.pop("nat", None)
        else:
            extra["nat"] = nat
        if candidates == self.record.candidates and extra == self.record.txt_extra:
            return
        self.record.candidates = candidates
        self.record.txt_extra = extra
        self.republish.set()
        self.mdns_dirty.set()

    def host_addresses_changed(self, lan: list[tuple[str, Any]]) -> None:
        """The network changed: new host candidates, re-published at once."""
        if self.record is None:
            return
        fresh = self._own_record(lan)
        self.host_candidates = list(fresh.candidates)
        if self.settings["mDNS"]:
            self._mdns_wanted(lan)
            self.mdns_dirty.set()  # interfaces may have come or gone even if no candidate changed
        candidates = self.host_candidates + [c for c in self.srflx if c not in self.host_candidates]
        if candidates == self.record.candidates and fresh.addresses == self.record.addresses:
            return
        self.record.candidates, self.record.addresses = candidates, fresh.addresses
        self.republish.set()

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()
        if self.publisher is not None and self.record is not None:
            try:
                await asyncio.wait_for(self.publisher.withdraw(self.record.instance_label, self.record.target), 3)
            except (Exception, asyncio.TimeoutError) as e:  # shutting down: report, never hang
                log.warning("DNS: could not withdraw our records: %s", e)
        if self.mdns is not None:
            await self.mdns.close()  # goodbyes (RFC 6762 §10.1)

    def _own_record(self, lan: list[tuple[str, Any]]) -> records.ServiceRecord:
        t = self.tunnel
        assert t.device is not None and t.sock is not None
        port = udp.local_port(t.sock)
        ips = [a.ip for _, a in lan if not a.ip.is_link_local]
        domain = self.settings["Domain"] or "local"
        label = keys.key_to_base32(t.device.identity.public)
        allowed = [ipaddress.ip_network(f"{a.ip}/{a.max_prefixlen}") for a in t.cfg.interface.addresses]
        return records.ServiceRecord(
            public_key=t.device.identity.public, port=port, target=f"wg-{label[:16]}.{domain}.",
            addresses=ips, allowed=allowed, candidates=[(ip, port) for ip in ips],
            txt_extra={"probe": "1"},  # we answer wgdisco path probes (docs/records.md)
        )

    # --- sightings --------------------------------------------------------------------

    def summary(self) -> str:
        """Counters for the log line at shutdown, e.g. ``handshake-tries=2 records-not-a-peer=1``."""
        counts = dict(self.counters)
        if self.trier.ignored_live:
            counts["hints-ignored-live"] = self.trier.ignored_live
        return " ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "nothing to report"

    def dns_errors(self) -> int:
        return self.counters.get("dns-lookup-errors", 0) + self.counters.get("dns-publish-errors", 0)

    def _count(self, what: str, n: int = 1) -> None:
        self.counters[what] = self.counters.get(what, 0) + n

    def _on_mdns(self, event: mdns.Sighting | mdns.Removal) -> None:
        if isinstance(event, mdns.Removal):
            return  # a goodbye is no reason to touch a tunnel; the endpoint stays until it fails
        try:
            sighting = records.record_from_dns(event.instance, event.port, event.server, event.addresses, event.txt)
        except DecodeError:
            self._count("records-malformed")
            return
        self.handle(sighting, "mdns")

    def handle(self, sighting: records.Sighting, source: str) -> None:
        """A record about some key: act only if it is a configured peer's, and only as a hint."""
        t = self.tunnel
        device, sock = t.device, t.sock
        assert device is not None and sock is not None
        if sighting.malformed:
            self._count("record-parts-malformed", sighting.malformed)
        if sighting.public_key == device.identity.public:
            return
        candidates = []
        for ip, port in sighting.candidates:
            try:
                candidates.append(udp.to_sockaddr(sock, str(ip), port))
            except (LocalError, OSError, ValueError):
                self._count("candidates-unusable")
        with t.lock:
            peer = device.peers.get(sighting.public_key)
            if peer is None:
                self._count("records-not-a-peer")  # discovery never makes a stranger a peer
                return
            now = time.monotonic()
            nat = t.nat
            if nat is not None:
                # probes (wgdisco peers): hole punching towards every candidate, verified paths only
                nat.add_candidates(peer.public_key, candidates, source, now)
                mapping = sighting.txt.get("nat")
                if isinstance(mapping, bytes) and mapping.decode("ascii", "replace") in NAT_MAPPING:
                    nat.set_peer_mapping(peer.public_key, NAT_MAPPING[mapping.decode()], now)
            if nat is not None and sighting.txt.get("probe") == b"1":
                return  # it answers probes: the path selector alone decides (no handshake tries)
            # handshakes as the probe, for peers that do not speak probes (wireguard-go + a record
            # from avahi-publish or a hand-written zone); never for a live one
            live = device.is_live(peer, now, LIVE_TIME) or (nat is not None and nat.has_verified_path(peer.public_key, now))
            self.trier.sighting(peer.public_key, candidates, source, now, live=live)
        self.kick.set()

    def on_handshake(self, peer_key: bytes) -> None:
        """Called by the tunnel (lock held) when a handshake completed."""
        self.trier.succeeded(peer_key)

    async def _try_loop(self) -> None:
        t = self.tunnel
        device = t.device
        assert device is not None
        while True:
            self.kick.clear()  # a sighting after this point sets it again
            with t.lock:
                now = time.monotonic()
                tries = self.trier.due(now, lambda key: device.is_live(device.peers[key], now, LIVE_TIME)
                                       if key in device.peers else True)
                for attempt in tries:
                    peer = device.peers.get(attempt.peer)
                    if peer is not None:
                        device.try_endpoint(peer, attempt.endpoint, now, cause=attempt.source)
                        self._count("handshake-tries")
                if tries:
                    t.flush()
                deadline = self.trier.next_time()
            if tries and t.dataplane is not None:
                t.dataplane.wake()
            timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                await asyncio.wait_for(self.kick.wait(), timeout)
            except asyncio.TimeoutError:
                pass

    # --- unicast DNS-SD -----------------------------------------------------------------

    async def _poll_loop(self) -> None:
        assert self.client is not None
        device = self.tunnel.device
        assert device is not None
        interval = self.settings["PollInterval"]
        retry = dnssd.Retry("DNS-SD lookups", logger=log, maximum=60.0)
        while True:
            failed = False
            for public in list(device.peers):
                label = keys.key_to_base32(public)
                try:
                    raw = await retry.run(lambda label=label: self.client.lookup(label), attempts=1)  # type: ignore[union-attr]
                except (dnssd.NameserverError, ConfigError, AuthError):
                    self._count("dns-lookup-errors")
                    failed = True  # Retry logged the outage once; back off, then a new round
                    break
                if raw is None:
                    continue
                try:
                    sighting = records.record_from_dns(label, raw.srv_port, raw.srv_target, raw.addresses, raw.txt)
                except DecodeError:
                    self._count("records-malformed")
                    continue
                self.handle(sighting, "dns")
            if failed:
                await asyncio.sleep(retry.delay(retry.failures - 1))  # exponential backoff, with jitter
            else:
                await asyncio.sleep(interval * (0.9 + 0.2 * self.rng.random()))  # jitter, no lockstep

    def _dns_srv(self) -> tuple[int, list[Any]]:
        """Beyond the LAN, SRV/A point at the best reachable candidate: the reflexive address
        when STUN found one behind an easy NAT, else our host addresses (the TXT lists all)."""
        assert self.record is not None
        if self.srflx and self.record.txt_extra.get("nat") != "hard":
            ip, port = self.srflx[0]
            return port, [ip]
        return self.record.port, self.record.addresses

    async def _publish_loop(self) -> None:
        assert self.publisher is not None and self.record is not None
        r = self.record
        delay = 1.0
        while True:
            self.republish.clear()  # before publishing: a change during the UPDATE triggers another
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
                delay = min(delay * 2, 60.0)
                continue
            log.info("DNS: published %s in %s", r.instance_label[:16] + "…", self.settings["Domain"])
            delay = 1.0
            try:  # again before the TTL runs out, or at once when the candidates change
                await asyncio.wait_for(self.republish.wait(), DNS_TTL * 2 / 3)
            except asyncio.TimeoutError:
                pass
