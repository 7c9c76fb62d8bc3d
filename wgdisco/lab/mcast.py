"""Send and listen to multicast on one interface, inside lab namespaces (issue 28).

    mcast.py listen --iface IF --port P GROUP [GROUP ...]
        Join each group on IF only (IP_MULTICAST_ALL off: nothing joined elsewhere), print
        "READY" once joined, then one JSON line per datagram: {"payload", "from", "ttl"}
        (the TTL / hop limit it arrived with, IP_RECVTTL / IPV6_RECVHOPLIMIT).

    mcast.py send --iface IF --port P [--count N] [--rate R] [--seconds S] [--tag T] GROUP
        From IF with TTL / hop limit 255 (as mDNS, RFC 6762 §11): datagrams "T-<i>", at R a
        second (0: as fast as possible) until N are sent or S seconds passed; prints
        {"sent": n, "seconds": s} at the end.

Standard library only; no imports from the project (it runs as a plain script).
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import select
import socket
import struct
import sys
import time

IP_MULTICAST_ALL = 49  # linux/in.h
IPV6_MULTICAST_ALL = 29  # linux/in6.h
IP_RECVTTL = 12  # linux/in.h (not in Python's socket module)


def listen(args: argparse.Namespace) -> int:
    index = socket.if_nametoindex(args.iface)
    socks = []
    for group in args.groups:
        ip = ipaddress.ip_address(group)
        if ip.version == 4:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
            s.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
            s.bind((group, args.port))
            s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, struct.pack("4s4si", ip.packed, bytes(4), index))
        else:
            s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_MULTICAST_ALL, 0)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
            s.bind((group, args.port, 0, index))
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, struct.pack("16sI", ip.packed, index))
        socks.append(s)
    print("READY", flush=True)
    while True:
        for s in select.select(socks, [], [])[0]:
            data, anc, _flags, addr = s.recvmsg(65535, socket.CMSG_SPACE(4))
            ttl = None
            for level, kind, value in anc:
                if (level, kind) in ((socket.IPPROTO_IP, socket.IP_TTL), (socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT)):
                    ttl = int.from_bytes(value[:4], sys.byteorder) if len(value) >= 4 else value[0]
            print(json.dumps({"payload": data.decode(errors="replace"), "from": addr[0], "ttl": ttl}), flush=True)


def send(args: argparse.Namespace) -> int:
    index = socket.if_nametoindex(args.iface)
    ip = ipaddress.ip_address(args.group)
    if ip.version == 4:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, struct.pack("4s4si", bytes(4), bytes(4), index))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        to: tuple = (args.group, args.port)
    else:
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
        to = (args.group, args.port, 0, index)
    start = time.monotonic()
    sent = 0
    while sent < args.count and time.monotonic() - start < args.seconds:
        if args.rate:  # paced in steps of 1 ms: at most the rate, on average
            due = int((time.monotonic() - start) * args.rate) + 1
            if sent >= due:
                time.sleep(0.001)
                continue
        try:
            s.sendto(f"{args.tag}-{sent}".encode(), to)
        except OSError as e:
            if e.errno not in (errno.ENOBUFS, errno.EAGAIN):
                raise
            continue  # the TUN queue is full: this one is lost, as on a wire
        sent += 1
    print(json.dumps({"sent": sent, "seconds": round(time.monotonic() - start, 3)}), flush=True)
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    lp = sub.add_parser("listen")
    lp.add_argument("--iface", required=True)
    lp.add_argument("--port", type=int, required=True)
    lp.add_argument("groups", nargs="+")
    sp = sub.add_parser("send")
    sp.add_argument("--iface", required=True)
    sp.add_argument("--port", type=int, required=True)
    sp.add_argument("--count", type=int, default=10**9)
    sp.add_argument("--rate", type=float, default=0.0)
    sp.add_argument("--seconds", type=float, default=3600.0)
    sp.add_argument("--tag", default="m")
    sp.add_argument("group")
    args = p.parse_args()
    return listen(args) if args.cmd == "listen" else send(args)


if __name__ == "__main__":
    sys.exit(main())
