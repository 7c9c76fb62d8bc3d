"""A narrow path for path MTU tests (issue 25): A — router — B, the link between the router and B
narrower than 1500, the router's ICMP "too big" dropped (tests/netns/test_pmtu_lab.py,
bench/pmtu_blackhole.py).

A's side is 198.51.100.0/24 and 2001:db8:1::/64, B's 203.0.113.0/24 and 2001:db8:2::/64. With
``drop_fragments``, IPv4 fragments never reach B (dropped before reassembly, as by a firewall that
drops fragments): what the router has to fragment is lost.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Callable

from . import LAB_DIR
from .netns import Lab
from .wg import Node, keypair

TCPXFER = str(LAB_DIR / "tcpxfer.py")


class NarrowPath:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.a, self.r, self.b = lab.host("a"), lab.router("r"), lab.host("b")
        lab.link(self.a, self.r, "198.51.100.1/24", "198.51.100.254/24", "2001:db8:1::1/64", "2001:db8:1::fe/64")
        self.b_to_r, self.r_to_b = lab.link(self.b, self.r, "203.0.113.2/24", "203.0.113.254/24",
                                            "2001:db8:2::2/64", "2001:db8:2::fe/64")
        for host, gw4, gw6 in ((self.a, "198.51.100.254", "2001:db8:1::fe"),
                               (self.b, "203.0.113.254", "2001:db8:2::fe")):
            host.add_route("default", via=gw4)
            host.add_route("default", via=gw6)
        self.r.run(["nft", "-f", "-"], input=(
            "table inet pmtu {\n"
            "  chain out { type filter hook output priority 0; policy accept;\n"
            "    icmp type destination-unreachable icmp code frag-needed drop\n"
            "    icmpv6 type packet-too-big drop\n  }\n"
            "}\n"))
        self.b.run(["nft", "-f", "-"], input=(
            "table inet pmtu {\n"
            "  chain nofrag { type filter hook prerouting priority -450; policy accept; }\n"  # before defrag
            "}\n"))
        self.n = 0

    def set_mtu(self, mtu: int, *, drop_fragments: bool = False) -> None:
        """The link between the router and B: ``mtu`` at both ends."""
        self.r.ip("link", "set", self.r_to_b, "mtu", str(mtu))
        self.b.ip("link", "set", self.b_to_r, "mtu", str(mtu))
        self.b.run(["nft", "flush", "chain", "inet", "pmtu", "nofrag"])
        if drop_fragments:
            self.b.run(["nft", "add", "rule", "inet", "pmtu", "nofrag", "ip", "frag-off", "&", "0x3fff", "!=", "0",
                        "drop"])

    def pair(self, *, outer6: bool, kind: str = "wgdisco", binary: str = "wireguard-go") -> tuple[Node, Node]:
        """Two nodes of ``kind`` at their defaults (wgdisco: [Discovery] mDNS on), A knowing B's endpoint."""
        self.n += 1
        tag = f"{self.lab.prefix[3:8]}{self.n}"
        port = 51820 + self.n
        disco = {"mDNS": "on"}
        a = Node(self.a, kind, f"pa{tag}", *keypair(), ["10.9.0.1/24", "fd00:9::1/64"], listen_port=port,
                 discovery=disco, binary=binary)
        b = Node(self.b, kind, f"pb{tag}", *keypair(), ["10.9.0.2/24", "fd00:9::2/64"], listen_port=port,
                 discovery=dict(disco), binary=binary)
        host_b = "[2001:db8:2::2]" if outer6 else "203.0.113.2"
        a.peers = [b.peer_spec(f"{host_b}:{port}")]
        b.peers = [a.peer_spec()]
        b.start()
        a.start()
        a.host.ping(b.inner4, count=1, wait=5)
        return a, b


def transfer(client: Node, server: Node, nbytes: int, *, during: Callable[[threading.Event], None] | None = None,
             timeout: float = 120.0) -> dict:
    """TCP through the tunnel to the server's inner IPv4 (DF set, as Linux TCP does), ``nbytes``
    each way (lab/tcpxfer.py); ``during`` runs in a thread meanwhile (told when it is over).
    Raises ``CommandError`` (with tcpxfer's error) if it does not complete within ``timeout``."""
    srv = server.host.popen([sys.executable, TCPXFER, "serve", "5201"], name=f"xfer-srv-{time.monotonic_ns()}")
    done = threading.Event()
    side = threading.Thread(target=during, args=(done,), daemon=True) if during else None
    try:
        srv.wait_for("listening", timeout=10)
        if side is not None:
            side.start()
        out = client.host.run([sys.executable, TCPXFER, "send", server.inner4, "5201", str(nbytes)],
                              timeout=timeout)
        result = json.loads(out.stdout)
        srv.wait(timeout=30)
        return result
    finally:
        done.set()
        if side is not None and side.is_alive():
            side.join(timeout=30)
        srv.stop()
