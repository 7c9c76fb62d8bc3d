"""What users see of a running tunnel: status, metrics, the wg UAPI, the log.

``Surface`` answers ``wgdisco status`` (``status()``, schema docs/status.schema.json, over the
control socket), Prometheus scrapes (``render_metrics()``), ``wg show``/``wg set`` (``snapshot``/
``apply_set`` behind ``handle_uapi``), turns the node's events into log lines, and counts and
summarises dropped input for the shutdown log. It reads the tunnel's public state and changes
peers only through the node core (proto/node.py).
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from wgdisco.daemon import clock
from wgdisco.errors import LocalError
from wgdisco.io import udp
from wgdisco.proto import keys, uapi
from wgdisco.proto.device import Peer
from wgdisco.proto.events import (
    AnnounceWanted, BirthdayChanged, BrowseWanted, CandidateProbed, EndpointChanged, GaveUp, HandshakeCompleted, HandshakeTried,
    LookupWanted, MeshAddressChanged, MeshNamesChanged, NatClassified, NatSuspected, PathReasonChanged, PeerAdmitted,
    PeerRemoved, PortMappingChanged, RecordChanged, ReflexiveChanged, SocketsClosed, SocketsWanted, StunChanged,
    PmtuChanged, StunFailed,
)

log = logging.getLogger("wgdisco")

REMOVED_WHY = {  # PeerRemoved.reason, for the log (docs/mesh.md "Admission and removal")
    "goodbye": "goodbye",
    "expired": "record expired, no handshake for 5 min",
    "banned": "banned: MeshDeny; its sessions, name and addresses are gone",
    "old-key": "old-key: known only under a mesh key whose window ended",
}


def short(peer: Peer) -> str:
    return short_key(peer.public_key)


def short_key(public: bytes) -> str:
    return keys.key_to_base64(public)[:8] + "…"


def fmt_addr(addr: Any) -> str:
    return "(none)" if addr is None else udp.format_sockaddr(addr)


class Surface:
    """Status, metrics, UAPI and log lines over one Tunnel (daemon/tunnel.py, which holds this;
    typed ``Any`` here so that this module does not import that one)."""

    def __init__(self, tunnel: Any) -> None:
        self.tunnel = tunnel
        self._handlers: dict[type, Callable[[Any], None]] | None = None

    # --- UAPI (wg show / wg set) ------------------------------------------------

    def handle_uapi(self, request: bytes) -> bytes:
        t = self.tunnel
        try:
            op = uapi.parse_request(request)
        except uapi.UapiError as e:
            return uapi.format_set_result(e.errno)
        with t.lock:
            if isinstance(op, uapi.GetRequest):
                return uapi.format_get(self.snapshot())
            try:
                self.apply_set(op)
            except uapi.UapiError as e:
                return uapi.format_set_result(e.errno)
            finally:
                t.flush()
        if t.dataplane is not None:
            t.dataplane.wake()  # deadlines or the socket may have changed
        return uapi.format_set_result(0)

    def handle_control(self, command: str) -> Any:
        """``status``, ``members`` (wgdisco mesh members), ``reload`` (as SIGHUP; wgdisco mesh ban)."""
        if command == "reload":
            return self._reload()
        if command not in ("status", "members"):
            raise LocalError(f"unknown command {command!r} (try: status, members, reload)")
        with self.tunnel.lock:
            if command == "members":
                from wgdisco.daemon import meshlife

                return meshlife.members(self.tunnel)
            return self.status()

    async def _reload(self) -> dict[str, Any]:
        error = await self.tunnel.reload()
        return {"reloaded": error is None} if error is None else {"reloaded": False, "error": error}

    def status(self) -> dict[str, Any]:
        """What ``wgdisco status --json`` prints (schema: docs/status.schema.json). Lock held."""
        t = self.tunnel
        device, node, sock = t.device, t.node, t.sock
        assert device is not None and node is not None and sock is not None
        now = clock.now()
        m = node.membership
        peers = []
        for public, peer in device.peers.items():
            st = node.path_status(public, now)
            last = 0.0 if peer.last_handshake is None else peer.last_handshake + device.wall_offset
            peers.append({
                "public_key": keys.key_to_base64(public),
                "endpoint": None if peer.endpoint is None else fmt_addr(peer.endpoint),
                "endpoint_source": node.endpoint_source(public),
                "path": st.path,
                "reason": st.reason,
                "reason_text": st.reason_text,
                "path_basis": st.basis,
                "path_mtu": self._path_mtu(public),
                "local_port": self._local_port(peer.endpoint),
                "birthday": self._birthday(public),
                "candidates": [{
                    "address": udp.format_sockaddr(p.addr), "kind": p.kind, "source": p.source, "state": p.state,
                    "rtt_ms": None if p.rtt is None else round(p.rtt * 1000, 2),
                } for p in node.candidates(public)],
                "latest_handshake": int(last),
                "rx_bytes": peer.rx_bytes,
                "tx_bytes": peer.tx_bytes,
                "persistent_keepalive": peer.persistent_keepalive,
                "allowed_ips": [str(n) for n in device.allowed_ips.entries_for_peer(peer)],
                "mesh": node.is_mesh_peer(public),
                "mesh_addresses": [str(n.network_address) for n in node.mesh_addresses(public)]
                if node.is_mesh_peer(public) else [],
                "mesh_name": m.name_of(public)[0] if m is not None and m.is_member(public) else None,
                "mesh_names": m.names_of(public) if m is not None else [],
                "mesh_generation": m.generation_label(public) if m is not None else None,
            })
        return {
            "interface": t.name,
            "public_key": keys.key_to_base64(device.identity.public) if t.has_key else "(none)",
            "listen_port": udp.local_port(sock),
            "nat": {
                "reflexive": [udp.format_hostport(ip, port) for ip, port in node.reflexive],
                "mapping": node.mapping_detail,
                "filtering": node.filtering,
                "open": node.open_address,
            },
            "port_mapping": None if t.portmapping is None else t.portmapping.status(),
            "peers": peers,
            "mesh": None if m is None else {
                "id": node.mesh.id,
                "ipv4": str(node.mesh.ipv4),
                "ipv6": str(node.mesh.ipv6),
                "addresses": [str(a.ip) for a in node.own_mesh_interfaces()],
                "peers": sum(1 for p in device.peers if node.is_mesh_peer(p)),
                "max_peers": node.mesh.max_peers,
                "name": m.name,
                "names": m.names_of(node.public_key),
                "contested_names": list(m.hosts().contested),
                "hosts_file": None if t.hosts is None else str(t.hosts.file.path),
                "previous_id": None if m.previous is None else m.previous.id,
                "previous_until": None if m.window_end is None else int(m.window_end + device.wall_offset),
                "banned": len(m.deny),
            },
            "dropped": self.drop_counts(),
            "multicast": None if device.multicast is None else {  # proto/multicast.py
                "groups": [str(g) for g in device.multicast.groups],
                "counters": dict(sorted(device.multicast.counters.items())),
            },
            "handshakes": {  # under a flood: cookies answered, work refused (docs/troubleshooting.md)
                "under_load": device.is_loaded(now),
                "cookie_replies_sent": device.counters.get("cookie-replies-sent", 0),
                "cookie_replies_limited": device.drops.get("cookie-reply-limited", 0),
                "over_budget": device.drops.get("handshake-over-budget", 0),
            },
        }

    def _path_mtu(self, public: bytes) -> dict[str, Any]:
        """The peer's path MTU (proto/pmtu.py): the largest inner packet sent to it, the outer IP
        packet that makes, and how it was learnt (docs/troubleshooting.md "Path MTU")."""
        t = self.tunnel
        view = t.node.pmtu_view(public)
        mtu = t.device.mtu
        if view is None:
            return {"inner": mtu, "path": None, "state": "off" if not t.node.traversal else "none",
                    "how": "interface", "black_holes": 0}
        return {"inner": mtu if view.inner is None else view.inner, "path": view.path, "state": view.state,
                "how": "interface" if view.inner is None else view.how, "black_holes": view.black_holes}

    def _local_port(self, endpoint: Any) -> int | None:
        """The port a peer's packets leave from: an extra (birthday) socket's, else the listen port."""
        t = self.tunnel
        if endpoint is None:
            return None
        sid = udp.via_socket(endpoint)
        sock = t.sock if sid is None else t.sender.extra.get(sid)
        return None if sock is None else udp.local_port(sock)

    def _birthday(self, public: bytes) -> dict[str, Any]:
        node = self.tunnel.node
        attempts, wins, failures = node.birthday.stats(public)
        return {"role": node.birthday.role(public), "attempts": attempts, "wins": wins,
                "sockets": len(node.birthday.sockets(public))}

    def render_metrics(self) -> str:
        """Prometheus text format: handshakes, traffic, probes, path changes, STUN/DNS errors, drops."""
        t = self.tunnel
        device, node = t.device, t.node
        assert device is not None and node is not None
        out: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
            out.append(f"# HELP wgdisco_{name} {help_}")
            out.append(f"# TYPE wgdisco_{name} {kind}")
            out.extend(f"wgdisco_{name}{labels} {sample_value(value)}" for labels, value in samples)

        iface = f'interface="{t.name}"'
        with t.lock:
            peers = [(f'{{{iface},peer="{keys.key_to_base64(pub)}"}}', pub, p) for pub, p in device.peers.items()]
            metric("handshakes_total", "counter", "Completed WireGuard handshakes.",
                   [(lbl, node.handshakes(pub)) for lbl, pub, _ in peers])
            metric("receive_bytes_total", "counter", "Bytes received from the peer (outer, as wg show).",
                   [(lbl, p.rx_bytes) for lbl, _, p in peers])
            metric("transmit_bytes_total", "counter", "Bytes sent to the peer (outer, as wg show).",
                   [(lbl, p.tx_bytes) for lbl, _, p in peers])
            metric("latest_handshake_seconds", "gauge", "Unix time of the latest handshake, 0 if none.",
                   [(lbl, 0 if p.last_handshake is None else int(p.last_handshake + device.wall_offset))
                    for lbl, _, p in peers])
            metric("path_changes_total", "counter", "Endpoint changes (roaming, probes, hints).",
                   [(lbl, node.path_changes(pub)) for lbl, pub, _ in peers])
            metric("path_mtu_bytes", "gauge", "Largest inner packet sent to the peer (path MTU discovery; "
                   "the interface MTU when no smaller path was found).",
                   [(lbl, min(p.max_inner, device.mtu)) for lbl, _, p in peers])
            metric("path_mtu_black_holes_total", "counter", "Path MTU black holes detected (large packets lost "
                   "while small ones arrived).",
                   [(lbl, getattr(node.pmtu_view(pub), "black_holes", 0)) for lbl, pub, _ in peers])
            st = node.stats()
            metric("probes_sent_total", "counter", "Path probes sent.", [(f"{{{iface}}}", st.probes_sent)])
            metric("probe_replies_total", "counter", "Path probes answered for peers.",
                   [(f"{{{iface}}}", st.probe_replies)])
            metric("stun_errors_total", "counter", "STUN transactions that timed out or got an error response.",
                   [(f"{{{iface}}}", st.stun_errors)])
            dns_errors = t.discovery.dns_errors() if t.discovery is not None else 0
            metric("dns_errors_total", "counter", "Failed DNS-SD lookups and updates.", [(f"{{{iface}}}", dns_errors)])
            busy = t.dataplane.busy if t.dataplane is not None else None
            metric("busy_poll_spins_total", "counter",
                   "Data-plane spins after sending (proto/busypoll.py), by whether a packet came in time.",
                   [(f'{{{iface},result="hit"}}', busy.hits if busy is not None else 0),
                    (f'{{{iface},result="miss"}}', busy.misses if busy is not None else 0)])
            metric("busy_poll_seconds_total", "counter", "Seconds the data plane spent spinning.",
                   [(f"{{{iface}}}", round(busy.total_spent, 6) if busy is not None else 0)])
            metric("cookie_replies_sent_total", "counter", "Cookie replies sent while under load (whitepaper §5.4.7).",
                   [(f"{{{iface}}}", device.counters.get("cookie-replies-sent", 0))])
            metric("dropped_total", "counter", "Input dropped, by reason (cookie-reply-limited and "
                   "handshake-over-budget: a handshake flood met its budget).",
                   [(f'{{{iface},reason="{reason}"}}', n) for reason, n in sorted(self.drop_counts().items())])
            mc = device.multicast
            metric("multicast_total", "counter", "Multicast over the tunnel (proto/multicast.py), by what happened "
                   "(multicast-sent, multicast-received, multicast-received-over-budget, ...).",
                   [(f'{{{iface},what="{what}"}}', n) for what, n in sorted(mc.counters.items())] if mc else [])
        return "\n".join(out) + "\n"

    def snapshot(self) -> uapi.DeviceSnapshot:
        t = self.tunnel
        device = t.device
        assert device is not None and t.sock is not None
        peers = []
        for peer in device.peers.values():
            last = 0.0 if peer.last_handshake is None else peer.last_handshake + device.wall_offset
            psk = peer.handshake.preshared_key
            peers.append(uapi.PeerSnapshot(
                public_key=peer.public_key,
                preshared_key=None if psk == bytes(32) else psk,
                endpoint=None if peer.endpoint is None else udp.from_sockaddr(peer.endpoint),
                last_handshake=last, tx_bytes=peer.tx_bytes, rx_bytes=peer.rx_bytes,
                persistent_keepalive_interval=peer.persistent_keepalive,
                allowed_ips=tuple(device.allowed_ips.entries_for_peer(peer)),
            ))
        return uapi.DeviceSnapshot(
            # no key yet (wgdisco-userspace before wg setconf): none, as wireguard-go reports it
            private_key=device.identity.private if t.has_key else None, listen_port=udp.local_port(t.sock),
            fwmark=t.routing.fwmark, peers=tuple(peers),
        )

    def apply_set(self, req: uapi.SetRequest) -> None:
        t = self.tunnel
        device, node = t.device, t.node
        assert device is not None and node is not None and t.sock is not None
        now = clock.now()
        d = req.device
        if d.private_key == bytes(32):  # `wg set IF private-key /dev/null`: no key (wireguard-go)
            t.key_removed()
        elif d.private_key is not None:
            node.set_identity(d.private_key, now)
            t.key_arrived()  # the first key, or one after a removal: sending, the node and discovery begin
        if d.fwmark is not None and d.fwmark != t.routing.fwmark:
            t.set_fwmark(d.fwmark)
        if d.listen_port is not None and d.listen_port != udp.local_port(t.sock):
            t.rebind(d.listen_port)
            node.set_port(udp.local_port(t.sock), now)
        if d.replace_peers:
            for public in list(device.peers):
                node.remove_peer(public)
        for op in req.peers:
            self.apply_peer(op, now)

    def apply_peer(self, op: uapi.PeerConfigOp, now: float, strict: bool = True) -> None:
        """One peer's changes, from ``wg set`` or a config (start, SIGHUP reload: the same path),
        all through the node's setters (lock held). ``strict``: a bad endpoint fails the request
        (UAPI, EINVAL) instead of being logged and skipped (a config)."""
        t = self.tunnel
        device, node = t.device, t.node
        if op.public_key == device.identity.public:
            return
        public = op.public_key
        if op.remove:
            node.remove_peer(public)
            return
        if public not in device.peers:
            if op.update_only:
                return
            node.add_peer(public, now)
        if op.preshared_key is not None:
            node.set_preshared_key(public, None if op.preshared_key == bytes(32) else op.preshared_key)
        if op.endpoint is not None:
            try:
                node.set_endpoint(public, udp.to_sockaddr(t.sock, *op.endpoint), "uapi" if strict else "config")
            except (LocalError, OSError) as e:
                if strict:
                    raise uapi.UapiError(uapi.EINVAL, "bad endpoint") from None
                log.warning("peer %s: cannot use endpoint %s: %s", short_key(public),
                            udp.format_hostport(*op.endpoint), e)
        if op.replace_allowed_ips or op.allowed_ips:
            node.set_allowed_ips(public, [(a.network, a.remove) for a in op.allowed_ips], replace=op.replace_allowed_ips)
        if op.persistent_keepalive_interval is not None:
            node.set_persistent_keepalive(public, op.persistent_keepalive_interval, now)

    # --- the node's events, as log lines -----------------------------------------

    def on_event(self, event: Any) -> None:
        """One of the node's events (proto/events.py), through the table: log lines, our record for
        discovery, extra sockets (under the tunnel's lock; asyncio work goes to the loop)."""
        self.handlers[type(event)](event)

    @property
    def handlers(self) -> dict[type, Callable[[Any], None]]:
        """{event type: handler}, one per member of ``events.Event`` (a test keeps it exhaustive)."""
        if self._handlers is None:
            self._handlers = {
                HandshakeCompleted: lambda e: log.info("peer %s: handshake completed", short_key(e.peer)),
                EndpointChanged: lambda e: log.info("peer %s: endpoint %s -> %s (%s)", short_key(e.peer),
                                                    fmt_addr(e.old), fmt_addr(e.new), e.cause),
                GaveUp: lambda e: log.info("peer %s: no handshake after %d attempts, giving up until new traffic",
                                           short_key(e.peer), e.attempts),
                PathReasonChanged: lambda e: log.info("peer %s: path: %s", short_key(e.peer), e.text),
                PmtuChanged: lambda e: (log.warning if e.how == "black-hole" else log.info)(
                    "peer %s: path MTU: %s", short_key(e.peer), e.text),
                CandidateProbed: lambda e: log.info("peer %s: new candidate %s (%s); probing it once",
                                                    short_key(e.peer), fmt_addr(e.addr), e.source),
                HandshakeTried: lambda e: log.debug("peer %s: handshake tried at hinted %s (%s)",
                                                    short_key(e.peer), fmt_addr(e.addr), e.source),
                NatSuspected: lambda e: log.info("peer %s: no answer for %.0f s; checking our NAT mapping again (STUN)",
                                                 short_key(e.peer), e.silent_for),
                StunFailed: lambda e: log.warning("STUN: no answer from %s", fmt_addr(e.server)),
                StunChanged: lambda e: log.info("STUN: %s now sees us as %s (was %s)", fmt_addr(e.server),
                                                udp.format_hostport(*e.new), udp.format_hostport(*e.old)),
                ReflexiveChanged: self._on_reflexive,
                RecordChanged: self._on_record,
                PeerAdmitted: lambda e: log.info("peer %s: admitted to the mesh, %s", short_key(e.peer),
                                                 ", ".join(str(a) for a in e.addresses)),
                PeerRemoved: lambda e: log.info("peer %s: removed from the mesh (%s)", short_key(e.peer),
                                                REMOVED_WHY.get(e.reason, e.reason)),
                MeshAddressChanged: self._on_mesh_address,
                PortMappingChanged: lambda e: log.info("record: the gateway's port mapping %s is a candidate",
                                                       "(none)" if e.external is None
                                                       else udp.format_hostport(*e.external)),
                NatClassified: self._on_classified,
                BirthdayChanged: lambda e: log.info("peer %s: %s (birthday probes sent so far: %d)",
                                                    short_key(e.peer), e.text, e.probes),
                SocketsWanted: lambda e: self.tunnel.open_extra(e.ids),
                SocketsClosed: lambda e: self.tunnel.close_extra(e.ids),
                AnnounceWanted: lambda e: self._on_loop("discovery", "announce_again"),
                MeshNamesChanged: lambda e: self._on_loop("hosts", "update", e),
                LookupWanted: lambda e: self._on_loop("discovery", "lookup", e.peers),
                BrowseWanted: lambda e: self._on_loop("discovery", "browse"),
            }
        return self._handlers

    def _on_loop(self, part: str, method: str, *args: Any) -> None:
        """Call ``tunnel.<part>.<method>(*args)`` on the asyncio loop, if that part runs."""
        t = self.tunnel
        target = getattr(t, part)
        if target is not None and t.loop is not None:
            t.loop.call_soon_threadsafe(getattr(target, method), *args)

    def _on_reflexive(self, e: ReflexiveChanged) -> None:
        shown = ", ".join(udp.format_hostport(ip, port) for ip, port in e.reflexive) or "none"
        log.info("STUN: reflexive address %s; NAT mapping %s", shown, e.behaviour)

    def _on_record(self, e: RecordChanged) -> None:
        t = self.tunnel
        if t.discovery is not None and t.loop is not None and t.has_key:  # never the throwaway key
            t.loop.call_soon_threadsafe(t.discovery.record_changed, e.record, e.withdrawn)

    def _on_mesh_address(self, e: MeshAddressChanged) -> None:
        t = self.tunnel
        ours = t.node is not None and e.peer == t.node.public_key
        log.info("%s: mesh IPv4 %s -> %s (collision rule: the lower key keeps an address)",
                 "we" if ours else f"peer {short_key(e.peer)}", e.old, e.new)
        if ours and t.loop is not None:
            t.loop.call_soon_threadsafe(t.own_mesh_address_moved, e.old, e.new)

    def _on_classified(self, e: NatClassified) -> None:
        node = self.tunnel.node
        log.info("STUN: NAT filtering %s, mapping %s (RFC 5780 tests)", e.filtering,
                 node.mapping_detail if node is not None else "unknown")

    # --- drops and the shutdown summaries ----------------------------------------

    def drop_counts(self) -> dict[str, int]:
        t = self.tunnel
        drops = dict(t.other_drops)
        if t.node is not None:
            for reason, n in t.node.drops.items():
                drops[reason] = drops.get(reason, 0) + n
        if t.device is not None:
            for reason, n in t.device.drops.items():
                drops[reason] = drops.get(reason, 0) + n
        return drops

    def drop_summary(self) -> str:
        """Dropped input by reason, e.g. ``dropped: malformed=3 mac1=1`` (never secrets)."""
        drops = self.drop_counts()
        if not drops:
            return "dropped: nothing"
        return "dropped: " + " ".join(f"{k}={v}" for k, v in sorted(drops.items()))

    def nat_summary(self) -> str:
        """Probe counters for the log line at shutdown."""
        node = self.tunnel.node
        assert node is not None
        st = node.stats()
        drops = " ".join(f"probe-drop-{k}={v}" for k, v in sorted(st.probe_drops.items()))
        birthday = st.counters.get("birthday-probes", 0)
        return (f"probes sent={st.probes_sent} birthday-probes={birthday} answered-for-peers={st.probe_replies} "
                f"{drops}").strip()

    def discovery_summary(self) -> str:
        """What records did, e.g. ``hints-ignored-live=3 records-not-a-peer=1`` (never secrets)."""
        t = self.tunnel
        assert t.node is not None and t.discovery is not None
        counts = {**t.node.stats().counters, **t.discovery.counters, **t.discovery.mdns_counts()}
        return " ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "nothing to report"


def sample_value(value: float) -> str:
    """A Prometheus sample value, exact: integers in full (``{:g}`` would print 1234567 as
    1.23457e+06), floats as Python's shortest round-trip repr."""
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return str(int(value))
    return repr(float(value))
