"""Sticky source addresses (issue 14): replies leave from the local address the peer's packet came to.

Host ``a`` runs wgdisco with two addresses of one family on one link; its peer ``b``
(wireguard-go from Debian, or a second wgdisco) is configured with ``Endpoint =`` the address
the kernel would NOT pick as the source on ``a`` (checked with ``ip route get``), so a reply whose
source the kernel chooses makes ``b`` roam to the other address. ``a`` knows no endpoint for ``b``:
it answers, as a responder does. Then that address is removed from ``a``: ``a``'s next send from it
fails (EINVAL), the stickiness is dropped, ``b`` roams to the address the kernel picks, and traffic
goes on.

Defaults: IPv6 fd00:aa::1/64 and fd00:aa::2/64 on ``a``, fd00:aa::3/64 on ``b``; IPv4 10.77.0.1/24
and 10.77.0.2/24 on ``a`` (.1 primary, .2 secondary), 10.77.0.3/24 on ``b``; port 51820 each.
"""

from __future__ import annotations

import re
import time

import pytest

from wgdisco.lab import Lab, require_tool
from wgdisco.lab.netns import Host
from wgdisco.lab.wg import Node, keypair

pytestmark = pytest.mark.netns

FAMILIES = {
    # family: (a's first address, a's second, b's address)
    "ipv6": ("fd00:aa::1/64", "fd00:aa::2/64", "fd00:aa::3/64"),
    "ipv4": ("10.77.0.1/24", "10.77.0.2/24", "10.77.0.3/24"),
}


def bare(addr: str) -> str:
    return addr.split("/")[0]


def hostport(ip: str, port: int = 51820) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def kernel_source(host: Host, dst: str) -> str:
    """The source address the kernel picks on ``host`` for a datagram to ``dst``."""
    out = host.run(["ip", "-6" if ":" in dst else "-4", "route", "get", dst]).stdout
    return re.search(r"\bsrc (\S+)", out).group(1)  # type: ignore[union-attr]


def endpoint_seen_by(node: Node, peer: Node) -> str | None:
    """``wg show <if> endpoints`` on ``node``: where it sends to ``peer``."""
    for line in node.host.run(["wg", "show", node.iface, "endpoints"]).stdout.splitlines():
        public, _, endpoint = line.partition("\t")
        if public == peer.public:
            return None if endpoint == "(none)" else endpoint
    return None


@pytest.mark.parametrize("family", ["ipv6", "ipv4"])
@pytest.mark.parametrize("kind_b", ["wireguard-go", "wgdisco"])
def test_replies_leave_from_the_address_the_peer_sent_to(lab: Lab, family: str, kind_b: str) -> None:
    if kind_b == "wireguard-go":
        require_tool("wireguard-go")
    require_tool("wg")
    first, second, addr_b = FAMILIES[family]
    ha, hb = lab.host("a"), lab.host("b")
    ia, _ib = lab.link(ha, hb, first, addr_b)
    ha.add_addr(ia, second)
    # the address b names is the one the kernel does not choose: without sticky sources, a's
    # replies would come from the other one
    chosen = kernel_source(ha, bare(addr_b))
    sticky = bare(second) if chosen == bare(first) else bare(first)
    assert chosen in (bare(first), bare(second)) and chosen != sticky
    tag = lab.prefix[3:9]
    a = Node(ha, "wgdisco", f"wa{tag}", *keypair(), ["10.9.0.1/24", "fd00:9::1/64"])
    b = Node(hb, kind_b, f"wb{tag}", *keypair(), ["10.9.0.2/24", "fd00:9::2/64"])
    a.peers = [b.peer_spec()]  # a answers: it learns b's endpoint from b's initiation
    b.peers = [a.peer_spec(hostport(sticky))]
    a.start()
    b.start()

    b.host.ping(a.inner4, count=3, wait=3)
    a.host.ping(b.inner6, count=2, wait=2)
    assert endpoint_seen_by(b, a) == hostport(sticky), "b roamed: a's replies left from another address"
    assert endpoint_seen_by(a, b) == hostport(bare(addr_b))

    # the sticky address goes away: a's next send from it fails, a lets the kernel choose,
    # and b follows a to the new source by roaming (whitepaper §2.1)
    if family == "ipv4":
        ha.sysctl(f"net.ipv4.conf.{ia}.promote_secondaries=1")  # removing a primary keeps the other
    ha.ip("addr", "del", f"{sticky}/{second.split('/')[1]}", "dev", ia)
    remaining = bare(first) if sticky == bare(second) else bare(second)
    start = time.monotonic()
    while a.host.ping(b.inner4, count=1, wait=1, check=False).returncode != 0:
        assert time.monotonic() < start + 10, "traffic from a never resumed after its address was removed"
    print(f"traffic resumed {time.monotonic() - start:.2f} s after the address was removed")
    b.host.ping(a.inner4, count=3, wait=2)
    a.host.ping(b.inner6, count=2, wait=2)
    assert endpoint_seen_by(b, a) == hostport(remaining)
    assert a.proc is not None and a.proc.alive()
    # the first send from the removed address failed and was retried from the kernel's choice
    assert f"from {sticky} (interface " in a.proc.stderr(), a.proc.stderr()


