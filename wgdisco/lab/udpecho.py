"""Tiny UDP "what is my address" tool, run inside lab namespaces.

    udpecho.py serve [--bind ADDR] PORT [PORT ...]
        Answer every datagram with the source the server observed, as
        "ip:port" ("[ip]:port" for IPv6).  Prints "READY ..." once bound and
        one log line per datagram.

    udpecho.py probe [--bind ADDR] [--port LPORT] [--timeout S] HOST:PORT ...
        From ONE socket (local port LPORT), send a datagram to each target in
        turn and print each answer on its own line.  Exit 1 if any target
        did not answer.

Standard library only; no imports from the project (it runs as a plain script).
"""

from __future__ import annotations

import argparse
import ipaddress
import selectors
import socket
import sys
from typing import Any


def fmt(addr: tuple[Any, ...]) -> str:
    ip, port = addr[0], addr[1]
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def parse_target(text: str) -> tuple[str, int]:
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
    else:
        host, _, port = text.rpartition(":")
    return str(ipaddress.ip_address(host)), int(port)


def family_of(ip: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def serve(bind: str, ports: list[int]) -> None:
    sel = selectors.DefaultSelector()
    for port in ports:
        sock = socket.socket(family_of(bind), socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((bind, port))
        sel.register(sock, selectors.EVENT_READ, data=sock)
    print("READY", *ports, flush=True)
    while True:
        for key, _ in sel.select():
            sock = key.data
            _data, addr = sock.recvfrom(2048)
            print(f"{fmt(addr)} -> port {sock.getsockname()[1]}", flush=True)
            sock.sendto(fmt(addr).encode(), addr)


def probe(bind: str | None, lport: int, timeout: float, targets: list[tuple[str, int]]) -> int:
    fam = family_of(targets[0][0])
    sock = socket.socket(fam, socket.SOCK_DGRAM)
    sock.bind((bind or ("::" if fam == socket.AF_INET6 else "0.0.0.0"), lport))
    tries = 3
    sock.settimeout(timeout / tries)
    status = 0
    for target in targets:
        for _ in range(tries):
            sock.sendto(b"probe", target)
            try:
                while True:  # skip late answers from an earlier target
                    data, src = sock.recvfrom(2048)
                    if (src[0], src[1]) == target:
                        break
            except TimeoutError:
                continue
            print(data.decode(), flush=True)
            break
        else:
            print(f"no answer from {fmt(target)}", file=sys.stderr)
            status = 1
    return status


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--bind", default="0.0.0.0")
    s.add_argument("ports", type=int, nargs="+")
    p = sub.add_parser("probe")
    p.add_argument("--bind")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--timeout", type=float, default=3.0)
    p.add_argument("targets", type=parse_target, nargs="+")
    args = ap.parse_args(argv)
    if args.cmd == "serve":
        serve(args.bind, args.ports)
        return 0
    return probe(args.bind, args.port, args.timeout, args.targets)


if __name__ == "__main__":
    sys.exit(main())
