"""NAT traversal in the daemon: STUN, authenticated path probes, hole punching, path choice.

Wires the pure cores to the tunnel's one socket (ARCHITECTURE.md, "The one socket"):

- ``proto/stun.py``: Binding requests from the tunnel's own socket, so the mapping STUN sees is
  the one WireGuard uses. Reflexive addresses become published candidates (via discovery).
- ``proto/probe.py``: wgdisco's own probes, authenticated with keys from the two static keys.
  Every configured peer's probe is answered; an answer proves a path and measures its RTT, and a
  request from a new source is a peer-reflexive candidate.
- ``proto/paths.py``: which candidates to probe when (hole punching: all of them at once, LAN and
  IPv6 first, with backoff, bounded), and which verified path to use. A record never replaces a
  live path; WireGuard's own roaming rule still holds (the device follows authenticated packets).

All of it runs in the data-plane thread with the tunnel's lock held: ``on_stun``/``on_probe``
for datagrams, ``get_timer``/``handle_timer`` for time. Results for the asyncio side
(re-publishing) go through ``loop.call_soon_threadsafe``. Only servers the configuration names
are contacted (``[Discovery] STUN``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Any

from wgdisco.errors import LocalError
from wgdisco.io import udp
from wgdisco.proto import keys
from wgdisco.proto.paths import Candidate, PathSelector, host_kind
from wgdisco.proto.probe import ProbeRequested, ProbeResult, Prober
from wgdisco.proto.stun import StunClient

if TYPE_CHECKING:
    from wgdisco.daemon import Tunnel

log = logging.getLogger("wgdisco")

STUN_REFRESH = 25.0  # seconds; also keeps the NAT mapping warm (RFC 4787 REQ-5)
SYNC_INTERVAL = 0.5  # how often unanswered traffic is checked for (see _suspect_dead_paths)
SUSPECT_AFTER = 2.0  # data sent, nothing authenticated back for this long: is our NAT mapping still ours?
RESTUN_MIN_INTERVAL = 10.0  # at most one such early STUN round per this many seconds
DEFER_INITIATION = 1.0  # the higher key's wait before it initiates on a newly verified path
REASON_TEXT = {
    "lan": "direct on the LAN",
    "direct": "direct",
    "no-candidates": "no record found for it yet",
    "probing": "probing candidates",
    "probes-timed-out": "probes to every candidate timed out",
    "hard-nat-both-sides": "both NATs map per destination (hard NAT on both sides): no direct path",
}


def short(public: bytes) -> str:
    return keys.key_to_base64(public)[:8] + "…"


class NatTraversal:
    def __init__(self, tunnel: Tunnel, servers: list[Any]) -> None:
        self.tunnel = tunnel
        device = tunnel.device
        assert device is not None
        self.loop = asyncio.get_running_loop()
        self.stun = StunClient(servers, rng=os.urandom, refresh=STUN_REFRESH,
                               host_of=lambda addr: udp.from_sockaddr(addr)[0]) if servers else None
        self.prober = Prober(device.identity.private, device.identity.public, list(device.peers),
                             rng=os.urandom, wall=time.time())
        self.selector = PathSelector()
        for public in device.peers:
            self.selector.add_peer(public)
        self.local_networks: list[Any] = []
        self.reflexive: list[tuple[str, int]] = []
        self.behaviour = "unknown"
        self.reasons: dict[bytes, str] = {}
        self.synced: dict[bytes, float] = {}
        self.next_sync = 0.0
        self.last_restun = -RESTUN_MIN_INTERVAL
        self.deferred: dict[bytes, tuple[float, Any]] = {}  # peer -> (when, addr) to initiate

    @classmethod
    async def create(cls, tunnel: Tunnel) -> NatTraversal:
        """STUN servers from ``[Discovery] STUN``, resolved once (none is ever assumed)."""
        sock = tunnel.sock
        assert sock is not None
        servers = []
        for endpoint in tunnel.cfg.discovery["STUN"]:
            try:
                servers.append(await asyncio.to_thread(udp.to_sockaddr, sock, endpoint.host, endpoint.port))
            except (LocalError, OSError, socket.gaierror) as e:
                log.warning("STUN server %s: cannot resolve: %s", endpoint, e)
        return cls(tunnel, servers)

    # --- data-plane thread, tunnel lock held ----------------------------------------

    def start(self, now: float) -> None:
        if self.stun is not None:
            self.stun.start(now)

    def on_stun(self, data: Any, addr: Any, now: float) -> bool:
        return self.stun is not None and self.stun.receive(bytes(data), addr, now)

    def on_probe(self, data: Any, addr: Any, now: float) -> None:
        received = self.prober.receive(bytes(data), addr, now)
        if received.reply is not None:
            self._send(received.reply, addr)
        event = received.event
        if isinstance(event, ProbeResult):
            self.selector.on_probe_result(event.peer, event.addr, event.rtt, now)
        elif isinstance(event, ProbeRequested):
            self.selector.add_candidates(event.peer, [Candidate(event.addr, "prflx", "probe")], now)

    def add_peer(self, public: bytes) -> None:
        self.prober.add_peer(public)
        self.selector.add_peer(public)

    def remove_peer(self, public: bytes) -> None:
        self.prober.remove_peer(public)
        self.selector.remove_peer(public)
        self.reasons.pop(public, None)
        self.synced.pop(public, None)
        self.deferred.pop(public, None)

    def add_candidates(self, public: bytes, addrs: list[Any], source: str, now: float) -> None:
        """A sighting's candidates (socket addresses), for probing."""
        if public not in self.prober.peers:
            return
        cands = [Candidate(a, host_kind(udp.from_sockaddr(a)[0], self.local_networks), source) for a in addrs]
        known = {path.addr for path in self.selector.paths(public)}
        self.selector.add_candidates(public, cands, now)
        if self.selector.is_live(public, now):
            # a live peer's new candidate (it moved?) gets one probe now: it opens our NAT towards
            # it, and WireGuard's roaming rule switches once authenticated packets come from there
            for cand in cands:
                if cand.addr not in known:
                    log.info("peer %s: new candidate %s (%s); probing it once", short(public),
                             udp.format_sockaddr(cand.addr), source)
                    self._send(self.prober.request(public, cand.addr, now), cand.addr)

    def set_peer_mapping(self, public: bytes, mapping: str, now: float) -> None:
        if public in self.prober.peers:
            self.selector.set_peer_mapping(public, mapping, now)

    def has_verified_path(self, public: bytes, now: float) -> bool:
        return public in self.prober.peers and self.selector.best(public, now) is not None

    def get_timer(self, now: float) -> float | None:
        times = [t for t in (
            self.stun.get_timer() if self.stun is not None else None,
            self.prober.get_timer(),
            self.selector.next_time(now),
            self.next_sync,
            *(when for when, _ in self.deferred.values()),
        ) if t is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        if self.stun is not None:
            self.stun.handle_timer(now)
        for timeout in self.prober.handle_timer(now):
            self.selector.on_probe_timeout(timeout.peer, timeout.addr, now)
        # before any decision: WireGuard's roaming rule (§2.1) has the last word, so the selector
        # must know where authenticated packets came from, or it would undo a roam
        self._sync_authenticated(now)
        if now >= self.next_sync:
            self._suspect_dead_paths(now)
            self.next_sync = now + SYNC_INTERVAL
        for public, (when, addr) in list(self.deferred.items()):
            if when <= now:
                del self.deferred[public]
                peer = self.tunnel.device.peers.get(public)  # type: ignore[union-attr]
                if peer is not None and peer.current is None:  # the peer's initiation did not come
                    self.tunnel.device.try_endpoint(peer, addr, now, cause="probe")  # type: ignore[union-attr]
        for public, addr in self.selector.probe_plan(now):
            if public in self.prober.peers:
                self._send(self.prober.request(public, addr, now), addr)
        self._apply_decisions(now)

    def _sync_authenticated(self, now: float) -> None:
        """Tell the selector which paths carried authenticated WireGuard packets (§2.1)."""
        device = self.tunnel.device
        assert device is not None
        for public, peer in device.peers.items():
            last = peer.last_authenticated
            if last is not None and peer.endpoint is not None and last != self.synced.get(public):
                self.synced[public] = last
                if public in self.prober.peers:
                    self.selector.on_authenticated(public, peer.endpoint, last)

    def _suspect_dead_paths(self, now: float) -> None:
        """Data went out but nothing authenticated came back for SUSPECT_AFTER seconds: our NAT may
        have a new address (a router got a new WAN address). Ask STUN again at once: a new
        reflexive address is re-published, and the peer's probe to it re-opens the path."""
        device = self.tunnel.device
        assert device is not None
        if self.stun is None or now - self.last_restun < RESTUN_MIN_INTERVAL:
            return
        t = device.timing
        for public, peer in device.peers.items():
            if peer.t_new_handshake is None or peer.current is None:
                continue
            # timersDataSent set t_new_handshake = first unanswered send + KEEPALIVE + REKEY_TIMEOUT + jitter
            unanswered_since = peer.t_new_handshake - t.keepalive_timeout - t.rekey_timeout - t.rekey_timeout_jitter_max
            if now - unanswered_since > SUSPECT_AFTER:
                self.last_restun = now
                log.info("peer %s: no answer for %.0f s; checking our NAT mapping again (STUN)",
                         short(public), now - unanswered_since)
                self.stun.restart(now)
                return

    def _apply_decisions(self, now: float) -> None:
        device = self.tunnel.device
        assert device is not None
        for public, peer in device.peers.items():
            if public not in self.prober.peers:
                continue
            addr, reason = self.selector.decision(public, now)
            if reason != self.reasons.get(public):
                self.reasons[public] = reason
                log.info("peer %s: path: %s", short(public), self.explain(public, reason))
            if addr is not None and addr != peer.endpoint:
                self.tunnel.endpoint_source[public] = "probe"
                if peer.current is None:
                    # Both sides verify the path in the same instant; if both initiated, each
                    # would consume the other's initiation and wait as responder until the 5 s
                    # retransmit. The lower key initiates now, the higher one after a second.
                    if device.identity.public < public:
                        device.try_endpoint(peer, addr, now, cause="probe")
                    else:
                        device.set_endpoint(peer, addr)
                        self.deferred[public] = (now + DEFER_INITIATION, addr)
                else:
                    device.set_endpoint(peer, addr)
                    log.info("peer %s: endpoint %s (verified path, %s)", short(public),
                             udp.format_sockaddr(addr), reason)

    def explain(self, public: bytes, reason: str) -> str:
        """The reason for a peer's path in words, with which NAT is hard when that is why."""
        text = REASON_TEXT.get(reason, reason)
        if reason == "probes-timed-out":
            hard = []
            if self.behaviour == "endpoint-dependent":
                hard.append("this side's NAT maps per destination (hard NAT)")
            if self.selector.peer_mapping(public) in ("endpoint-dependent", "address-dependent",
                                                      "address-and-port-dependent"):
                hard.append("the peer's NAT maps per destination (hard NAT)")
            if hard:
                text += "; " + " and ".join(hard) + ": no direct path"
        return text

    def candidates(self, public: bytes, now: float) -> list[dict[str, Any]]:
        """The peer's candidates for status: address, kind, source, probe state, RTT."""
        out = []
        for path in self.selector.paths(public):
            out.append({
                "address": udp.format_sockaddr(path.addr),
                "kind": path.kind, "source": path.source, "state": path.state,
                "rtt_ms": None if path.rtt is None else round(path.rtt * 1000, 2),
            })
        return out

    def summary(self) -> str:
        drops = " ".join(f"probe-drop-{k}={v}" for k, v in sorted(self.prober.drops.items()))
        return f"probes sent={self.selector.probes_sent} answered-for-peers={self.prober.replies} {drops}".strip()

    def flush(self) -> None:
        """Send the STUN requests due and report what changed (lock held)."""
        if self.stun is None:
            return
        for data, addr in self.stun.datagrams_to_send():
            self._send(data, addr)
        events = self.stun.pop_events()
        if events:
            self._note(events)

    def _send(self, data: bytes, addr: Any) -> None:
        sock = self.tunnel.sock
        assert sock is not None
        # Counted like the data plane's send errors (status "dropped": send-<errno>); a lost
        # probe or request is also a timeout the cores already handle.
        self.tunnel._sendto(sock.sendto, data, addr)

    def restart(self, now: float, local_networks: list[Any]) -> None:
        """The network changed: new local networks, STUN again and probe every current path at once."""
        self.local_networks = local_networks
        if self.stun is not None:
            self.stun.restart(now)
            self.last_restun = now
        for public in self.prober.peers:
            current = self.selector.current(public)
            if current is not None:
                self._send(self.prober.request(public, current, now), current)

    def _note(self, events: list[Any]) -> None:
        assert self.stun is not None
        for event in events:
            kind, server = event[0], udp.format_sockaddr(event[1])
            if kind == "failed":
                log.warning("STUN: no answer from %s", server)
            elif kind == "changed":
                log.info("STUN: %s now sees us as %s (was %s)", server,
                         udp.format_hostport(*event[3]), udp.format_hostport(*event[2]))
        reflexive = self.stun.reflexive()
        behaviour = self.stun.mapping_behaviour()
        if behaviour != self.behaviour:
            self.selector.set_own_mapping(behaviour, time.monotonic())
        if reflexive != self.reflexive or behaviour != self.behaviour:
            self.reflexive, self.behaviour = reflexive, behaviour
            shown = ", ".join(udp.format_hostport(ip, port) for ip, port in reflexive) or "none"
            log.info("STUN: reflexive address %s; NAT mapping %s", shown, behaviour)
            discovery = self.tunnel.discovery
            if discovery is not None:
                self.loop.call_soon_threadsafe(discovery.reflexive_changed, list(reflexive), behaviour)


def networks_of(lan: list[tuple[str, Any]]) -> list[Any]:
    return [ipaddress.ip_network(a.network) for _, a in lan]
