"""The data plane: one thread, one ``epoll`` over the TUN fd, the UDP socket and a wake-up pipe.

``DataPlane`` drains each fd until EAGAIN, under the tunnel's lock: packets from TUN are
encrypted and sent (UDP GSO batches through ``udp.Sender``), datagrams from the socket are
demultiplexed (ARCHITECTURE.md, "The one socket") and decrypted packets written to TUN
(coalesced by proto/gro.py). It runs the node's timers (the epoll timeout is the next
deadline) and, after a wake-up that sent data, spins briefly (proto/busypoll.py).

This is the hot path: per-packet code caches what it needs in locals and calls nothing
it does not have to; docs/performance.md has the figures.

With the compiled data path (daemon/fastpath.py, ``WGDISCO_DATAPATH``; docs/tunnel.md "Data
paths") each drain is one call into C, which moves bulk transport data itself and hands back
what it does not handle; that goes through the same Python code as on the pure path.
"""

from __future__ import annotations

import logging
import math
import os
import select
import socket
import threading
from typing import Any, Callable

from wgdisco.daemon import clock, fastpath
from wgdisco.io import udp
from wgdisco.io.tun import Tun, link_gone
from wgdisco.proto import gro
from wgdisco.proto.busypoll import BusyPoll
from wgdisco.proto.device import Device
from wgdisco.proto.node import Node

log = logging.getLogger("wgdisco")

READ_BATCH = 256  # datagrams or packets handled per wakeup before yielding to the loop
RECV_BUFSIZE = 65535
GRO_BUFSIZE = 65535 + 4096  # a coalesced run can exceed one datagram


