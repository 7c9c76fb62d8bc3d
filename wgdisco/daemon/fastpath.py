"""The compiled data path's Python side: which path runs, and keeping the C copy of the state right.

Theory of operation
-------------------
``wgdisco.io._fastpath`` (C, optional; built by ``pip install``) moves bulk transport data:
TUN -> encrypt -> UDP GSO, and UDP GRO -> decrypt -> TUN (docs/tunnel.md, "Data paths").
The Device (proto/device.py) stays the source of truth for everything else. Before each
batch ``sync`` hands the C side what changed since the last one: the Device marks a peer when
anything C mirrors of it changes (``Device.pop_mirrored``: endpoint, sticky source, keypairs, a
send of Python's own, the path limit), and sync compares a small tuple for those peers only, so a
drain costs O(changed peers), not a scan of every peer (issue 26; all of them when the peer set
or the socket's family changed). What is compared:

- per peer a slot number, its endpoint and sticky source (``Device.sources``), the local
  index of the keypair to send with (``Device.fast_sendable``), and whether it may send at
  all (``eligible``: a peer whose send path is unusual stays with Python), and the largest
  inner packet its path carries (``Peer.max_inner``, proto/pmtu.py: a larger one is handed back,
  and the Device answers it with ICMP "too big");
- the keypairs in ``current`` and ``previous`` with their keys, counters and replay window
  (``ReplayFilter.state``). A keypair held by C is C's to receive on: its replay window
  lives there until it is released (then ``ReplayFilter.load`` takes it back). ``next`` (a
  responder's keypair before the first data) is never handed down, so its first packet
  reaches Python, which rotates the keypairs as always;
- the allowed-IPs table, when its ``generation`` moved.

After each batch ``apply`` feeds what C reports back into the Device: send counters,
``transport_sent`` / ``transport_received`` (timers, wg show counters, roaming, rekeying)
and the drop counters. What C hands back unchanged (handshakes, cookies, STUN, probes,
strangers, packets for peers without a usable keypair) the data plane treats as on the
pure-Python path; a decrypted packet to a multicast group comes back as ``(packet, slot, None)``
for ``multicast_received`` (proto/multicast.py decides).

``WGDISCO_DATAPATH`` chooses: ``auto`` (default: compiled if built, else Python), ``c``
(compiled or refuse to start), ``python``.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any, Callable

from wgdisco.errors import LocalError
from wgdisco.io import udp
from wgdisco.io.tun import Tun
from wgdisco.proto.device import Device, Keypair, Peer

log = logging.getLogger("wgdisco")

ENV = "WGDISCO_DATAPATH"
MODES = ("auto", "c", "python")


def load_module() -> tuple[Any, str]:
    """(the compiled module or None, why not). ``WGDISCO_FASTPATH_SO`` names another build of it
    to load instead (``make test-asan``: the sanitizer build)."""
    path = os.environ.get("WGDISCO_FASTPATH_SO")
    try:
        if path:
            import importlib.util

            spec = importlib.util.spec_from_file_location("wgdisco.io._fastpath", path)
            if spec is None or spec.loader is None:
                return None, f"cannot load {path}"
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module, ""
        from wgdisco.io import _fastpath
    except ImportError as e:
        return None, str(e)
    return _fastpath, ""


def choose(environ: dict[str, str] | None = None) -> tuple[Any, str]:
    """(the compiled module or None, the log line saying which data path runs). LocalError for a
    bad ``WGDISCO_DATAPATH`` or ``c`` without the compiled module."""
    env = os.environ if environ is None else environ
    mode = env.get(ENV, "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise LocalError(f"{ENV}={env.get(ENV)!r}: expected one of {', '.join(MODES)}")
    if mode == "python":
        return None, f"data path: pure Python ({ENV}=python)"
    module, why = load_module()
    if module is None:
        if mode == "c":
            raise LocalError(f"{ENV}=c but the compiled data path is not built ({why}); "
                             "reinstall wgdisco with gcc, python3-dev and libssl-dev present")
        return None, f"data path: pure Python (the compiled one is not built: {why})"
    return module, f"data path: compiled (wgdisco.io._fastpath, {module.CRYPTO})"


def default_eligible(peer: Peer, family: int) -> bool:
    """A peer the compiled path may send to: its endpoint is an address of the listen socket's kind."""
    ep = peer.endpoint
    return isinstance(ep, tuple) and len(ep) == (4 if family == socket.AF_INET6 else 2)


