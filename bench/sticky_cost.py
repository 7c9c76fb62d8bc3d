"""What sticky sources cost per packet, in-process on loopback (no root, one core).

    .venv/bin/python bench/sticky_cost.py [--number 20000] [--repeat 7]

Best of ``repeat`` runs of ``number`` calls each, in µs per call:

* ``Sender.send`` of a 96-byte datagram: plain ``sendto`` (no sticky source) against
  ``sendmsg`` with the pktinfo item (a sticky source), and a 10-datagram GSO batch each way;
* ``recv_segments`` of a 96-byte datagram on a socket without and with IPV6_RECVPKTINFO;
* ``Device.receive_datagram`` of a transport packet with ``local=None`` and with a local source.
"""

from __future__ import annotations

import argparse
import sys
import timeit
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import socket  # noqa: E402

from wgdisco.io import udp  # noqa: E402


def best(stmt, number: int, repeat: int, setup=None) -> float:
    runs = []
    for _ in range(repeat):
        if setup:
            setup()
        runs.append(timeit.timeit(stmt, number=number) / number * 1e6)
    return min(runs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--number", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    n, r = args.number, args.repeat

    tx = udp.open_udp(0)
    udp.enable_pktinfo(tx)
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    addr = udp.to_sockaddr(tx, "127.0.0.1", rx.getsockname()[1])

    def drain() -> None:
        try:
            while True:
                rx.recv(65535)
        except BlockingIOError:
            pass

    sender = udp.Sender({}, tx)
    data = bytes(96)
    plain = best(lambda: sender.send(data, addr), n, r, drain)
    sources = {addr: udp.make_source(tx, "127.0.0.1", socket.if_nametoindex("lo"))}
    sender.source_for = sources.get
    sticky = best(lambda: sender.send(data, addr), n, r, drain)
    batch = [bytes(1400)] * 10
    sender.source_for = {}.get
    gso_plain = best(lambda: sender.send_batch(list(batch), 1400, addr), n // 10, r, drain)
    sender.source_for = sources.get
    gso_sticky = best(lambda: sender.send_batch(list(batch), 1400, addr), n // 10, r, drain)
    assert sender.counts == {}, sender.counts
    print(f"Sender.send 96 B          plain {plain:.3f} µs   sticky {sticky:.3f} µs   (+{sticky - plain:.3f})")
    print(f"send_batch 10 x 1400 B    plain {gso_plain:.3f} µs   sticky {gso_sticky:.3f} µs   (+{gso_sticky - gso_plain:.3f})")

    # receive: fill the socket, then time recv_segments
    def recv_cost(pktinfo: bool) -> float:
        s = udp.open_udp(0)
        udp.enable_gro(s)
        if pktinfo:
            udp.enable_pktinfo(s)
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        dst = ("127.0.0.1", udp.local_port(s))
        count = min(n, 2000)
        runs = []
        for _ in range(r):
            for _ in range(count):
                c.sendto(data, dst)
            runs.append(timeit.timeit(lambda: udp.recv_segments(s, 65535), number=count) / count * 1e6)
        s.close()
        c.close()
        return min(runs)

    off, on = recv_cost(False), recv_cost(True)
    print(f"recv_segments 96 B        plain {off:.3f} µs   pktinfo {on:.3f} µs   (+{on - off:.3f})")

    # the device: a transport packet with and without a local source
    import ipaddress
    import os

    from wgdisco.proto import keys
    from wgdisco.proto.device import Device

    a = Device(keys.clamp(os.urandom(32)), rng=os.urandom, now=0.0)
    b = Device(keys.clamp(os.urandom(32)), rng=os.urandom, now=0.0)
    pa, pb = a.add_peer(b.identity.public), b.add_peer(a.identity.public)
    a.allowed_ips.insert(ipaddress.ip_network("10.0.0.2/32"), pa)
    b.allowed_ips.insert(ipaddress.ip_network("10.0.0.1/32"), pb)
    a_addr, b_addr = ("::ffff:192.0.2.1", 51820, 0, 0), ("::ffff:192.0.2.2", 51820, 0, 0)
    a.set_endpoint(pa, b_addr)
    a.send_handshake_initiation(pa, 1.0, is_retry=False)
    for msg, _ in a.datagrams_to_send():
        b.receive_datagram(msg, a_addr, 1.0)
    for msg, _ in b.datagrams_to_send():
        a.receive_datagram(msg, b_addr, 1.0)
    for msg, _ in a.datagrams_to_send():
        b.receive_datagram(msg, a_addr, 1.0)
    packet = bytes([0x45]) + bytes(11) + bytes([10, 0, 0, 1, 10, 0, 0, 2]) + bytes(44)
    packet = packet[:2] + len(packet).to_bytes(2, "big") + packet[4:]
    local = udp.make_source(tx, "192.0.2.2", 2)

    def device_cost(loc) -> float:
        runs = []
        for _ in range(r):
            datagrams = [a.send_packet(packet, 1.0)[0] for _ in range(n)]  # type: ignore[index]
            it = iter(datagrams)
            runs.append(timeit.timeit(lambda: b.receive_datagram(next(it), a_addr, 1.0, loc), number=n) / n * 1e6)
        return min(runs)

    d_off, d_on = device_cost(None), device_cost(local)
    assert b.drops == {}, b.drops
    print(f"receive_datagram 64 B     local=None {d_off:.3f} µs   local {d_on:.3f} µs   (+{d_on - d_off:.3f})")
    tx.close()
    rx.close()


if __name__ == "__main__":
    main()
