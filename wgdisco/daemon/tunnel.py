"""The daemon: wires the pure cores (wgdisco.proto) to the shells (wgdisco.io).

Two threads share the Device, under one lock:

- the data plane (``DataPlane``, a plain thread): one ``epoll`` over the TUN fd,
  the UDP socket and a wake-up pipe; it drains each fd until EAGAIN, runs the
  device's timers (the epoll timeout is the device's next deadline) and sends
  what the device queued. A bare epoll loop costs a few microseconds a wakeup,
  where asyncio's costs tens; docs/performance.md has the figures.
- the control plane (asyncio): the UAPI socket (``wg show``/``wg set``),
  signals, and the discovery work to come. It takes the lock to read or change
  the device, then wakes the data plane so a new deadline is seen at once.

Clocks: ``now`` is ``time.monotonic()`` in both threads (asyncio's clock too);
wall time for TAI64N and for ``latest handshake`` is ``now + wall_offset``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import select
import signal
import socket
import subprocess
import threading
import time
from typing import Any, Callable

from wgdisco import config as configmod
from wgdisco.errors import ConfigError, LocalError
from wgdisco.io import netlink, nft, udp
from wgdisco.io.tun import Tun, link_gone
from wgdisco.io.control import CONTROL_DIR, ControlServer
from wgdisco.io.uapi import UapiServer
from wgdisco.proto import gro, keys, uapi
from wgdisco.proto.busypoll import BusyPoll
from wgdisco.proto.classify import PROBE, STUN, WIREGUARD, classify
from wgdisco.proto.device import Device, Peer
from wgdisco.proto.node import (
    CandidateProbed, EndpointChanged, GaveUp, HandshakeCompleted, NatSuspected, Node, PathReasonChanged,
    RecordChanged, ReflexiveChanged, StunFailed, StunMoved,
)
from wgdisco.proto.timers import Timing

log = logging.getLogger("wgdisco")

DEFAULT_MTU = 1420
READ_BATCH = 256  # datagrams or packets handled per wakeup before yielding to the loop
RECV_BUFSIZE = 65535
GRO_BUFSIZE = 65535 + 4096  # a coalesced run can exceed one datagram


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
    ) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.timing = timing
        self.uapi_dir = uapi_dir
        self.load_threshold = handshake_load_threshold
        self.tun: Tun | None = None
        self.sock: socket.socket | None = None
        self.device: Device | None = None
        self.uapi = UapiServer(socket_dir=uapi_dir)
        self.stopped = asyncio.Event()
        self.link_deleted = False  # set by the data plane: our interface was deleted under us
        self.lock = threading.Lock()  # the Device, the socket and the counters
        self.dataplane: DataPlane | None = None
        self.node: Node | None = None  # peers, identity, discovery and path policy (proto/node.py)
        self.discovery: Any = None  # wgdisco.discovery.Discovery when [Discovery] asks for it
        self.netmon: Any = None  # wgdisco.io.netmon.NetworkMonitor, with NAT traversal
        self.change_task: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.metrics: Any = None
        self.control = ControlServer(socket_dir=control_dir)
        self.fwmark = cfg.interface.fwmark  # FwMark, or the policy table's number (wg-quick does the same)
        self.policy_table: int | None = None  # default routes with Table = auto live there
        self.policy_rules: list[dict[str, int]] = []  # the `ip rule`s we added, removed at teardown
        self.nft_versions: set[int] = set()  # IP versions with our nftables table (io/nft.py)
        self.other_drops: dict[str, int] = {}
        self._batch: list[bytes] = []
        self.gro = gro  # coalesce received TCP segments into GSO writes to TUN
        self.gso = True
        self._tun_lone = self._udp_lone = True  # the last drain found one packet (a low rate)
        self.sent_data = False  # this wake-up sent data: the data plane may spin (proto/busypoll.py)

    # --- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        cfg, iface = self.cfg, self.cfg.interface
        if os.geteuid() != 0:
            raise LocalError("wgdisco up needs root (CAP_NET_ADMIN) to create a TUN interface")
        if await asyncio.to_thread(netlink.link_exists, self.name):
            raise LocalError(f"interface {self.name} already exists")
        self._hooks(iface.pre_up, "PreUp")
        routed = [n for pc in cfg.peers for n in pc.allowed_ips]
        if self._default_routes(routed):
            await self._choose_policy_table()
        self.sock = udp.open_udp(iface.listen_port or 0, fwmark=self.fwmark)
        udp.enable_gro(self.sock)
        try:
            self.tun = Tun(self.name, vnet_hdr=self.gro)
            now = time.monotonic()
            kw = {} if self.load_threshold is None else {"handshake_load_threshold": self.load_threshold}
            self.device = Device(
                iface.private_key,  # type: ignore[arg-type]
                rng=os.urandom, now=now, wall_offset=time.time() - now,
                mtu=iface.mtu or DEFAULT_MTU, timing=self.timing, addr_key=udp.sockaddr_bytes, **kw,
            )
            discovering = cfg.discovery["mDNS"] or cfg.discovery["Domain"] is not None
            self.node = Node(
                self.device, rng=os.urandom, wall=time.time(),
                addr_of=lambda ip, port: udp.to_sockaddr(self.sock, ip, port),  # type: ignore[arg-type]
                host_of=lambda addr: udp.from_sockaddr(addr)[0], format_addr=fmt_addr,
                port=udp.local_port(self.sock), traversal=bool(discovering or cfg.discovery["STUN"]),
                stun_servers=await self._stun_servers(), domain=cfg.discovery["Domain"] or "local",
                allowed=iface.addresses,
            )
            for pc in cfg.peers:
                self._add_config_peer(pc, now)
            await asyncio.to_thread(
                netlink.configure_link, self.name, addresses=iface.addresses, mtu=iface.mtu or DEFAULT_MTU
            )
            await self._add_routes(routed)
            await self.uapi.start(self.name, self.handle_uapi)
            await self.control.start(self.name, self.handle_control)
        except BaseException:
            await self._teardown()
            raise
        node = self.node
        lan = await asyncio.to_thread(netlink.interface_addresses, {self.name, "lo"})
        if discovering:
            from wgdisco.discovery import Discovery  # zeroconf/dnspython only when used

            self.discovery = Discovery(cfg.discovery, cfg.path, node.record(), feed=self.feed,
                                       peer_keys=self.peer_keys)
        self.dataplane = DataPlane(self)
        self.dataplane.start()
        self.feed(lambda node, now: node.start(lan, now))
        if self.discovery is not None:
            try:
                await self.discovery.start(lan)
            except BaseException:
                await self._teardown()
                raise
        if node.traversal:
            from wgdisco.io.netmon import NetworkMonitor

            self.netmon = NetworkMonitor(self._network_changed, ignore_ifnames={self.name})
            try:
                await self.netmon.start()
            except LocalError as e:
                log.warning("network changes will not be noticed: %s", e)
                self.netmon = None
        if cfg.discovery["Metrics"] is not None:
            from wgdisco.io.metrics import MetricsServer

            self.metrics = MetricsServer(self.render_metrics)
            try:
                await self.metrics.start(cfg.discovery["Metrics"].host, cfg.discovery["Metrics"].port)
            except LocalError:
                await self._teardown()
                raise
        self._hooks(iface.post_up, "PostUp")
        log.info(
            "interface %s up: public key %s, listening on UDP port %d, %d peer(s)",
            self.name, keys.key_to_base64(self.device.identity.public), udp.local_port(self.sock), len(cfg.peers),
        )

    async def _stun_servers(self) -> list[Any]:
        """STUN servers from ``[Discovery] STUN``, resolved once (none is ever assumed)."""
        servers = []
        for endpoint in self.cfg.discovery["STUN"]:
            try:
                servers.append(await asyncio.to_thread(udp.to_sockaddr, self.sock, endpoint.host, endpoint.port))
            except (LocalError, OSError) as e:
                log.warning("STUN server %s: cannot resolve: %s", endpoint, e)
        return servers

    def feed(self, fn: Callable[[Node, float], object]) -> None:
        """Run ``fn(node, now)`` under the lock, send what the node queued, wake the data plane.
        Any thread; the asyncio side's way into the node (discovery, reload, network changes)."""
        with self.lock:
            if self.node is None:
                return
            fn(self.node, time.monotonic())
            self.flush()
        if self.dataplane is not None:
            self.dataplane.wake()

    def peer_keys(self) -> frozenset[bytes]:
        with self.lock:
            return self.node.peers if self.node is not None else frozenset()

    def _add_config_peer(self, pc: configmod.PeerConfig, now: float) -> None:
        assert self.device is not None and self.node is not None and self.sock is not None
        peer = self.node.add_peer(pc.public_key, now, pc.preshared_key)
        for net in pc.allowed_ips:
            self.device.allowed_ips.insert(net, peer)
        if pc.endpoint is not None:
            try:
                addr = udp.to_sockaddr(self.sock, pc.endpoint.host, pc.endpoint.port)
                self.node.set_endpoint(pc.public_key, addr, "config")
            except (LocalError, OSError) as e:
                log.warning("peer %s: cannot use endpoint %s: %s", short(peer), pc.endpoint, e)
        if pc.persistent_keepalive:
            self.device.set_persistent_keepalive(peer, pc.persistent_keepalive, now)

    def _default_routes(self, nets: list[Any]) -> list[Any]:
        """The default routes among ``nets`` that get wg-quick's policy routing (Table = auto)."""
        if (self.cfg.interface.table or "auto").lower() != "auto":
            return []
        return [n for n in nets if n.prefixlen == 0]

    async def _choose_policy_table(self) -> None:
        """FwMark if set, else the first free table from 51820; the socket gets it as its mark."""
        if self.policy_table is None:
            self.policy_table = self.fwmark or await asyncio.to_thread(netlink.free_table)
            self.fwmark = self.policy_table
            if self.sock is not None:  # a reload brought the first default route
                udp.set_fwmark(self.sock, self.fwmark)

    async def _add_routes(self, nets: list[Any]) -> None:
        """Routes for AllowedIPs, as wg-quick adds them (``Table``); they go with the link.

        With ``Table = auto`` a default route goes into the policy table, and two rules
        per family send all unmarked traffic there while the main table keeps its more
        specific routes (io/netlink.py); the tunnel's own datagrams carry the mark and
        take the main table, so they never loop into the tunnel."""
        table_opt = (self.cfg.interface.table or "auto").lower()  # validated by config.parse_table
        if table_opt == "off":
            return
        defaults = self._default_routes(nets)
        others = [n for n in nets if n not in defaults]
        if others:
            table = None if table_opt in ("auto", "main") else int(table_opt)
            await asyncio.to_thread(netlink.add_routes, self.name, others, table)
        if not defaults:
            return
        await self._choose_policy_table()
        assert self.policy_table is not None
        versions = {n.version for n in defaults}
        await asyncio.to_thread(netlink.add_routes, self.name, defaults, self.policy_table)
        self.policy_rules += await asyncio.to_thread(netlink.add_policy_rules, versions, self.policy_table)
        if 4 in versions:
            await asyncio.to_thread(netlink.set_src_valid_mark)
        new = versions - self.nft_versions
        if new and not nft.available():
            log.warning("nft not found: no mark restore for replies; with rp_filter = 1 they are dropped")
        elif new:
            try:
                rules = nft.ruleset(self.name, self.fwmark, new, self.cfg.interface.addresses)
                await asyncio.to_thread(nft.apply, rules)
                self.nft_versions |= new
            except LocalError as e:
                log.warning("%s; with rp_filter = 1 the tunnel's replies are dropped", e)
        log.info("default route%s %s through %s: table %d, fwmark 0x%x, rules 'not fwmark' and "
                 "'main suppress_prefixlength 0' (as wg-quick)", "s" if len(defaults) > 1 else "",
                 ", ".join(map(str, defaults)), self.name, self.policy_table, self.fwmark)

    async def run(self) -> None:
        """Start, then serve until SIGINT/SIGTERM, then tear down."""
        await self.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopped.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        try:
            await self.stopped.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            if self.link_deleted:
                log.info("interface %s was deleted; shutting down", self.name)
            log.info("interface %s going down; %s", self.name, self.drop_summary())
            if self.discovery is not None:
                log.info("discovery: %s", self.discovery_summary())
            if self.node is not None and self.node.traversal:
                log.info("nat traversal: %s", self.nat_summary())
            # Hooks belong to whoever takes the link down: wg-quick down runs PreDown/PostDown around
            # its own `ip link del`, and a bare `ip link del` runs none (as with kernel WireGuard).
            if not self.link_deleted:
                self._hooks(self.cfg.interface.pre_down, "PreDown")
            await self._teardown()
            if not self.link_deleted:
                self._hooks(self.cfg.interface.post_down, "PostDown")

    async def reload(self) -> None:
        """SIGHUP: read the config again; add, update and remove peers without touching live
        sessions (like ``wg syncconf``). [Interface] and [Discovery] changes need a restart."""
        try:
            cfg = await asyncio.to_thread(configmod.load, self.cfg.path)
        except ConfigError as e:
            log.error("reload: %s (keeping the running configuration)", e)
            return
        device, node = self.device, self.node
        assert device is not None and node is not None and self.sock is not None
        old = {pc.public_key: pc for pc in self.cfg.peers}
        new = {pc.public_key: pc for pc in cfg.peers}
        with self.lock:
            now = time.monotonic()
            for public in old.keys() - new.keys():
                node.remove_peer(public)
                log.info("reload: peer %s removed", short_key(public))
            for public, pc in new.items():
                was = old.get(public)
                if was is None:
                    self._add_config_peer(pc, now)
                    log.info("reload: peer %s added", short_key(public))
                    continue
                peer = device.peers[public]
                if pc.allowed_ips != was.allowed_ips:
                    device.allowed_ips.remove_by_peer(peer)
                    for net in pc.allowed_ips:
                        device.allowed_ips.insert(net, peer)
                if pc.preshared_key != was.preshared_key:
                    device.set_preshared_key(peer, pc.preshared_key)
                if pc.persistent_keepalive != was.persistent_keepalive:
                    device.set_persistent_keepalive(peer, pc.persistent_keepalive, now)
                if pc.endpoint != was.endpoint and pc.endpoint is not None:
                    try:
                        addr = udp.to_sockaddr(self.sock, pc.endpoint.host, pc.endpoint.port)
                        node.set_endpoint(public, addr, "config")
                    except (LocalError, OSError) as e:
                        log.warning("reload: peer %s: cannot use endpoint %s: %s", short(peer), pc.endpoint, e)
            self.flush()
        self.cfg.peers = cfg.peers
        added = [n for pc in cfg.peers for n in pc.allowed_ips
                 if pc.public_key not in old or n not in old[pc.public_key].allowed_ips]
        try:
            await self._add_routes(added)
        except LocalError as e:
            log.error("reload: %s", e)
        if self.dataplane is not None:
            self.dataplane.wake()
        log.info("reload: %d peer(s)", len(cfg.peers))

    def _network_changed(self, kinds: set[str]) -> None:
        """NetworkMonitor (debounced): re-gather, STUN again, re-publish, re-probe, within a second."""
        if self.change_task is None or self.change_task.done():
            self.change_task = asyncio.create_task(self._regather(sorted(kinds)))

    async def _regather(self, kinds: list[str]) -> None:
        lan = await asyncio.to_thread(netlink.interface_addresses, {self.name, "lo"})
        log.info("network changed (%s): %s", ", ".join(kinds),
                 ", ".join(f"{name} {a}" for name, a in lan) or "no addresses")
        if self.discovery is not None:
            self.discovery.host_addresses_changed(lan)
        self.feed(lambda node, now: node.network_changed(lan, now))

    async def _teardown(self) -> None:
        if self.metrics is not None:
            await self.metrics.close()
            self.metrics = None
        if self.netmon is not None:
            await self.netmon.close()
            self.netmon = None
        if self.change_task is not None:
            self.change_task.cancel()
        if self.discovery is not None:
            await self.discovery.close()
            self.discovery = None
        if self.dataplane is not None:
            await asyncio.to_thread(self.dataplane.stop)
            self.dataplane = None
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
        if self.policy_rules:
            try:
                await asyncio.to_thread(netlink.remove_policy_rules, self.policy_rules)
            except LocalError as e:
                log.warning("%s", e)
            self.policy_rules = []
        if self.nft_versions:
            try:
                await asyncio.to_thread(nft.remove, self.name, self.nft_versions)
            except LocalError as e:
                log.warning("%s", e)
            self.nft_versions = set()

    def _hooks(self, commands: list[str], what: str) -> None:
        for command in commands:
            command = command.replace("%i", self.name)
            log.info("[#] %s: %s", what, command)
            proc = subprocess.run(["bash", "-c", command], check=False)
            if proc.returncode != 0:
                log.warning("%s command exited with %d: %s", what, proc.returncode, command)

    # --- data plane ------------------------------------------------------------

    def on_tun_readable(self, now: float) -> None:
        """Drain TUN; encrypted datagrams to one endpoint go out in UDP GSO batches.

        At a low packet rate (the previous drain found one packet) the first packet
        goes out before the next read: that read usually fails with EAGAIN, and a
        ping should not wait for it. Under load the drains find runs and batch.
        """
        tun, device = self.tun, self.device
        assert tun is not None and device is not None
        send_packet, read = device.send_packet, tun.read
        batch = self._batch
        batch_addr: Any = None
        segment = total = count = 0
        for count in range(READ_BATCH):
            packet = read(RECV_BUFSIZE)
            if packet is None:
                break
            out = send_packet(packet, now)
            if out is None:
                continue
            data, addr = out
            self.sent_data = True
            if not count and self._tun_lone:
                self._sendto(self.sock.sendto, data, addr)  # type: ignore[union-attr]
                continue
            n = len(data)
            if batch and (addr != batch_addr or n > segment or len(batch) >= udp.MAX_SEGMENTS
                          or total + n > udp.MAX_GSO_BYTES):
                self._flush_batch(batch_addr, segment)
                total = 0
            if not batch:
                batch_addr, segment = addr, n
            batch.append(data)
            total += n
            if n < segment:  # a shorter datagram can only end a GSO batch
                self._flush_batch(batch_addr, segment)
                total = 0
        self._tun_lone = count <= 1  # a full drain leaves count at READ_BATCH - 1
        if batch:
            self._flush_batch(batch_addr, segment)

    def _flush_batch(self, addr: Any, segment: int) -> None:
        batch = self._batch
        sock = self.sock
        assert sock is not None
        if len(batch) > 1 and self.gso:
            try:
                udp.send_segments(sock, batch, segment, addr)
                batch.clear()
                return
            except (BlockingIOError, InterruptedError):
                self._count_other("send-would-block")
                batch.clear()
                return
            except OSError as e:
                if e.errno not in (errno.EIO, errno.EINVAL, errno.EOPNOTSUPP):
                    self._count_other(f"send-{errno.errorcode.get(e.errno or 0, e.errno)}")
                    batch.clear()
                    return
                self.gso = False  # this path cannot segment: one sendto each from now on
                log.info("UDP GSO unavailable (%s); sending datagrams one by one", e.strerror)
        sendto = sock.sendto
        for data in batch:
            self._sendto(sendto, data, addr)
        batch.clear()

    def on_udp_readable(self, now: float) -> None:
        """Drain the socket (UDP GRO hands over runs of datagrams) and demultiplex (§ARCHITECTURE).

        At a low rate (the previous drain held one datagram) a lone packet goes to TUN at
        once, and the kernel's immediate answer (an ICMP echo reply) is read and sent
        before the socket is read again: no failing read on the round trip.
        """
        tun, sock, device, node = self.tun, self.sock, self.device, self.node
        assert tun is not None and sock is not None and device is not None and node is not None
        receive = device.receive_datagram
        inner_packets: list[Any] = []
        deliver = inner_packets.append
        count = 0
        run = False
        for count in range(READ_BATCH):
            try:
                data, addr, segment = udp.recv_segments(sock, GRO_BUFSIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:  # e.g. ICMP port unreachable surfaced as ECONNREFUSED
                self._count_other(f"socket-{errno.errorcode.get(e.errno or 0, e.errno)}")
                continue
            if segment and len(data) > segment:
                view = memoryview(data)
                pieces: Any = (view[i:i + segment] for i in range(0, len(data), segment))
                run = True  # a GRO run: not a low rate
            else:
                pieces = (data,)
            for datagram in pieces:
                kind = classify(datagram)
                if kind == WIREGUARD:
                    inner = receive(datagram, addr, now)
                    if inner is not None:
                        if not count and not run and self._udp_lone:
                            self._write_tun(tun, (inner,))
                            self.on_tun_readable(now)
                        else:
                            deliver(inner)
                elif kind == STUN:
                    if not node.receive_stun(datagram, addr, now):
                        self._count_other("stun-unexpected")
                elif kind == PROBE:
                    node.receive_probe(datagram, addr, now)
                else:
                    self._count_other("unknown-datagram")
        self._udp_lone = count <= 1 and not run
        if inner_packets:
            self._write_tun(tun, inner_packets)
            # The kernel answers at once (an ICMP echo reply, TCP ACKs): take it now and
            # save a round through epoll. At worst one EAGAIN read.
            self.on_tun_readable(now)

    def _write_tun(self, tun: Tun, packets: Any) -> None:
        """Hand decrypted packets to the kernel; TCP runs coalesced into GSO packets (proto/gro.py)."""
        try:
            if len(packets) == 1:
                tun.write(packets[0])  # nothing to coalesce (pings, ACKs): the short path
            elif self.gro:
                write_vnet = tun.write_vnet
                for header, packet in gro.coalesce(packets):
                    write_vnet(header, packet)
            else:
                write = tun.write
                for packet in packets:
                    write(packet)
        except OSError as e:  # e.g. EINVAL: the kernel refused a packet; never fatal
            self._count_other(f"tun-write-{errno.errorcode.get(e.errno or 0, e.errno)}")

    def drop_counts(self) -> dict[str, int]:
        drops = dict(self.other_drops)
        if self.device is not None:
            for reason, n in self.device.drops.items():
                drops[reason] = drops.get(reason, 0) + n
        return drops

    def drop_summary(self) -> str:
        """Dropped input by reason, e.g. ``dropped: malformed=3 mac1=1`` (never secrets)."""
        drops = self.drop_counts()
        if not drops:
            return "dropped: nothing"
        return "dropped: " + " ".join(f"{k}={v}" for k, v in sorted(drops.items()))

    def _count_other(self, reason: str) -> None:
        self.other_drops[reason] = self.other_drops.get(reason, 0) + 1

    def _sendto(self, sendto: Any, data: bytes, addr: Any) -> None:
        try:
            sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            self._count_other("send-would-block")
        except OSError as e:
            self._count_other(f"send-{errno.errorcode.get(e.errno or 0, e.errno)}")

    def flush(self) -> None:
        """Send what the node queued and act on its events (caller holds the lock)."""
        node, sock = self.node, self.sock
        assert node is not None and sock is not None
        out = node.datagrams_to_send()
        if out:
            sendto = sock.sendto
            for data, addr in out:
                self._sendto(sendto, data, addr)
        event = node.next_event()
        while event is not None:
            self._on_event(event)
            event = node.next_event()

    def _on_event(self, event: Any) -> None:
        """The node's events: log lines, and our record for discovery (on the asyncio loop)."""
        if isinstance(event, HandshakeCompleted):
            log.info("peer %s: handshake completed", short_key(event.peer))
        elif isinstance(event, EndpointChanged):
            log.info("peer %s: endpoint %s -> %s (%s)", short_key(event.peer), fmt_addr(event.old),
                     fmt_addr(event.new), event.cause)
        elif isinstance(event, GaveUp):
            log.info("peer %s: no handshake after %d attempts, giving up until new traffic",
                     short_key(event.peer), event.attempts)
        elif isinstance(event, PathReasonChanged):
            log.info("peer %s: path: %s", short_key(event.peer), event.text)
        elif isinstance(event, CandidateProbed):
            log.info("peer %s: new candidate %s (%s); probing it once", short_key(event.peer),
                     fmt_addr(event.addr), event.source)
        elif isinstance(event, NatSuspected):
            log.info("peer %s: no answer for %.0f s; checking our NAT mapping again (STUN)",
                     short_key(event.peer), event.silent_for)
        elif isinstance(event, StunFailed):
            log.warning("STUN: no answer from %s", fmt_addr(event.server))
        elif isinstance(event, StunMoved):
            log.info("STUN: %s now sees us as %s (was %s)", fmt_addr(event.server),
                     udp.format_hostport(*event.new), udp.format_hostport(*event.old))
        elif isinstance(event, ReflexiveChanged):
            shown = ", ".join(udp.format_hostport(ip, port) for ip, port in event.reflexive) or "none"
            log.info("STUN: reflexive address %s; NAT mapping %s", shown, event.behaviour)
        elif isinstance(event, RecordChanged):
            if self.discovery is not None and self.loop is not None:
                self.loop.call_soon_threadsafe(self.discovery.record_changed, event.record, event.withdrawn)

    def nat_summary(self) -> str:
        """Probe counters for the log line at shutdown."""
        assert self.node is not None
        st = self.node.stats()
        drops = " ".join(f"probe-drop-{k}={v}" for k, v in sorted(st.probe_drops.items()))
        return f"probes sent={st.probes_sent} answered-for-peers={st.probe_replies} {drops}".strip()

    def discovery_summary(self) -> str:
        """What records did, e.g. ``hints-ignored-live=3 records-not-a-peer=1`` (never secrets)."""
        assert self.node is not None and self.discovery is not None
        counts = {**self.node.stats().counters, **self.discovery.counters}
        return " ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "nothing to report"

    # --- UAPI (wg show / wg set) ------------------------------------------------

    def handle_uapi(self, request: bytes) -> bytes:
        try:
            op = uapi.parse_request(request)
        except uapi.UapiError as e:
            return uapi.format_set_result(e.errno)
        with self.lock:
            if isinstance(op, uapi.GetRequest):
                return uapi.format_get(self.snapshot())
            try:
                self.apply_set(op)
            except uapi.UapiError as e:
                return uapi.format_set_result(e.errno)
            finally:
                self.flush()
        if self.dataplane is not None:
            self.dataplane.wake()  # deadlines or the socket may have changed
        return uapi.format_set_result(0)

    def handle_control(self, command: str) -> Any:
        if command != "status":
            raise LocalError(f"unknown command {command!r} (try: status)")
        with self.lock:
            return self.status()

    def status(self) -> dict[str, Any]:
        """What ``wgdisco status --json`` prints (schema: docs/status.schema.json). Lock held."""
        device, node, sock = self.device, self.node, self.sock
        assert device is not None and node is not None and sock is not None
        now = time.monotonic()
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
                "candidates": [{
                    "address": udp.format_sockaddr(p.addr), "kind": p.kind, "source": p.source, "state": p.state,
                    "rtt_ms": None if p.rtt is None else round(p.rtt * 1000, 2),
                } for p in node.candidates(public)],
                "latest_handshake": int(last),
                "rx_bytes": peer.rx_bytes,
                "tx_bytes": peer.tx_bytes,
                "persistent_keepalive": peer.persistent_keepalive,
                "allowed_ips": [str(n) for n in device.allowed_ips.entries_for_peer(peer)],
            })
        return {
            "interface": self.name,
            "public_key": keys.key_to_base64(device.identity.public),
            "listen_port": udp.local_port(sock),
            "nat": {
                "reflexive": [udp.format_hostport(ip, port) for ip, port in node.reflexive],
                "mapping": node.behaviour,
            },
            "peers": peers,
            "dropped": self.drop_counts(),
        }

    def render_metrics(self) -> str:
        """Prometheus text format: handshakes, traffic, probes, path changes, STUN/DNS errors, drops."""
        device, node = self.device, self.node
        assert device is not None and node is not None
        out: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
            out.append(f"# HELP wgdisco_{name} {help_}")
            out.append(f"# TYPE wgdisco_{name} {kind}")
            out.extend(f"wgdisco_{name}{labels} {value:g}" for labels, value in samples)

        iface = f'interface="{self.name}"'
        with self.lock:
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
            st = node.stats()
            metric("probes_sent_total", "counter", "Path probes sent.", [(f"{{{iface}}}", st.probes_sent)])
            metric("probe_replies_total", "counter", "Path probes answered for peers.",
                   [(f"{{{iface}}}", st.probe_replies)])
            metric("stun_errors_total", "counter", "STUN transactions that timed out or got an error response.",
                   [(f"{{{iface}}}", st.stun_errors)])
            dns_errors = self.discovery.dns_errors() if self.discovery is not None else 0
            metric("dns_errors_total", "counter", "Failed DNS-SD lookups and updates.", [(f"{{{iface}}}", dns_errors)])
            busy = self.dataplane.busy if self.dataplane is not None else None
            metric("busy_poll_spins_total", "counter",
                   "Data-plane spins after sending (proto/busypoll.py), by whether a packet came in time.",
                   [(f'{{{iface},result="hit"}}', busy.hits if busy is not None else 0),
                    (f'{{{iface},result="miss"}}', busy.misses if busy is not None else 0)])
            metric("busy_poll_seconds_total", "counter", "Seconds the data plane spent spinning.",
                   [(f"{{{iface}}}", round(busy.total_spent, 6) if busy is not None else 0)])
            metric("dropped_total", "counter", "Input dropped, by reason.",
                   [(f'{{{iface},reason="{reason}"}}', n) for reason, n in sorted(self.drop_counts().items())])
        return "\n".join(out) + "\n"

    def snapshot(self) -> uapi.DeviceSnapshot:
        device = self.device
        assert device is not None and self.sock is not None
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
            private_key=device.identity.private, listen_port=udp.local_port(self.sock),
            fwmark=self.fwmark, peers=tuple(peers),
        )

    def apply_set(self, req: uapi.SetRequest) -> None:
        device, node = self.device, self.node
        assert device is not None and node is not None and self.sock is not None
        now = time.monotonic()
        d = req.device
        if d.private_key is not None and d.private_key != bytes(32):
            node.set_identity(d.private_key, now)
        if d.listen_port is not None and d.listen_port != udp.local_port(self.sock):
            self._rebind(d.listen_port)
            node.set_port(udp.local_port(self.sock), now)
        if d.replace_peers:
            for public in list(device.peers):
                node.remove_peer(public)
        for op in req.peers:
            if op.public_key == device.identity.public:
                continue
            peer = device.peers.get(op.public_key)
            if op.remove:
                node.remove_peer(op.public_key)
                continue
            if peer is None:
                if op.update_only:
                    continue
                peer = node.add_peer(op.public_key, now)
            if op.preshared_key is not None:
                device.set_preshared_key(peer, None if op.preshared_key == bytes(32) else op.preshared_key)
            if op.endpoint is not None:
                try:
                    node.set_endpoint(op.public_key, udp.to_sockaddr(self.sock, *op.endpoint), "uapi")
                except (LocalError, OSError):
                    raise uapi.UapiError(uapi.EINVAL, "bad endpoint") from None
            if op.replace_allowed_ips:
                device.allowed_ips.remove_by_peer(peer)
            for aop in op.allowed_ips:
                if aop.remove:
                    device.allowed_ips.remove(aop.network, peer)
                else:
                    device.allowed_ips.insert(aop.network, peer)
            if op.persistent_keepalive_interval is not None:
                device.set_persistent_keepalive(peer, op.persistent_keepalive_interval, now)

    def _rebind(self, port: int) -> None:
        """A new listen port (caller holds the lock); the data plane re-registers on wake."""
        assert self.sock is not None
        try:
            new = udp.open_udp(port, fwmark=self.fwmark)
        except LocalError:
            raise uapi.UapiError(uapi.EADDRINUSE, f"port {port} in use") from None
        udp.enable_gro(new)
        old, self.sock = self.sock, new
        if self.dataplane is not None:
            self.dataplane.retire(old)
        else:
            old.close()
        log.info("listening on UDP port %d", udp.local_port(new))