class FastPath:
    """The C data path and the state it was given (see the module docstring)."""

    def __init__(self, module: Any, *, device: Device, tun: Tun, sock: socket.socket, sender: udp.Sender,
                 drops: dict[str, int], eligible: Callable[[Peer, int], bool] = default_eligible) -> None:
        self.device, self.tun, self.sender, self.drops = device, tun, sender, drops
        self.eligible = eligible
        self.family = sock.family
        self.dp = module.DataPath(tun.fileno(), sock.fileno(), sock.family, tun.vnet_hdr, device.mtu)
        self.slots: dict[bytes, int] = {}  # public key -> slot
        self.peer_at: dict[int, Peer] = {}  # slot -> peer
        self.free: list[int] = []
        self.pushed: dict[int, tuple] = {}  # slot -> the state set_peer was given
        self.held: dict[int, Keypair] = {}  # local index -> keypair held by C
        self.counter: dict[int, int] = {}  # local index -> send counter as C has it
        self.routes_generation = -1
        self.peers_generation = -1  # Device.peers_generation when the slots were last matched
        self.resync = True  # every peer at the next sync (the socket's family changed)
        self.sent = False  # the last tun_read sent data

    def set_socket(self, sock: socket.socket) -> None:
        self.dp.set_socket(sock.fileno(), sock.family)
        if sock.family != self.family:
            self.family = sock.family
            self.pushed.clear()
            self.resync = True

    # --- Python -> C -------------------------------------------------------------------

    def sync(self, now: float) -> None:
        """Hand C what changed: the peers the device marked since the last sync (Device.pop_mirrored),
        all of them only when the peer set or the socket's family changed. O(changed) per drain,
        not a scan of every peer (issue 26)."""
        device = self.device
        peers = device.peers
        changed = device.pop_mirrored()
        if device.peers_generation != self.peers_generation:
            self._sync_peer_set()
            self.peers_generation = device.peers_generation
            changed = None
        if self.resync:
            self.resync, changed = False, None
        for peer in (peers.values() if changed is None else changed):
            if peers.get(peer.public_key) is peer:
                self._sync_peer(peer, now)
        self._sync_routes()

    def stale(self, now: float) -> list[bytes]:
        """The peers whose state C holds differs from what a full sync would push (tests: every
        change must be marked, Device.pop_mirrored); nothing is pushed."""
        out = []
        for public, peer in self.device.peers.items():
            slot = self.slots.get(public)
            state, keypairs = self._state(peer, now)
            if slot is None or state != self.pushed.get(slot) or any(
                    kp is not None and (self.held.get(kp.local_index) is not kp
                                        or kp.send_counter != self.counter[kp.local_index]) for kp in keypairs):
                out.append(public)
        return out

    def _state(self, peer: Peer, now: float) -> tuple[tuple, tuple]:
        """(what set_peer holds for ``peer``, the keypairs C should hold for it)."""
        eligible = self.eligible(peer, self.family)
        current, previous = (peer.current, peer.previous) if eligible else (None, None)
        kp = self.device.fast_sendable(peer, now) if eligible else None
        endpoint = peer.endpoint
        state = (endpoint, self.device.sources.get(endpoint) if endpoint is not None else None,
                 -1 if kp is None else kp.local_index, eligible, current, previous, peer.max_inner)
        return state, (current, previous)

    def _sync_peer(self, peer: Peer, now: float) -> None:
        dp, held, counter = self.dp, self.held, self.counter
        slot = self.slots[peer.public_key]
        state, (current, previous) = self._state(peer, now)
        if not state[3]:
            # a peer whose packets come and go by another socket (birthday punching) is
            # Python's to send to and to receive from: its keypairs stay with the Device,
            # so there is one replay window per keypair, never two
            for kp in (peer.current, peer.previous):
                if kp is not None and held.get(kp.local_index) is kp:
                    self._release(kp)
        for kp in (current, previous):
            if kp is None:
                continue
            index = kp.local_index
            if held.get(index) is not kp:
                self._hold(kp, slot, now)
            elif kp.send_counter != counter[index]:
                dp.set_send_counter(index, kp.send_counter)  # Python sent (a keepalive, staged packets)
                counter[index] = kp.send_counter
        if state != self.pushed.get(slot):
            old = self.pushed.get(slot)
            if old is not None:
                for gone in (old[4], old[5]):
                    if gone is not None and gone is not current and gone is not previous:
                        self._release(gone)
            dp.set_peer(slot, state[0], state[1], state[2], state[3], peer.max_inner)
            self.pushed[slot] = state

    def _sync_routes(self) -> None:
        device, dp = self.device, self.dp
        generation = device.allowed_ips.generation
        if generation != self.routes_generation:
            slots = {id(p): s for s, p in self.peer_at.items()}
            dp.set_routes([(net, cidr, slots[id(peer)]) for net, cidr, peer in device.allowed_ips.prefixes()
                           if id(peer) in slots])
            self.routes_generation = generation

    def _sync_peer_set(self) -> None:
        peers = self.device.peers
        for public, slot in list(self.slots.items()):
            if peers.get(public) is not self.peer_at[slot]:
                old = self.pushed.pop(slot, None)
                for kp in (old[4], old[5]) if old is not None else ():
                    if kp is not None:
                        self._release(kp)
                for index in [i for i, kp in self.held.items() if kp.peer is self.peer_at[slot]]:
                    self._release(self.held[index])
                self.dp.remove_peer(slot)
                del self.slots[public], self.peer_at[slot]
                self.free.append(slot)
        for public, peer in peers.items():
            if public not in self.slots:
                slot = self.free.pop() if self.free else len(self.slots)
                while slot in self.peer_at:
                    slot += 1
                self.slots[public] = slot
                self.peer_at[slot] = peer
        self.routes_generation = -1  # slots changed

    def _hold(self, kp: Keypair, slot: int, now: float) -> None:
        old = self.held.get(kp.local_index)
        if old is not None:
            self._release(old)
        last, ring = kp.replay.state()
        timing = self.device.timing
        self.dp.add_keypair(kp.local_index, slot, kp.send_key, kp.receive_key, kp.remote_index, kp.send_counter,
                            timing.reject_after_messages, timing.reject_after_messages, kp.expires, True, last, ring)
        self.held[kp.local_index] = kp
        self.counter[kp.local_index] = kp.send_counter

    def _release(self, kp: Keypair) -> None:
        if self.held.get(kp.local_index) is not kp:
            return
        del self.held[kp.local_index]
        del self.counter[kp.local_index]
        back = self.dp.remove_keypair(kp.local_index)
        if back is not None:
            sent, last, ring = back
            kp.send_counter = max(kp.send_counter, sent)
            kp.replay.load(last, ring)

    def release_all(self) -> None:
        """Take every keypair back (the data path stops)."""
        for kp in list(self.held.values()):
            self._release(kp)

    # --- C -> Python -------------------------------------------------------------------

    def tun_read(self, now: float, batch: int) -> list[bytes]:
        """Encrypt and send what C can; the plain packets it hands back are Python's."""
        packets, events, drops = self.dp.tun_read(batch)
        self.apply(events, drops, now)
        return packets

    def udp_read(self, now: float, batch: int) -> list[tuple[bytes, Any, Any]]:
        """Receive and deliver what C can; ``(datagram, address, pktinfo)`` it hands back are Python's."""
        punted, events, drops = self.dp.udp_read(batch)
        self.apply(events, drops, now)
        return punted

    def udp_tun_read(self, now: float, batch: int) -> tuple[list[tuple[bytes, Any, Any]], list[bytes]]:
        """udp_read, then tun_read, in one call: the kernel's immediate answers to what was
        delivered (an ICMP echo reply, TCP ACKs) go out without a round through Python."""
        datagrams, packets, events, drops = self.dp.udp_tun_read(batch)
        self.apply(events, drops, now)
        return datagrams, packets

    def multicast_received(self, slot: int, packet: bytes, now: float) -> bytes | None:
        """A packet to a multicast group that C decrypted and checked for the peer in ``slot`` (handed
        back as ``(packet, slot, None)``): the packet for TUN or None (Device.multicast_received)."""
        peer = self.peer_at.get(slot)
        return None if peer is None else self.device.multicast_received(peer, packet, now)

    def apply(self, events: list[tuple], drops: bool, now: float) -> None:
        """What C reports after a drain, into the Device; ``sent``: whether it sent data."""
        device, held, counter = self.device, self.held, self.counter
        self.sent = False
        for (slot, rx_bytes, _rx_packets, rx_data, tx_bytes, tx_data, endpoint, local, roamed, unstuck, sent, tx_max,
             rx_max) in events:
            peer = self.peer_at.get(slot)
            if peer is None:
                continue
            state = self.pushed.get(slot)
            kp = held.get(state[2]) if state is not None and state[2] >= 0 else None
            if kp is not None and sent >= 0:
                kp.send_counter = counter[kp.local_index] = sent
            if unstuck and peer.endpoint is not None:
                self._unstuck(peer)
            if rx_bytes:
                device.transport_received(peer, now, rx_bytes, rx_data, endpoint, local, rx_max)
            if tx_bytes:
                self.sent = True
                device.transport_sent(peer, kp, now, tx_bytes, tx_data, tx_max)
            if state is not None and (endpoint is not None or unstuck):
                # C follows the peer already: record what it has (the endpoint and source it
                # reported, or no source after an unstick), so sync pushes only where the device
                # decided otherwise (a source whose route moved is not taken again, Device._moved)
                held_ep = endpoint if endpoint is not None else state[0]
                self.pushed[slot] = (held_ep, local if endpoint is not None else None, *state[2:])
        if drops:
            device_drops, other, tun_drops = self.dp.take_drops()
            device.count_drops(device_drops)
            for reason, n in other.items():
                self.drops[reason] = self.drops.get(reason, 0) + n
            self.tun.drops += tun_drops

    def _unstuck(self, peer: Peer) -> None:
        """C's send from the sticky source was refused and went again without it (io/udp.py Sender._unstick)."""
        source = self.device.sources.pop(peer.endpoint, None)
        self.sender.unstuck += 1
        if source is not None:
            host, ifindex = udp.source_address(source)
            log.info("sending to %s from %s (interface %d) failed; the kernel chooses the source now",
                     udp.format_sockaddr(peer.endpoint), host, ifindex)
