"""Drive ``wgdisco.proto.stun.StunClient`` over one real UDP socket (run inside a lab host).

    python -m wgdisco.lab.stun_probe [--bind ADDR] [--port LPORT] [--no-fingerprint]
                                   [--deadline S] HOST:PORT [HOST:PORT ...]

The smallest possible shell: send ``datagrams_to_send()``, ``recvfrom`` until
the core's timer, hand STUN-looking datagrams to ``receive()``, call
``handle_timer()``; no refresh, so it ends when every server answered or its
transaction failed (RFC 5389 §7.2.1: at most 39.5 s).  Prints one JSON object:
``{"local": [ip, port], "mapped": {"ip:port": [ip, port]}, "behaviour": ...,
"reflexive": [...], "events": [...], "counters": {...}}``.  Exit status 0 if
every server answered, 1 otherwise.

Needs the wgdisco package importable (installed, or on ``PYTHONPATH``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import sys
import time

from wgdisco.proto.classify import STUN, classify
from wgdisco.proto.stun import StunClient


def hostport(addr: tuple[str, int]) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


def parse_target(text: str) -> tuple[str, int]:
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
    else:
        host, _, port = text.rpartition(":")
    return host, int(port)


def run(sock: socket.socket, client: StunClient, deadline: float) -> None:
    """The I/O loop; ``deadline`` (monotonic) only guards against a hang."""
    client.start(time.monotonic())
    while True:
        for data, addr in client.datagrams_to_send():
            sock.sendto(data, addr)
        timer = client.get_timer()
        if timer is None or time.monotonic() > deadline:
            return
        sock.settimeout(max(0.0, timer - time.monotonic()))
        try:
            data, src = sock.recvfrom(2048)
        except TimeoutError:
            pass
        else:
            if classify(data) == STUN:
                client.receive(data, (src[0], src[1]), time.monotonic())
        now = time.monotonic()
        if (timer := client.get_timer()) is not None and timer <= now:
            client.handle_timer(now)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bind")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--no-fingerprint", action="store_true")
    ap.add_argument("--deadline", type=float, default=60.0)
    ap.add_argument("servers", type=parse_target, nargs="+")
    args = ap.parse_args(argv)
    v6 = ":" in args.servers[0][0]
    sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((args.bind or ("::" if v6 else "0.0.0.0"), args.port))
    client = StunClient(args.servers, rng=os.urandom, refresh=None, fingerprint=not args.no_fingerprint)
    run(sock, client, time.monotonic() + args.deadline)
    report = {
        "local": list(sock.getsockname()[:2]),
        "mapped": {hostport(s): list(m) for s, m in client.mapped.items()},
        "behaviour": client.mapping_behaviour(),
        "reflexive": [list(r) for r in client.reflexive()],
        # ["mapped", server, address], ["changed", server, old, new], ["failed", server]
        "events": [[type(ev).__name__.removeprefix("Stun").lower(), *(hostport(v) for v in dataclasses.astuple(ev))]
                   for ev in client.events],
        "counters": dataclasses.asdict(client.counters),
    }
    print(json.dumps(report), flush=True)
    return 0 if len(client.mapped) == len(args.servers) else 1


if __name__ == "__main__":
    sys.exit(main())