class DataPlane:
    """The packet loop: epoll over TUN, the UDP socket and a wake-up pipe, plus the timers."""

    MAX_SLEEP = 1.0  # seconds; an idle wakeup this often costs nothing measurable

    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel
        self.epoll = select.epoll()
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.stopping = False
        self.registered_sock: socket.socket | None = None
        self.retired: list[socket.socket] = []
        self.busy = BusyPoll()
        self.loop: asyncio.AbstractEventLoop | None = None  # the control plane's, for the link-gone hand-off
        self.thread = threading.Thread(target=self.run, name=f"dataplane-{tunnel.name}", daemon=True)

    def start(self) -> None:
        t = self.tunnel
        assert t.tun is not None and t.sock is not None
        self.epoll.register(t.tun.fileno(), select.EPOLLIN)
        self.epoll.register(self.wake_r, select.EPOLLIN)
        self._register_sock()
        self.loop = asyncio.get_running_loop()
        self.thread.start()

    def _register_sock(self) -> None:
        sock = self.tunnel.sock
        assert sock is not None
        if self.registered_sock is not None:
            self.epoll.unregister(self.registered_sock.fileno())
        self.epoll.register(sock.fileno(), select.EPOLLIN)
        self.registered_sock = sock

    def wake(self) -> None:
        try:
            os.write(self.wake_w, b"\0")
        except BlockingIOError:
            pass  # a wake-up is already pending

    def retire(self, sock: socket.socket) -> None:
        """Close a replaced socket once the loop no longer polls it."""
        self.retired.append(sock)
        self.wake()

    def stop(self) -> None:
        self.stopping = True
        self.wake()
        self.thread.join(timeout=5)
        self.epoll.close()
        os.close(self.wake_r)
        os.close(self.wake_w)

    def run(self) -> None:
        t = self.tunnel
        node, lock = t.node, t.lock
        assert node is not None and t.tun is not None
        tun_fd, wake_r = t.tun.fileno(), self.wake_r
        monotonic, poll, sched_yield = time.monotonic, self.epoll.poll, os.sched_yield
        busy = self.busy
        timeout = 0.0
        spin_until = 0.0
        while not self.stopping:
            if spin_until:
                # proto/busypoll.py: poll without sleeping for a moment after sending
                events = poll(0)
                start = spun = monotonic()
                while not events and spun < spin_until:
                    sched_yield()
                    events = poll(0)
                    spun = monotonic()
                busy.result(spun - start, bool(events))
                if not events:
                    events = poll(max(timeout - (spun - start), 0.0))
            else:
                events = poll(timeout)
            with lock:
                now = monotonic()
                t.sent_data = False
                try:
                    for fd, _mask in events:
                        if fd == tun_fd:
                            t.on_tun_readable(now)
                        elif fd == wake_r:
                            self._drain_wake()
                        else:
                            t.on_udp_readable(now)
                except OSError as e:
                    if not link_gone(e):
                        raise
                    self._link_deleted()
                    return
                deadline = node.get_timer(now)
                if deadline is not None and deadline <= now:
                    node.handle_timer(now)
                    deadline = node.get_timer(now)
                t.flush()
            spin_until = busy.deadline(now, t.sent_data) if events else 0.0
            timeout = self.MAX_SLEEP if deadline is None else min(max(deadline - now, 0.0), self.MAX_SLEEP)

    def _link_deleted(self) -> None:
        """The TUN fd was detached (EBADFD): the control plane shuts down; this thread just ends."""
        self.stopping = True
        self.tunnel.link_deleted = True
        assert self.loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is already closed: nothing left to stop
            self.loop.call_soon_threadsafe(self.tunnel.stopped.set)

    def _drain_wake(self) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass
        if self.registered_sock is not self.tunnel.sock:
            self._register_sock()
        for sock in self.retired:
            sock.close()
        self.retired.clear()


def short(peer: Peer) -> str:
    return short_key(peer.public_key)


def short_key(public: bytes) -> str:
    return keys.key_to_base64(public)[:8] + "…"


def fmt_addr(addr: Any) -> str:
    return "(none)" if addr is None else udp.format_sockaddr(addr)


async def run_config(path: str) -> None:
    cfg = configmod.load(path)
    for warning in cfg.warnings:
        log.warning("%s", warning)
    await Tunnel(cfg).run()
