"""The floor for a Python tunnel: TUN -> ChaCha20-Poly1305 -> UDP and back, no protocol at all.

    ip netns exec NS python bench/bare_tunnel.py --tun NAME --address 10.8.0.1/24 \\
        --listen 198.51.100.1:51900 --peer 198.51.100.2:51900 [--mode epoll|threads]

No handshake, no counters, no replay window, no allowed-IPs, no timers: a fixed key,
a nonce from a counter, one datagram per packet. ``bench/rtt_floor.py`` runs it on both
ends of a veth pair to measure what a ping round trip costs when the only Python work is
one read, one AEAD call and one write per traversal. Whatever wgdisco adds above this
floor is protocol; what the floor adds above wireguard-go is the language and the
machine. (Benchmark tooling only: never a way to carry real traffic.)

Modes: ``epoll`` (one thread, epoll over TUN and socket, as wgdisco's data plane) and
``threads`` (a blocking reader thread per direction, as wireguard-go's goroutines).
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305  # noqa: E402

from wgdisco.io.tun import Tun  # noqa: E402

KEY = bytes(range(32))  # both ends; this tool carries nothing secret
COUNTER = struct.Struct("<4xQ")


def hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tun", required=True)
    p.add_argument("--address", required=True)
    p.add_argument("--listen", required=True, type=hostport)
    p.add_argument("--peer", required=True, type=hostport)
    p.add_argument("--mode", choices=("epoll", "threads"), default="epoll")
    args = p.parse_args()

    tun = Tun(args.tun)
    subprocess.run(["ip", "address", "add", args.address, "dev", args.tun], check=True)
    subprocess.run(["ip", "link", "set", args.tun, "mtu", "1420", "up"], check=True)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(args.listen)
    aead = ChaCha20Poly1305(KEY)
    encrypt, decrypt, peer = aead.encrypt, aead.decrypt, args.peer
    tun_fd = tun.fileno()
    print("ready", flush=True)

    counter = 0

    def outbound() -> None:
        """One TUN packet -> one datagram (nonce = 8-byte counter, sent in front)."""
        nonlocal counter
        packet = os.read(tun_fd, 65535)
        nonce = COUNTER.pack(counter)
        counter += 1
        sock.sendto(nonce[4:] + encrypt(nonce, packet, None), peer)

    def inbound() -> None:
        data = sock.recv(65535)
        try:
            os.write(tun_fd, decrypt(b"\0\0\0\0" + data[:8], data[8:], None))
        except Exception:  # noqa: BLE001 - a bad datagram: drop it
            pass

    if args.mode == "threads":
        os.set_blocking(tun_fd, True)

        def forever(step: object) -> None:
            while True:
                step()  # type: ignore[operator]

        threading.Thread(target=forever, args=(outbound,), daemon=True).start()
        forever(inbound)
    else:
        os.set_blocking(tun_fd, False)
        sock.setblocking(False)
        ep = select.epoll()
        ep.register(tun_fd, select.EPOLLIN)
        ep.register(sock.fileno(), select.EPOLLIN)
        sock_fd = sock.fileno()
        while True:
            for fd, _ in ep.poll():
                try:
                    if fd == sock_fd:
                        inbound()
                    else:
                        outbound()
                except BlockingIOError:
                    pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