class DataPlane:
    """The packet loop: epoll over TUN, the UDP socket and a wake-up pipe, plus the timers."""

    MAX_SLEEP = 1.0  # seconds; an idle wakeup this often costs nothing measurable

    def __init__(
        self,
        name: str,
        *,
        tun: Tun,
        device: Device,
        node: Node,
        sender: udp.Sender,
        lock: threading.Lock,
        drops: dict[str, int],
        flush: Callable[[], None],
        on_link_deleted: Callable[[], None],
        gro: bool = True,
    ) -> None:
        self.tun, self.device, self.node = tun, device, node
        self.sender = sender  # sends on the current socket; its ``sock`` is the one to poll
        self.lock = lock  # the tunnel's: the Device, the socket and the counters
        self.drops = drops  # reason -> count, the tunnel's other (non-device) drops
        self.flush = flush  # send what the node queued and act on its events (lock held)
        self.on_link_deleted = on_link_deleted  # called from this thread when the TUN fd is detached
        self.gro = gro  # coalesce received TCP segments into GSO writes to TUN
        self.epoll = select.epoll()
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.stopping = False
        self.registered_sock: socket.socket | None = None
        self.retired: list[socket.socket] = []
        self.extra_fds: dict[int, tuple[socket.socket, int]] = {}  # fd -> (extra socket, its id)
        self.busy = BusyPoll()
        self.next_error_log = -math.inf  # _unexpected: when the next error may be logged
        self._batch: list[bytes] = []
        self._tun_lone = self._udp_lone = True  # the last drain found one packet (a low rate)
        self.sent_data = False  # this wake-up sent data: the data plane may spin (proto/busypoll.py)
        self.fast: fastpath.FastPath | None = None  # the compiled data path, when it runs (start)
        self.datapath_line = ""
        self.thread = threading.Thread(target=self.run, name=f"dataplane-{name}", daemon=True)

    def start(self, environ: dict[str, str] | None = None) -> None:
        """Start the thread; ``WGDISCO_DATAPATH`` (in ``environ``) chooses the data path (LocalError if
        it cannot be had), and one log line says which runs."""
        assert self.sender.sock is not None
        module, self.datapath_line = fastpath.choose(environ)
        if module is not None:
            self.fast = fastpath.FastPath(module, device=self.device, tun=self.tun, sock=self.sender.sock,
                                          sender=self.sender, drops=self.drops)
            if self.tun.vnet_hdr and self.tun.enable_offloads():
                self.datapath_line += ", TUN offloads (TSO) on"
        log.info("%s", self.datapath_line)
        self.epoll.register(self.tun.fileno(), select.EPOLLIN)
        self.epoll.register(self.wake_r, select.EPOLLIN)
        self._register_sock()
        self.thread.start()

    def _register_sock(self) -> None:
        sock = self.sender.sock
        assert sock is not None
        if self.registered_sock is not None:
            self.epoll.unregister(self.registered_sock.fileno())
        self.epoll.register(sock.fileno(), select.EPOLLIN)
        self.registered_sock = sock
        if self.fast is not None:
            self.fast.set_socket(sock)

    def add_extra(self, sid: int, sock: socket.socket) -> None:
        """Poll an extra socket (birthday punching): what arrives on it comes from ``via`` addresses."""
        self.epoll.register(sock.fileno(), select.EPOLLIN)
        self.extra_fds[sock.fileno()] = (sock, sid)

    def remove_extra(self, sock: socket.socket) -> None:
        """Stop polling an extra socket and close it (lock held: not in the middle of a read)."""
        fd = sock.fileno()
        if self.extra_fds.pop(fd, None) is not None:
            self.epoll.unregister(fd)
        sock.close()

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
        node, lock = self.node, self.lock
        tun_fd, wake_r = self.tun.fileno(), self.wake_r
        monotonic, poll, sched_yield = clock.now, self.epoll.poll, os.sched_yield  # daemon/clock.py
        busy = self.busy
        if self.fast is not None:
            on_tun, on_udp = self.on_tun_readable_fast, self.on_udp_readable_fast
        else:
            on_tun, on_udp = self.on_tun_readable, self.on_udp_readable
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
                self.sent_data = False
                try:
                    for fd, _mask in events:
                        if fd == tun_fd:
                            on_tun(now)
                        elif fd == wake_r:
                            self._drain_wake()
                        elif fd in self.extra_fds:
                            self.on_udp_readable(now, *self.extra_fds[fd])
                        else:
                            on_udp(now)
                    deadline = node.run_timers(now)
                    self.flush()
                except Exception as e:  # noqa: BLE001 - nothing may end this thread (see _unexpected)
                    if isinstance(e, OSError) and link_gone(e):
                        self._link_deleted()
                        return
                    deadline = self._unexpected(e, now)
            spin_until = busy.deadline(now, self.sent_data) if events else 0.0
            timeout = self.MAX_SLEEP if deadline is None else min(max(deadline - now, 0.0), self.MAX_SLEEP)

    def _unexpected(self, error: Exception, now: float) -> float:
        """A bug or an input no check caught: the tunnel must not die of it. Counted
        (``dataplane-error``), logged with its traceback the first time and then once a minute,
        and the loop goes on after 10 ms (so a timer that fails every time cannot spin)."""
        self.drops["dataplane-error"] = self.drops.get("dataplane-error", 0) + 1
        if now >= self.next_error_log:
            self.next_error_log = now + 60.0
            log.error("data plane: unexpected %s: %s (%d so far; the tunnel goes on)", type(error).__name__,
                      error, self.drops["dataplane-error"], exc_info=self.drops["dataplane-error"] == 1)
        return now + 0.01

    def _link_deleted(self) -> None:
        """The TUN fd was detached (EBADFD): the control plane shuts down; this thread just ends."""
        self.stopping = True
        self.on_link_deleted()

    def _drain_wake(self) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass
        if self.registered_sock is not self.sender.sock:
            self._register_sock()
        for sock in self.retired:
            sock.close()
        self.retired.clear()

    # --- per packet ------------------------------------------------------------

    def on_tun_readable_fast(self, now: float) -> None:
        """Drain TUN through the compiled path; the packets it hands back (no usable keypair, no
        route, ...) go through the Device one by one, as on the pure path."""
        fast = self.fast
        assert fast is not None
        fast.sync(now)
        packets = fast.tun_read(now, READ_BATCH)
        if fast.sent:
            self.sent_data = True
        if packets:
            self._send_plain(packets, now)

    def _send_plain(self, packets: list[bytes], now: float) -> None:
        send_packet, send = self.device.send_packet, self.sender.send
        for packet in packets:
            out = send_packet(packet, now)
            if out is not None:
                send(*out)
                self.sent_data = True
        if self.device.tun_out:
            self._write_answers()

    def on_udp_readable_fast(self, now: float) -> None:
        """Drain the socket and then TUN through the compiled path (one call: the kernel's immediate
        answers go out at once); what it hands back is demultiplexed as in on_udp_readable
        (handshake messages after the data of the drain) or sent as in on_tun_readable."""
        fast, device, node = self.fast, self.device, self.node
        assert fast is not None
        fast.sync(now)
        datagrams, packets = fast.udp_tun_read(now, READ_BATCH)
        if fast.sent:
            self.sent_data = True
        receive = node.receive_datagram  # the one demux (ARCHITECTURE.md "The sockets")
        inner_packets: list[Any] = []
        handshakes: list[Any] = []  # handshake messages wait for the data of the drain
        for datagram, addr, local in datagrams:
            if addr.__class__ is int:  # a multicast packet C decrypted, from the peer in slot addr
                inner = fast.multicast_received(addr, datagram, now)
            else:
                inner = receive(datagram, addr, now, local, handshakes)
            if inner is not None:
                inner_packets.append(inner)
        if packets:
            self._send_plain(packets, now)
        if inner_packets:
            self._write_tun(self.tun, inner_packets)
            self.on_tun_readable_fast(now)  # the kernel answers at once: take it now
        for datagram, addr, local in handshakes:
            device.receive_datagram(datagram, addr, now, local)

    def on_tun_readable(self, now: float) -> None:
        """Drain TUN; encrypted datagrams to one endpoint go out in UDP GSO batches.

        At a low packet rate (the previous drain found one packet) the first packet
        goes out before the next read: that read usually fails with EAGAIN, and a
        ping should not wait for it. Under load the drains find runs and batch.
        """
        tun, device, sender = self.tun, self.device, self.sender
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
                sender.send(data, addr)
                continue
            n = len(data)
            if batch and (addr != batch_addr or n > segment or len(batch) >= udp.MAX_SEGMENTS
                          or total + n > udp.MAX_GSO_BYTES):
                sender.send_batch(batch, segment, batch_addr)  # GSO, or one by one (io/udp.py)
                total = 0
            if not batch:
                batch_addr, segment = addr, n
            batch.append(data)
            total += n
            if n < segment:  # a shorter datagram can only end a GSO batch
                sender.send_batch(batch, segment, batch_addr)
                total = 0
        self._tun_lone = count <= 1  # a full drain leaves count at READ_BATCH - 1
        if batch:
            sender.send_batch(batch, segment, batch_addr)
        if device.tun_out:
            self._write_answers()

    def on_udp_readable(self, now: float, extra: socket.socket | None = None, sid: int | None = None) -> None:
        """Drain the socket (UDP GRO hands over runs of datagrams) and demultiplex (§ARCHITECTURE).

        At a low rate (the previous drain held one datagram) a lone packet goes to TUN at
        once, and the kernel's immediate answer (an ICMP echo reply) is read and sent
        before the socket is read again: no failing read on the round trip.

        ``extra``: an extra socket (birthday punching) instead of the listen socket; its
        senders' addresses are tagged with ``sid`` (``udp.via``), so replies leave from it.
        """
        tun, sock, device, node = self.tun, extra or self.sender.sock, self.device, self.node
        assert sock is not None
        receive = node.receive_datagram  # the one demux (ARCHITECTURE.md "The sockets")
        inner_packets: list[Any] = []
        deliver = inner_packets.append
        handshakes: list[Any] = []  # handshake messages wait for the data read with them
        count = 0
        run = False
        for count in range(READ_BATCH):
            try:
                data, addr, segment, local = udp.recv_segments(sock, GRO_BUFSIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:  # e.g. ICMP port unreachable surfaced as ECONNREFUSED
                self._count_other(f"socket-{udp.errno_name(e)}")
                continue
            if sid is not None:
                addr, local = (*addr, sid), None
            if segment and len(data) > segment:
                view = memoryview(data)
                pieces: Any = (view[i:i + segment] for i in range(0, len(data), segment))
                run = True  # a GRO run: not a low rate
            else:
                pieces = (data,)
            for datagram in pieces:
                inner = receive(datagram, addr, now, local, handshakes)  # local: the sticky source (io/udp.py)
                if inner is not None:
                    if not count and not run and self._udp_lone:
                        self._write_tun(tun, (inner,))
                        self.on_tun_readable(now)
                    else:
                        deliver(inner)
        self._udp_lone = count <= 1 and not run
        if inner_packets:
            self._write_tun(tun, inner_packets)
            # The kernel answers at once (an ICMP echo reply, TCP ACKs): take it now and
            # save a round through epoll. At worst one EAGAIN read.
            self.on_tun_readable(now)
        # Transport data never waits behind handshake work (a flood of initiations, issue 17):
        # the drain's data went to TUN above; its handshake messages are handled now, within
        # the device's handshake and cookie budgets (proto/device.py).
        for datagram, addr, local in handshakes:
            device.receive_datagram(datagram, addr, now, local)

    def _write_answers(self) -> None:
        """The device's own packets for TUN: ICMP unreachable for what no peer took (proto/icmp.py)."""
        self._write_tun(self.tun, self.device.tun_out)
        self.device.tun_out.clear()

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
            self._count_other(f"tun-write-{udp.errno_name(e)}")

    def _count_other(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1