@pytest.mark.parametrize("kind_a", ["wgdisco", "wireguard-go"])
def test_a_new_route_through_another_interface_takes_its_source(lab: Lab, kind_a: str) -> None:
    """wireguard-linux netns.sh ("sticky sockets and route changes"): ``a`` reaches ``b``'s
    10.0.0.2 through its first link from 10.0.0.1; a better route through a second link with
    ``src 10.0.0.3`` is added. The kernel module forgets the remembered source when the route
    to the endpoint now leaves through another interface (socket.c send4), wireguard-go when a
    route change says so (device/sticky_linux.go), so ``b`` sees ``a`` come from 10.0.0.3.
    Replies still come back over the first link (``b`` routes 10.0.0.0/24 there; rp_filter 0)."""
    require_tool("wireguard-go")
    require_tool("wg")
    ha, hb = lab.host("a"), lab.host("b")
    ia1, _ib2 = lab.link(ha, hb, "10.0.0.1/24", "10.0.0.2/24")
    ia3, _ib4 = lab.link(ha, hb, "10.0.0.3/24", None)  # b's end has no address, as veth4
    ha.ip("route", "flush", "dev", ia1)
    ha.ip("route", "flush", "dev", ia3)
    ha.ip("route", "add", "10.0.0.0/24", "dev", ia1, "src", "10.0.0.1", "metric", "2")
    tag = lab.prefix[3:9]
    a = Node(ha, kind_a, f"wa{tag}", *keypair(), ["10.9.0.1/24", "fd00:9::1/64"])
    b = Node(hb, "wireguard-go", f"wb{tag}", *keypair(), ["10.9.0.2/24", "fd00:9::2/64"])
    a.peers = [b.peer_spec("10.0.0.2:51820")]
    b.peers = [a.peer_spec()]
    b.start()
    a.start()
    a.host.ping(b.inner4, count=1, wait=3)
    assert endpoint_seen_by(b, a) == "10.0.0.1:51820"

    ha.ip("route", "add", "10.0.0.0/24", "dev", ia3, "src", "10.0.0.3", "metric", "1")
    start = time.monotonic()
    while True:  # a ping a second: the change is noticed within one (a route event, then a lookup)
        a.host.ping(b.inner4, count=1, wait=1, check=False)
        if endpoint_seen_by(b, a) == "10.0.0.3:51820":
            break
        assert time.monotonic() < start + 5, f"b still sees a at {endpoint_seen_by(b, a)}"
    print(f"{kind_a}: b saw the new source {time.monotonic() - start:.2f} s after the route change")
    a.host.ping(b.inner4, count=2, wait=2)
    assert endpoint_seen_by(b, a) == "10.0.0.3:51820"
