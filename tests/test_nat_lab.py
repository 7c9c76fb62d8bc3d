"""NAT traversal in the lab: nftables NAT routers, a real STUN server, Knot, wgdisco daemons.

"Internet": 203.0.113.0/24 (a WAN bridge). Sites behind NAT routers: 10.1.0.0/24, 10.2.0.0/24.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import pytest

from tests.lab import Lab, require_tool
from tests.lab.knot import start_knot
from tests.lab.netns import Host
from tests.lab.wg import Node, keypair
from wgdisco.proto import keys

pytestmark = pytest.mark.netns
DOMAIN = "wg.example.net"
STUN_A, STUN_B, KNOT = "203.0.113.10", "203.0.113.11", "203.0.113.53"


@dataclass
class Internet:
    lab: Lab
    wan: Host
    server: Host

    def site(self, name: str, index: int, kind: str = "easy") -> Host:
        """A host at 10.<index>.0.2 behind its own NAT router, WAN address 203.0.113.<index>."""
        lan = self.lab.lan(f"l{name}")
        self.lab.nat_router(f"r{name}", lan=lan, wan=self.wan, lan_addr=f"10.{index}.0.1/24",
                            wan_addr=f"203.0.113.{index}/24", kind=kind)
        host = self.lab.host(name)
        self.lab.attach(host, lan, f"10.{index}.0.2/24")
        host.add_route("default", via=f"10.{index}.0.1")
        return host


def internet(lab: Lab) -> Internet:
    require_tool("stund")
    wan = lab.lan("wan")
    server = lab.host("srv")
    lab.attach(server, wan, f"{STUN_A}/24")
    server.add_addr(server.run(["ip", "-o", "-4", "addr", "show", "to", STUN_A]).stdout.split()[1], f"{STUN_B}/24")
    server.add_addr(server.run(["ip", "-o", "-4", "addr", "show", "to", STUN_A]).stdout.split()[1], f"{KNOT}/24")
    stund = server.popen(["stund", "-v", "-h", STUN_A, "-a", STUN_B], name="stund")
    deadline = time.monotonic() + 10
    while f"{STUN_A}:3478" not in server.run(["ss", "-Hnlu"]).stdout:
        assert stund.alive() and time.monotonic() < deadline, stund.stdout() + stund.stderr()
        time.sleep(0.05)
    return Internet(lab, wan, server)


def test_stun_on_the_tunnel_socket_finds_the_reflexive_address_and_publishes_it(lab: Lab) -> None:
    net = internet(lab)
    knot = start_knot(net.server, [KNOT])
    host = net.site("a", 1, "easy")
    tag = lab.prefix[3:9]
    a = Node(host, "wgdisco", f"wa{tag}", *keypair(), ["10.9.0.1/24"], discovery={
        "mDNS": "off", "STUN": f"{STUN_A}:3478, {STUN_B}:3478", "Domain": DOMAIN, "Nameserver": KNOT,
        "UpdateKey": knot.update_key})
    a.start()
    a.proc.wait_for(r"STUN: reflexive address 203\.0\.113\.1:51820; NAT mapping endpoint-independent",
                    timeout=10, stream="stderr")  # type: ignore[union-attr]
    label = keys.key_to_base32(keys.key_from_base64(a.public))
    deadline = time.monotonic() + 10
    while "cand=10.1.0.2:51820,203.0.113.1:51820" not in knot.dig(net.server, f"{label}._wireguard._udp.{DOMAIN}.", "TXT"):
        assert time.monotonic() < deadline, a.proc.stderr()  # type: ignore[union-attr]
        time.sleep(0.2)
    assert a.stop() == 0
    assert "stun-unexpected" not in a.proc.stderr()  # type: ignore[union-attr]  # every answer was ours


def test_hard_nat_is_detected(lab: Lab) -> None:
    net = internet(lab)
    host = net.site("a", 1, "hard")
    tag = lab.prefix[3:9]
    a = Node(host, "wgdisco", f"wa{tag}", *keypair(), ["10.9.0.1/24"],
             discovery={"mDNS": "off", "STUN": f"{STUN_A}:3478, {STUN_B}:3478"})
    a.start()
    m = a.proc.wait_for(r"STUN: reflexive address (.*); NAT mapping endpoint-dependent",  # type: ignore[union-attr]
                        timeout=10, stream="stderr")
    assert re.fullmatch(r"203\.0\.113\.1:\d+, 203\.0\.113\.1:\d+", m.group(1)), m.group(0)
