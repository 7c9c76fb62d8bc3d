"""Path MTU discovery in the lab (issue 25): A — router — B, the router's link to B narrower than
1500 and the router's ICMP "too big" filtered, tunnels at their default MTU (1420).

One set of namespaces for the module (the suite-time budget); each test starts its own pair of
wgdisco nodes on it, with the documented defaults ([Discovery] mDNS on: probes are spoken).

- a full 1500 path keeps 1420-byte inner packets (no needless reduction), and when the path MTU
  drops while a transfer runs (the link's MTU lowered), the black hole is found and the transfer
  goes on (stall <= 3 s);
- IPv6 underlay, a 1400-byte link from the start: 40 MB each way within 20 s, status <= 1400 - 80;
- IPv4 underlay whose router drops what it would have to fragment: the same, <= 1400 - 60.

wireguard-go, the reference that stalls on the same IPv6 lab: bench/pmtu_blackhole.py (docs/
troubleshooting.md "Path MTU"), kept out of the suite for its time.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from tests.observe import status, wait_until
from wgdisco.lab import LAB_DIR, Lab, require_tool
from wgdisco.lab.skips import require_netns
from wgdisco.lab.wg import Node, keypair

pytestmark = pytest.mark.netns

TCPXFER = str(LAB_DIR / "tcpxfer.py")
XFER = 40 * 2**20
OVERHEAD6, OVERHEAD4 = 40 + 8 + 32, 20 + 8 + 32  # outer IP + UDP + WireGuard


class Net:
    """A — R — B: 198.51.100.0/24 and 2001:db8:1::/64 on A's side, 203.0.113.0/24 and
    2001:db8:2::/64 on B's. The router's own ICMP "too big" is dropped (output chain) and, with
    ``drop_fragments``, IPv4 fragments never reach B (dropped before reassembly, as by a firewall
    that drops fragments): what the router has to fragment is lost."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.a, self.r, self.b = lab.host("a"), lab.router("r"), lab.host("b")
        lab.link(self.a, self.r, "198.51.100.1/24", "198.51.100.254/24", "2001:db8:1::1/64", "2001:db8:1::fe/64")
        self.b_to_r, self.r_to_b = lab.link(self.b, self.r, "203.0.113.2/24", "203.0.113.254/24",
                                  "2001:db8:2::2/64", "2001:db8:2::fe/64")
        for host, gw4, gw6 in ((self.a, "198.51.100.254", "2001:db8:1::fe"), (self.b, "203.0.113.254", "2001:db8:2::fe")):
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
            self.b.run(["nft", "add", "rule", "inet", "pmtu", "nofrag", "ip", "frag-off", "&", "0x3fff", "!=", "0", "drop"])

    def pair(self, *, outer6: bool) -> tuple[Node, Node]:
        self.n += 1
        tag = f"{self.lab.prefix[3:8]}{self.n}"
        a = Node(self.a, "wgdisco", f"pa{tag}", *keypair(), ["10.9.0.1/24", "fd00:9::1/64"],
                 listen_port=51820 + self.n, discovery={"mDNS": "on"})
        b = Node(self.b, "wgdisco", f"pb{tag}", *keypair(), ["10.9.0.2/24", "fd00:9::2/64"],
                 listen_port=51820 + self.n, discovery={"mDNS": "on"})
        host_b = f"[2001:db8:2::2]" if outer6 else "203.0.113.2"
        a.peers = [b.peer_spec(f"{host_b}:{b.listen_port}")]
        b.peers = [a.peer_spec()]
        b.start()
        a.start()
        a.host.ping(b.inner4, count=1, wait=5)
        return a, b


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    require_netns()
    require_tool("wg")
    lab = Lab()
    try:
        yield Net(lab)
    finally:
        lab.close()


def path_mtu(node: Node) -> dict:
    return status(node)["peers"][0]["path_mtu"]


def transfer(client: Node, server: Node, nbytes: int = XFER, during=None) -> dict:
    """TCP through the tunnel to the server's inner IPv4 (DF set, as Linux TCP does)."""
    srv = server.host.popen([sys.executable, TCPXFER, "serve", "5201"], name=f"xfer-srv-{time.monotonic_ns()}")
    srv.wait_for("listening", timeout=10)
    done = threading.Event()
    side = threading.Thread(target=during, args=(done,), daemon=True) if during else None
    if side is not None:
        side.start()
    try:
        out = client.host.run([sys.executable, TCPXFER, "send", server.inner4, "5201", str(nbytes)], timeout=120)
    finally:
        done.set()
        if side is not None:
            side.join(timeout=30)
    result = json.loads(out.stdout)
    assert result["up_ok"] and result["down_ok"], result
    srv.wait(timeout=30)
    return result


def rx_bytes(node: Node) -> int:
    return next(iter(node.dump().values()))["rx"]


def test_full_path_keeps_1420_and_a_path_mtu_drop_mid_transfer_is_survived(net: Net) -> None:
    net.set_mtu(1500)
    a, b = net.pair(outer6=True)
    try:
        found = wait_until(lambda: (m := path_mtu(a))["state"] == "complete" and m, 10,
                           lambda: f"the search to complete: {path_mtu(a)}")
        assert (found["inner"], found["path"], found["how"]) == (1420, 1500, "probe"), found
        # a 1420-byte inner packet with DF goes through: nothing was reduced needlessly
        a.host.run(["ping", "-c", "1", "-W", "3", "-M", "do", "-s", str(1420 - 28), b.inner4])

        def lower(done: threading.Event) -> None:  # once B has 8 MB of the upload, the path narrows
            wait_until(lambda: done.is_set() or rx_bytes(b) > 8 * 2**20, 30, "the transfer to start", 0.05)
            net.set_mtu(1400)

        result = transfer(a, b, during=lower)
        assert rx_bytes(b) > XFER  # the drop came while data flowed
        assert result["max_gap_s"] <= 3.0, result
        after = path_mtu(a)
        assert after["black_holes"] >= 1 and after["inner"] <= 1400 - OVERHEAD6, after
        assert re.search(r"path MTU: black hole", a.proc.stderr()), a.proc.stderr()  # type: ignore[union-attr]
    finally:
        a.stop()
        b.stop()


@pytest.mark.parametrize("outer6", [True, False], ids=["ipv6-underlay", "ipv4-underlay-drops-fragments"])
def test_black_hole_path_carries_40mb_within_20s(net: Net, outer6: bool) -> None:
    net.set_mtu(1400, drop_fragments=not outer6)
    a, b = net.pair(outer6=outer6)
    try:
        t0 = time.monotonic()
        result = transfer(a, b)
        assert time.monotonic() - t0 <= 20.0, result
        overhead = OVERHEAD6 if outer6 else OVERHEAD4
        for node in (a, b):
            m = path_mtu(node)
            assert m["state"] == "complete" and m["inner"] <= 1400 - overhead and m["path"] <= 1400, m
        # status in words too
        words = a.host.run([sys.executable, "-m", "wgdisco", "status", a.iface]).stdout
        assert "path MTU: inner packets up to" in words, words
    finally:
        a.stop()
        b.stop()
