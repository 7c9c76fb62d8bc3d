"""A running interface: its lifecycle, from ``start`` to teardown, and the ways into it.

``Tunnel`` opens the TUN device and the UDP socket, builds the Device and the node core
(proto/node.py), adds the configured peers and routes (daemon/routing.py), starts the
data plane (daemon/dataplane.py), the UAPI and control sockets (answered by
daemon/surface.py), discovery, the network monitor and metrics; runs until SIGINT/SIGTERM
or until its link is deleted; reloads peers on SIGHUP; rebinds the socket for ``wg set
listen-port``; runs the wg-quick hooks; and tears it all down again.

Configured over UAPI (``over_uapi``, wgdisco-userspace): the config holds no key and no
peers, the link is left down (as wireguard-go leaves it) and ``wg setconf`` brings the rest.
Until a private key arrives the Device runs on a throwaway key that nobody learns:
``has_key`` is false, the UAPI reports no private key, nothing is sent on the socket (so
no handshake is initiated or answered) and the node is not started (no STUN, no record,
no discovery); ``key_arrived`` starts them with the real key.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import contextlib
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from typing import Any, Callable

from wgdisco import config as configmod
from wgdisco.daemon import clock, memtrace, sticky
from wgdisco.daemon.dataplane import DataPlane
from wgdisco.daemon.rerun import Rerun
from wgdisco.daemon.routing import Routing
from wgdisco.daemon.surface import Surface, fmt_addr, short_key
from wgdisco.errors import ConfigError, LocalError
from wgdisco.io import netlink, systemd, udp
from wgdisco.io.tun import Tun
from wgdisco.io.control import CONTROL_DIR, ControlServer
from wgdisco.io.uapi import UapiServer, answers_get
from wgdisco.proto import core, keys, uapi
from wgdisco.proto.device import Device
from wgdisco.proto.icmp import TooBig, Unreachable
from wgdisco.proto.lookups import Timing as LookupTiming
from wgdisco.proto.paths import Timing as PathTiming
from wgdisco.proto.multicast import GROUP_BURST as MULTICAST_GROUP_BURST
from wgdisco.proto.multicast import GROUP_RATE as MULTICAST_GROUP_RATE
from wgdisco.proto.multicast import Multicast
from wgdisco.proto.node import Node
from wgdisco.proto.nodetiming import Timing as NodeTiming
from wgdisco.proto.timers import Timing

log = logging.getLogger("wgdisco")

DEFAULT_MTU = 1420


class Tunnel:
    """A running interface: TUN + UDP socket + Device + UAPI."""

    def __init__(
        self,
        cfg: configmod.Config,
        *,
        timing: Timing | None = None,
        uapi_dir: str = "/var/run/wireguard",
        handshake_load_threshold: int | None = None,
        gro: bool = True,
        control_dir: str = CONTROL_DIR,
        over_uapi: bool = False,
        notifier: systemd.Notifier | None = None,
        multicast_group_rate: float = MULTICAST_GROUP_RATE,
    ) -> None:
        self.cfg = cfg
        self.multicast_group_rate = multicast_group_rate  # proto/multicast.py (a lab flooder raises it)
        # the service manager (Type=notify): READY/RELOADING/STOPPING; $NOTIFY_SOCKET unless given
        self.notifier = notifier if notifier is not None else systemd.Notifier.from_environ()
        self.over_uapi = over_uapi  # no config file: key, port and peers come with wg setconf
        self.mesh_on = cfg.discovery.mesh_key is not None  # zero-config mesh (docs/mesh.md)
        if self.mesh_on and over_uapi:  # the key comes later over UAPI: addresses would follow a throwaway key
            log.warning("MeshKey is ignored under wgdisco-userspace; run the mesh with wgdisco up")
            self.mesh_on = False
        if self.mesh_on and cfg.interface.private_key is None and not over_uapi:
            cfg.interface.private_key = configmod.mesh_identity(cfg.name)  # generated once, then reused
        self.has_key = cfg.interface.private_key is not None  # false: a throwaway key, nothing is sent
        self.live_task: asyncio.Task[None] | None = None  # over UAPI: starts node and discovery
        self.name = cfg.name
        self.timing = timing
        self.uapi_dir = uapi_dir
        self.load_threshold = handshake_load_threshold
        self.tun: Tun | None = None
        self.device: Device | None = None
        self.stopped = asyncio.Event()
        self.link_deleted = False  # set by the data plane: our interface was deleted under us
        self.lock = threading.Lock()  # the Device, the socket and the counters
        self.dataplane: DataPlane | None = None
        self.node: Node | None = None  # peers, identity, discovery and path policy (proto/node.py)
        self.hosts: Any = None  # wgdisco.daemon.names.HostsSync in mesh mode: names in the hosts file
        self.discovery: Any = None  # wgdisco.daemon.discovery.Discovery when [Discovery] asks for it
        self.netmon: Any = None  # wgdisco.io.netmon.NetworkMonitor
        self.portmapping: Any = None  # daemon/portmapping.PortMapping, with NAT traversal (PortMapping != off)
        # after a network change (a burst asked for while a pass runs gets one more pass: daemon/rerun.py)
        self.regathering = Rerun(self._regather, "re-gathering after a network change")
        self.sticky_check = Rerun(self._recheck_sticky, "the sticky-source check")
        self.loop: asyncio.AbstractEventLoop | None = None
        self.metrics: Any = None
        self.routing = Routing(cfg.name, cfg.interface)  # AllowedIPs routes, policy routing, the fwmark
        self.surface = Surface(self)  # status, metrics, UAPI, log lines
        self.uapi = UapiServer(socket_dir=uapi_dir)
        self.control = ControlServer(socket_dir=control_dir)
        self.other_drops: dict[str, int] = {}  # drops the device does not count (socket, TUN, sends)
        self.sender = udp.Sender(self.other_drops)  # sends on the current socket, UDP GSO
        self.gro = gro  # coalesce received TCP segments into GSO writes to TUN

    @property
    def sock(self) -> socket.socket | None:
        """The UDP socket (the tunnel's listen port); the sender always sends on this one."""
        return self.sender.sock

    @sock.setter
    def sock(self, sock: socket.socket | None) -> None:
        self.sender.sock = sock

    # --- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        cfg, iface = self.cfg, self.cfg.interface
        if os.geteuid() != 0:
            raise LocalError("wgdisco needs root (CAP_NET_ADMIN) to create a TUN interface")
        if await asyncio.to_thread(netlink.link_exists, self.name):
            raise LocalError(f"interface {self.name} already exists")
        self._hooks(iface.pre_up, "PreUp")
        routed = [n for pc in cfg.peers for n in pc.allowed_ips]
        if self.routing.default_routes(routed):
            await self.routing.choose_policy_table(self.sock)
        self.sock = udp.open_udp(iface.listen_port or 0, fwmark=self.routing.fwmark)
        udp.enable_gro(self.sock)
        udp.enable_pktinfo(self.sock)  # sticky sources: replies leave from the address a peer wrote to
        try:
            self.tun = Tun(self.name, vnet_hdr=self.gro)
            now = clock.now()
            kw = {} if self.load_threshold is None else {"handshake_load_threshold": self.load_threshold}
            # no key yet (over UAPI): a throwaway one that is never shown, sent or published
            private_key = iface.private_key or keys.generate_private_key(os.urandom(keys.KEY_LEN))
            self.device = Device(
                private_key,
                rng=os.urandom, now=now, wall_offset=time.time() - now,
                mtu=iface.mtu or DEFAULT_MTU, timing=self.timing, addr_key=udp.sockaddr_bytes, **kw,
            )
            wire_sources(self.sender, self.device)
            discovering = cfg.discovery.mdns or cfg.discovery.domain is not None
            mesh = previous = None
            if self.mesh_on:
                from wgdisco.daemon import meshlife

                d = cfg.discovery
                mesh, previous = await asyncio.to_thread(meshlife.meshes, d)
                if not discovering:
                    log.warning("mesh mode without discovery (mDNS off and no Domain): no member can be found")
            self.node = Node(
                self.device, rng=os.urandom, wall=time.time(),
                addr_of=lambda ip, port: udp.to_sockaddr(self.sock, ip, port),  # type: ignore[arg-type]
                host_of=lambda addr: udp.from_sockaddr(addr)[0], format_addr=fmt_addr,
                port=udp.local_port(self.sock), traversal=bool(discovering or cfg.discovery.stun),
                stun_servers=await self._stun_servers(), domain=cfg.discovery.domain or "local",
                allowed=iface.addresses, mesh=mesh,
                timing=NodeTiming(lookups=LookupTiming(poll_interval=cfg.discovery.poll_interval),
                                  paths=PathTiming(nat_keepalive=cfg.discovery.nat_keepalive)),
                via=udp.via, via_socket=udp.via_socket,
                mesh_name=self._mesh_name() if mesh is not None else None,
                unicast=cfg.discovery.domain is not None,
            )
            if mesh is not None and (previous is not None or cfg.discovery.mesh_deny):
                self.node.set_mesh(mesh, previous, cfg.discovery.previous_mesh_key_until, cfg.discovery.mesh_deny, now)
            # ICMP unreachable for what no peer takes (the kernel module's wg_xmit); a peer without
            # an endpoint too, unless discovery may still find one (then its packets wait)
            self.device.unreachable = Unreachable(no_endpoint=not self.node.traversal)
            # over a peer's discovered path MTU: ICMP "too big" back, or IPv4 fragments (issue 25)
            self.device.too_big = TooBig()
            self.device.multicast = self._multicast()
            own = self.node.own_mesh_interfaces()
            addresses = list(iface.addresses) + [a for a in own if a not in iface.addresses]
            routed += self.node.mesh_prefixes()
            for pc in cfg.peers:
                self._add_config_peer(pc, now)
            await asyncio.to_thread(
                netlink.configure_link, self.name, addresses=addresses, mtu=iface.mtu or DEFAULT_MTU,
                up=not self.over_uapi,  # over UAPI the link stays down until `ip link set up` (wg-quick)
                # multicast over the tunnel: mDNS over IPv6 leaves from our tunnel address, which the
                # peers' cryptokey routing admits, not from a link-local one, which it drops
                link_local=self.device.multicast is None,
            )
            await self.routing.add_routes(routed, self.sock)
            await self.uapi.start(self.name, self.surface.handle_uapi)
            await self.control.start(self.name, self.surface.handle_control)
        except BaseException:
            await self._teardown()
            raise
        node = self.node
        self.dataplane = DataPlane(
            self.name, tun=self.tun, device=self.device, node=node, sender=self.sender, lock=self.lock,
            drops=self.other_drops, flush=self.flush, on_link_deleted=self._link_deleted, gro=self.gro,
        )
        self.dataplane.start()
        if self.has_key:
            try:
                await self._go_live()
            except BaseException:
                await self._teardown()
                raise
        # network changes: sticky sources follow routes (daemon/sticky.py); NAT traversal gathers again
        from wgdisco.io.netmon import NetworkMonitor

        self.netmon = NetworkMonitor(self._network_changed, ignore_ifnames={self.name})
        try:
            await self.netmon.start()
        except LocalError as e:
            log.warning("network changes will not be noticed: %s", e)
            self.netmon = None
        if cfg.discovery.metrics is not None:
            from wgdisco.io.metrics import MetricsServer

            self.metrics = MetricsServer(self.surface.render_metrics)
            where = cfg.discovery.metrics
            if not is_loopback(where.host):
                log.warning("Metrics = %s is reachable from other hosts: it shows peer public keys, endpoints "
                            "and traffic to anyone who connects (bind it to 127.0.0.1 or ::1)", where)
            try:
                await self.metrics.start(where.host, where.port)
            except LocalError:
                await self._teardown()
                raise
        # Everything made so far lives as long as the daemon: out of the collector's sight, so that
        # a full collection (triggered by the garbage of a packet flood) does not walk it and
        # stall the data plane for tens of milliseconds.
        gc.freeze()
        self._hooks(iface.post_up, "PostUp")
        if mesh is not None:
            from wgdisco.daemon.names import HostsSync

            self.hosts = HostsSync(self.name)
            with self.lock:
                self.hosts.update(self.node.membership.hosts())
            log.info("mesh: our name %s; names resolve through %s", self.node.membership.name or "(none)",
                     self.hosts.file.path)
            log.info("mesh %s: our addresses %s; prefixes %s and %s through %s", mesh.id,
                     ", ".join(str(a) for a in own), mesh.ipv4, mesh.ipv6, self.name)
            if (line := meshlife.describe(cfg.discovery, time.time())):
                log.info("mesh: %s", line)
        shown = keys.key_to_base64(self.device.identity.public) if self.has_key else "(none: set it with wg setconf)"
        log.info(
            "interface %s up: public key %s, listening on UDP port %d, %d peer(s)",
            self.name, shown, udp.local_port(self.sock), len(cfg.peers),
        )

    async def _go_live(self) -> None:
        """With a real key: the node begins (addresses, STUN, our record), then discovery."""
        cfg, node = self.cfg, self.node
        assert node is not None
        lan = await asyncio.to_thread(netlink.interface_addresses, {self.name, "lo"})
        if cfg.discovery.mdns or cfg.discovery.domain is not None:
            from wgdisco.daemon.discovery import Discovery  # zeroconf/dnspython only when used

            with self.lock:
                record = node.record()
            self.discovery = Discovery(cfg.discovery, cfg.path, record, feed=self.feed, peer_keys=self.peer_keys)
        self.feed(lambda node, now: node.start(lan, now))
        if self.discovery is not None:
            await self.discovery.start(lan)
        if node.traversal and self.portmapping is None and cfg.discovery.port_mapping != "off":
            await self._start_port_mapping()

    def _multicast(self) -> Multicast | None:
        """Link-local multicast over the tunnel (proto/multicast.py, docs/mesh.md): to and from
        peers that run wgdisco, and the peers ``MulticastPeers`` names."""
        groups = self.cfg.discovery.multicast_groups()
        if not groups:
            return None
        node, named = self.node, frozenset(self.cfg.discovery.multicast_peers)
        assert node is not None
        log.info("multicast over the tunnel: %s", ", ".join(groups))
        rate = self.multicast_group_rate
        return Multicast(groups, eligible=lambda public: public in named or node.runs_wgdisco(public),
                         group_rate=rate, group_burst=max(MULTICAST_GROUP_BURST, int(rate * 2)))

    async def _start_port_mapping(self) -> None:
        """The gateway maps our listen port (PCP, NAT-PMP, UPnP IGD); the node publishes it."""
        from wgdisco.daemon.portmapping import PortMapping

        assert self.sock is not None
        self.portmapping = PortMapping(
            self.cfg.discovery.port_mapping, internal_port=udp.local_port(self.sock),
            set_mapping=lambda external: self.feed(lambda node, now: node.set_mapping(external, now)))
        await self.portmapping.start()

    def key_arrived(self) -> None:
        """Over UAPI, the first private key (``wg setconf``; on the loop, lock held): from now on the
        socket sends, and the node and discovery start."""
        if self.has_key:
            return
        self.has_key = True
        log.info("interface %s: private key set, public key %s", self.name,
                 keys.key_to_base64(self.device.identity.public) if self.device is not None else "?")
        self._then(self._go_live_logged())

    def key_removed(self) -> None:
        """``wg set IF private-key /dev/null`` (lock held): no key, as wireguard-go with a zero key.
        The device moves to a throwaway key (sessions expire, nothing answers to the old key), the
        socket sends nothing, our record is withdrawn; a new key starts it all again."""
        if not self.has_key:
            return
        assert self.node is not None
        self.has_key = False
        self.node.set_identity(keys.generate_private_key(os.urandom(keys.KEY_LEN)), clock.now())
        log.info("interface %s: private key removed; sending nothing until one is set", self.name)
        self._then(self._stop_discovery())

    def _then(self, coro: Any) -> None:
        """Run ``coro`` after whatever key change came before it (they must not overlap)."""
        previous = self.live_task

        async def chained() -> None:
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            await coro

        self.live_task = asyncio.get_running_loop().create_task(chained())

    async def _stop_discovery(self) -> None:
        discovery, self.discovery = self.discovery, None
        if discovery is not None:
            await discovery.close()  # goodbyes and the DNS withdrawal of the record with the old key

    async def _go_live_logged(self) -> None:
        try:
            await self._go_live()
        except (ConfigError, LocalError) as e:
            log.error("discovery not started: %s", e)

    async def _stun_servers(self) -> list[Any]:
        """STUN servers from ``[Discovery] STUN``, resolved once (none is ever assumed)."""
        servers = []
        for endpoint in self.cfg.discovery.stun:
            try:
                servers.append(await asyncio.to_thread(udp.to_sockaddr, self.sock, endpoint.host, endpoint.port))
            except (LocalError, OSError) as e:
                log.warning("STUN server %s: cannot resolve: %s", endpoint, e)
        return servers

    def feed(self, fn: Callable[[Node, float], Any]) -> Any:
        """Run ``fn(node, now)`` under the lock, send what the node queued, wake the data plane;
        ``fn``'s result. Any thread; the asyncio side's way into the node (discovery, network changes)."""
        with self.lock:
            if self.node is None:
                return None
            result = fn(self.node, clock.now())
            self.flush()
        if self.dataplane is not None:
            self.dataplane.wake()
        return result

    def own_mesh_address_moved(self, old: Any, new: Any) -> None:
        """The collision rule moved our IPv4 (a lower key took it; on the loop): the interface follows."""
        async def move() -> None:
            try:
                if new is not None:
                    await asyncio.to_thread(netlink.configure_link, self.name,
                                            addresses=[ipaddress.ip_interface(f"{new}/32")],
                                            mtu=self.cfg.interface.mtu or DEFAULT_MTU, up=not self.over_uapi)
                if old is not None:
                    await asyncio.to_thread(netlink.remove_address, self.name, ipaddress.ip_interface(f"{old}/32"))
            except LocalError as e:
                log.error("mesh: %s", e)

        asyncio.ensure_future(move())

    def peer_keys(self) -> frozenset[bytes]:
        with self.lock:
            return self.node.peers if self.node is not None else frozenset()

    def flush(self) -> None:
        """Send what the node queued and act on its events (caller holds the lock)."""
        assert self.node is not None and self.sock is not None
        core.flush(self.node, self._send_out, self.surface.on_event)  # one table (Surface.handlers)

    def _send_out(self, out: list[tuple[bytes, Any]]) -> None:
        if not self.has_key:  # over UAPI, before wg setconf: the throwaway key says nothing
            self.other_drops["no-private-key"] = self.other_drops.get("no-private-key", 0) + len(out)
        else:
            self.sender.send_all(out)

    def open_extra(self, ids: tuple[int, ...]) -> None:
        """Extra sockets for birthday punching (proto/birthday.py; caller holds the lock)."""
        for sid in ids:
            try:
                sock = udp.open_extra(fwmark=self.routing.fwmark)
            except (LocalError, OSError) as e:  # e.g. EMFILE: the attempt goes on with fewer
                self.other_drops["extra-socket-failed"] = self.other_drops.get("extra-socket-failed", 0) + 1
                log.warning("birthday punching: cannot open an extra socket: %s", e)
                return
            self.sender.extra[sid] = sock
            if self.dataplane is not None:
                self.dataplane.add_extra(sid, sock)

    def close_extra(self, ids: tuple[int, ...]) -> None:
        for sid in ids:
            sock = self.sender.extra.pop(sid, None)
            if sock is None:
                continue
            if self.dataplane is not None:
                self.dataplane.remove_extra(sock)
            else:
                sock.close()

    def _add_config_peer(self, pc: configmod.PeerConfig, now: float, was: configmod.PeerConfig | None = None) -> None:
        """A [Peer] of the config, new or (``was``) changed since: as a ``wg set`` of what differs,
        through the one code path UAPI takes (Surface.apply_peer, the node's setters)."""
        def changed(field: str) -> bool:
            return was is None or getattr(pc, field) != getattr(was, field)

        endpoint = None if pc.endpoint is None or not changed("endpoint") else (pc.endpoint.host, pc.endpoint.port)
        self.surface.apply_peer(uapi.PeerConfigOp(
            public_key=pc.public_key,
            preshared_key=(pc.preshared_key or bytes(32)) if changed("preshared_key") and (was or pc.preshared_key)
            else None,
            endpoint=endpoint,
            persistent_keepalive_interval=pc.persistent_keepalive if changed("persistent_keepalive")
            and (was is not None or pc.persistent_keepalive) else None,
            replace_allowed_ips=was is not None and changed("allowed_ips"),
            allowed_ips=tuple(uapi.AllowedIpOp(n) for n in pc.allowed_ips) if changed("allowed_ips") else (),
        ), now, strict=False)

    async def run(self, on_ready: Callable[[], None] | None = None) -> None:
        """Start, then serve until SIGINT/SIGTERM, then tear down. ``on_ready``: called once the
        interface and its UAPI socket exist (wgdisco-userspace lets its parent return then)."""
        await self.start()
        if on_ready is not None:
            on_ready()
        loop = asyncio.get_running_loop()
        trace = memtrace.start(os.environ, loop)  # None unless WGDISCO_TRACEMALLOC is set
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopped.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self._reload_notified()))
        try:
            await self._notify_ready()
            await self.stopped.wait()
        finally:
            self.notifier.stopping(f"{self.name} going down")
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            if trace is not None:
                trace.stop()
                loop.remove_signal_handler(signal.SIGUSR2)
            if self.link_deleted:
                log.info("interface %s was deleted; shutting down", self.name)
            log.info("interface %s going down; %s", self.name, self.surface.drop_summary())
            if self.discovery is not None:
                log.info("discovery: %s", self.surface.discovery_summary())
            if self.node is not None and self.node.traversal:
                log.info("nat traversal: %s", self.surface.nat_summary())
            # Hooks belong to whoever takes the link down: wg-quick down runs PreDown/PostDown around
            # its own `ip link del`, and a bare `ip link del` runs none (as with kernel WireGuard).
            if not self.link_deleted:
                self._hooks(self.cfg.interface.pre_down, "PreDown")
            await self._teardown()
            if not self.link_deleted:
                self._hooks(self.cfg.interface.post_down, "PostDown")

    async def _notify_ready(self) -> None:
        """READY=1 for the service manager, once the interface is up and its UAPI socket answers
        (what `wg show` and `wg set` need); LocalError when it does not."""
        if not self.notifier.enabled:
            return
        assert self.uapi.path is not None
        if not await answers_get(self.uapi.path):
            raise LocalError(f"the UAPI socket {self.uapi.path} does not answer; not reporting ready")
        self.notifier.ready(self._ready_status())

    def _ready_status(self) -> str:
        port = udp.local_port(self.sock) if self.sock is not None else 0
        return f"{self.name} up: UDP port {port}, {len(self.cfg.peers)} configured peer(s)"

    async def _reload_notified(self) -> None:
        """SIGHUP, told to the service manager: RELOADING=1 (+ MONOTONIC_USEC), the reload, READY=1."""
        self.notifier.reloading(f"{self.name}: reloading {self.cfg.path}")
        try:
            await self.reload()
        finally:
            self.notifier.ready(self._ready_status())

    def _link_deleted(self) -> None:
        """From the data plane's thread: the TUN fd was detached (EBADFD); the control plane shuts down."""
        self.link_deleted = True
        assert self.loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is already closed: nothing left to stop
            self.loop.call_soon_threadsafe(self.stopped.set)

    async def reload(self) -> str | None:
        """SIGHUP: read the config again; add, update and remove peers without touching live
        sessions (like ``wg syncconf``); the mesh keys and MeshDeny too (daemon/meshlife.py).
        Other [Interface] and [Discovery] changes need a restart. Returns what went wrong, if anything."""
        if self.over_uapi:
            log.info("reload: nothing to read (configured over UAPI: use wg syncconf)")
            return None
        try:
            cfg = await asyncio.to_thread(configmod.load, self.cfg.path)
        except ConfigError as e:
            log.error("reload: %s (keeping the running configuration)", e)
            return str(e)
        from wgdisco.daemon import meshlife

        if (mesh_error := await meshlife.reload(self, cfg)) is not None:
            log.error("reload: %s", mesh_error)
        device, node = self.device, self.node
        assert device is not None and node is not None and self.sock is not None
        old = {pc.public_key: pc for pc in self.cfg.peers}
        new = {pc.public_key: pc for pc in cfg.peers}
        with self.lock:
            now = clock.now()
            for public in old.keys() - new.keys():
                node.remove_peer(public)
                log.info("reload: peer %s removed", short_key(public))
            for public, pc in new.items():
                was = old.get(public)
                if was is None:
                    self._add_config_peer(pc, now)
                    log.info("reload: peer %s added", short_key(public))
                    continue
                self._add_config_peer(pc, now, was)
            self.flush()
        self.cfg.peers = cfg.peers
        added = [n for pc in cfg.peers for n in pc.allowed_ips
                 if pc.public_key not in old or n not in old[pc.public_key].allowed_ips]
        try:
            await self.routing.add_routes(added, self.sock)
        except LocalError as e:
            log.error("reload: %s", e)
        if self.dataplane is not None:
            self.dataplane.wake()
        log.info("reload: %d peer(s)", len(cfg.peers))
        return mesh_error

    def _network_changed(self, kinds: set[str]) -> None:
        """NetworkMonitor (debounced): sticky sources checked against their routes; with NAT
        traversal, re-gather, STUN again, re-publish, re-probe, within a second."""
        self.sticky_check.ask(kinds)
        if self.node is None or not self.node.traversal:
            return
        self.regathering.ask(kinds)

    async def _recheck_sticky(self, _kinds: list[str]) -> None:
        """Drop the sticky sources whose route now leaves through another interface (daemon/sticky.py)."""
        if self.device is None:
            return
        with self.lock:
            self.device.routes_changed()
            checks = sticky.to_check(self.device.sources)
        if not checks:
            return
        try:
            oifs = await asyncio.to_thread(netlink.route_interfaces, [(c.src, c.dst) for c in checks],
                                           self.routing.fwmark)
        except LocalError as e:
            log.warning("sticky sources: route lookup failed: %s", e)
            return
        with self.lock:
            for c in sticky.stale(checks, oifs):
                if self.device.forget_source(c.endpoint, c.source, moved=True):
                    log.info("sending to %s: the route leaves through another interface now; %s (interface %d) "
                             "is no longer the source", udp.format_sockaddr(c.endpoint), c.src, c.ifindex)

    async def _regather(self, kinds: list[str]) -> None:
        lan = await asyncio.to_thread(netlink.interface_addresses, {self.name, "lo"})
        log.info("network changed (%s): %s", ", ".join(kinds),
                 ", ".join(f"{name} {a}" for name, a in lan) or "no addresses")
        if self.discovery is not None:
            self.discovery.host_addresses_changed(lan)
        self.feed(lambda node, now: node.network_changed(lan, now))
        if self.portmapping is not None:
            await self.portmapping.network_changed()

    def _mesh_name(self) -> str | None:
        """``[Discovery] Name``, else this host's name (its first label) when that is a valid name."""
        from wgdisco.proto.names import name_from_hostname

        name = self.cfg.discovery.name
        if name is None:
            name = name_from_hostname(socket.gethostname())
            if name is None:
                log.warning("mesh: the host name %r is not a usable member name; set [Discovery] Name",
                            socket.gethostname()[:80])
        return name

    async def _teardown(self) -> None:
        if self.metrics is not None:
            await self.metrics.close()
            self.metrics = None
        if self.netmon is not None:
            await self.netmon.close()
            self.netmon = None
        self.sticky_check.cancel()
        self.regathering.cancel()
        if self.live_task is not None:
            self.live_task.cancel()
            await asyncio.gather(self.live_task, return_exceptions=True)
            self.live_task = None
        if self.dataplane is not None:
            # first: once our goodbyes go out (discovery.close), a peer checks them with a
            # probe (proto/node.py, MESH_GOODBYE_CONFIRM); a tunnel still answering refutes them
            await asyncio.to_thread(self.dataplane.stop)
            self.dataplane = None
        if self.portmapping is not None:
            await self.portmapping.close()  # the gateway deletes the mapping (clean shutdown)
            self.portmapping = None
        if self.discovery is not None:
            await self.discovery.close()
            self.discovery = None
        if self.hosts is not None:
            await self.hosts.close()
            self.hosts = None
        await self.uapi.close()
        await self.control.close()
        if self.tun is not None:
            index = self.tun.ifindex
            self.tun.close()  # a non-persistent TUN link disappears with its last fd
            self.tun = None
            # by index: after `ip link del` an unrelated link may have taken our name
            await asyncio.to_thread(netlink.delete_link_index, index, self.name)
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        for sock in self.sender.extra.values():
            sock.close()
        self.sender.extra.clear()
        await self.routing.remove()

    def _hooks(self, commands: list[str], what: str) -> None:
        for command in commands:
            command = command.replace("%i", self.name)
            log.info("[#] %s: %s", what, command)
            proc = subprocess.run(["bash", "-c", command], check=False)
            if proc.returncode != 0:
                log.warning("%s command exited with %d: %s", what, proc.returncode, command)

    def set_fwmark(self, fwmark: int) -> None:
        """``wg set IF fwmark N`` (0: off), on the socket at once, as wireguard-go's BindSetMark:
        wg-quick's full-tunnel rules send the tunnel's own datagrams by this mark (caller holds the lock)."""
        assert self.sock is not None
        try:
            udp.set_fwmark(self.sock, fwmark)
        except LocalError:
            raise uapi.UapiError(uapi.EADDRINUSE, "cannot set the fwmark") from None
        self.routing.fwmark = fwmark
        if self.device is not None:
            self.device.sources.clear()  # wireguard-go BindSetMark: another mark may route elsewhere
        log.info("fwmark %s", f"0x{fwmark:x}" if fwmark else "off")

    def rebind(self, port: int) -> None:
        """A new listen port (``wg set``; caller holds the lock); the data plane re-registers on wake."""
        assert self.sock is not None
        try:
            new = udp.open_udp(port, fwmark=self.routing.fwmark)
        except LocalError:
            raise uapi.UapiError(uapi.EADDRINUSE, f"port {port} in use") from None
        udp.enable_gro(new)
        udp.enable_pktinfo(new)
        old, self.sock = self.sock, new
        if self.portmapping is not None:
            self.portmapping.port_changed(udp.local_port(new))
        if self.device is not None:
            self.device.sources.clear()  # wireguard-go BindUpdate: sources are learned again
        if self.dataplane is not None:
            self.dataplane.retire(old)
        else:
            old.close()
        log.info("listening on UDP port %d", udp.local_port(new))


async def run_config(path: str) -> None:
    cfg = configmod.load(path)
    for warning in cfg.warnings:
        log.warning("%s", warning)
    await Tunnel(cfg).run()


def wire_sources(sender: udp.Sender, device: Device) -> None:
    """Sticky sources: the device records them, the sender asks for them and reports the ones
    the kernel refused; the two share no container (issue 22)."""
    sender.source_for, sender.forget_source = device.source_for, device.forget_source


def is_loopback(host: str) -> bool:
    """A literal loopback address or "localhost"; anything else may be reachable from outside."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
