"""Port mapping on a real gateway: miniupnpd (UPnP IGD, NAT-PMP, PCP) on a hard NAT router.

A hard NAT (endpoint-dependent mapping) ↔ an easy NAT has no direct path by hole punching
(tests/netns/test_nat_lab.py says why); with the hard router's miniupnpd the hard side maps its
listen port, publishes the mapped address, and the easy side's probes reach it. Each protocol
alone (PortMapping = pcp / natpmp / upnp) and the default (auto, no PortMapping key); every
other setting is the documented default (no PollInterval). At shutdown the mapping is gone
from miniupnpd's nftables table and from its own list (upnpc -l).
"""

from __future__ import annotations

import json
import re
import sys
import time

import pytest

from tests.netns.test_nat_lab import DOMAIN, KNOT, SCHEMA, STUN_A, STUN_B, first_ping, internet
from tests.schema_check import check
from wgdisco.lab import Lab, require_tool
from wgdisco.lab.knot import start_knot
from wgdisco.lab.miniupnpd import nft_rules
from wgdisco.lab.netns import Host, NatRouter
from wgdisco.lab.wg import Node, keypair

pytestmark = pytest.mark.netns
MODES = {"pcp": "pcp", "natpmp": "natpmp", "upnp": "upnp", None: "pcp"}  # None: the default (auto)


def status(node: Node) -> dict:
    out = json.loads(node.host.run([sys.executable, "-m", "wgdisco", "status", node.iface, "--json"]).stdout)
    check(out, SCHEMA)
    return out


def site(lab: Lab, wan: Host, name: str, index: int, kind: str, *, upnp: bool,
         natpmp: bool = True) -> tuple[Host, NatRouter]:
    lan = lab.lan(f"l{name}")
    router = lab.nat_router(f"r{name}", lan=lan, wan=wan, lan_addr=f"10.{index}.0.1/24",
                            wan_addr=f"203.0.113.{index}/24", kind=kind,  # type: ignore[arg-type]
                            upnp=[STUN_A, STUN_B] if upnp else None, upnp_natpmp=natpmp)
    host = lab.host(name)
    lab.attach(host, lan, f"10.{index}.0.2/24")
    host.add_route("default", via=f"10.{index}.0.1")
    return host, router


def mapped_hard_and_easy(lab: Lab, mode: str | None, kind_b: str = "easy", *,
                         natpmp: bool = True) -> tuple[Node, Node, NatRouter]:
    require_tool("miniupnpd")
    net = internet(lab)
    knot = start_knot(net.server, [KNOT])
    ha, router = site(lab, net.wan, "a", 1, "hard", upnp=True, natpmp=natpmp)
    hb, _ = site(lab, net.wan, "b", 2, kind_b, upnp=False)
    tag = lab.prefix[3:9]
    common = {"mDNS": "off", "STUN": f"{STUN_A}:3478, {STUN_B}:3478", "Domain": DOMAIN, "Nameserver": KNOT,
              "UpdateKey": knot.update_key}
    da = dict(common)
    if mode is not None:
        da["PortMapping"] = mode
    a = Node(ha, "wgdisco", f"wa{tag}", *keypair(), ["10.9.0.1/24"], discovery=da)
    b = Node(hb, "wgdisco", f"wb{tag}", *keypair(), ["10.9.0.2/24"], discovery=dict(common))
    a.peers = [b.peer_spec(keepalive=25)]
    b.peers = [a.peer_spec(keepalive=25)]
    return a, b, router


@pytest.mark.parametrize("mode", ["pcp", "natpmp", "upnp", None], ids=["pcp", "natpmp", "upnp", "auto"])
def test_hard_nat_with_port_mapping_to_easy_nat_is_direct_and_the_mapping_goes_at_shutdown(
        lab: Lab, mode: str | None) -> None:
    a, b, router = mapped_hard_and_easy(lab, mode)
    start = time.monotonic()
    a.start()
    b.start()
    first_ping(b, a.inner4, timeout=20)
    elapsed = time.monotonic() - start
    print(f"hard (miniupnpd, PortMapping = {mode or 'auto (default)'}) <-> easy: first ping {elapsed:.2f} s")
    # the figure users get is measured quietly (bench/discovery.py --scenario portmap, docs/performance.md);
    # this bound only catches a regression on a busy machine
    assert elapsed <= 8.0, f"first ping after {elapsed:.2f} s\n{a.proc.stderr()}\n{b.proc.stderr()}"  # type: ignore[union-attr]
    st = status(a)
    pm = st["port_mapping"]
    assert (pm["mode"], pm["state"], pm["protocol"], pm["gateway"]) == (mode or "auto", "mapped", MODES[mode], "10.1.0.1")
    m = re.fullmatch(r"203\.0\.113\.1:(\d+)", pm["external"] or "")
    assert m, pm
    external = pm["external"]
    assert pm["expires_in"] is None or 3000 < pm["expires_in"] <= 7200, pm
    assert MODES[mode] in pm["answered"]
    # b reaches a at the mapped address: direct, through the hard NAT's forwarding
    assert b.dump()[a.public]["endpoint"] == external
    peer = status(b)["peers"][0]
    assert (peer["path"], peer["endpoint"]) == ("direct", external)
    human = a.host.run([sys.executable, "-m", "wgdisco", "status", a.iface]).stdout
    assert f"port mapping: {external} by " in human, human
    rules = nft_rules(router)
    assert rules.count("dnat ip to 10.1.0.2:51820") == 1, rules  # one mapping kept (auto asks all three)
    assert "extra-deleted" not in pm["counters"], pm  # miniupnpd's protocols share one table: no extra
    assert a.stop() == 0
    err = a.proc.stderr()  # type: ignore[union-attr]
    assert "Traceback" not in err, err
    # deleted at shutdown: gone from the nftables ruleset and from the IGD's list
    rules = nft_rules(router)
    assert "10.1.0.2:51820" not in rules, rules
    listing = a.host.run(["upnpc", "-i", "-l"], check=False).stdout
    assert "10.1.0.2:51820" not in listing, listing
    assert b.stop() == 0


def test_auto_without_a_port_mapping_gateway_gives_up_quietly(lab: Lab) -> None:
    """The default (auto) behind a router without miniupnpd: PCP, NAT-PMP and UPnP are asked at
    once, nothing is published, status says what answered (nothing), and it stays quiet."""
    net = internet(lab)
    host, _ = site(lab, net.wan, "a", 1, "easy", upnp=False)
    a = Node(host, "wgdisco", f"wa{lab.prefix[3:9]}", *keypair(), ["10.9.0.1/24"],
             discovery={"mDNS": "off", "STUN": f"{STUN_A}:3478"})
    a.start()
    deadline = time.monotonic() + 15
    while (pm := status(a)["port_mapping"])["state"] != "failed":
        assert time.monotonic() < deadline, pm
        time.sleep(0.3)
    assert (pm["protocol"], pm["external"], pm["answered"]) == (None, None, [])
    assert pm["requests"] == 6, pm  # 3 PCP + 3 NAT-PMP (and UPnP's SSDP), and no more until the retry
    time.sleep(2)
    assert status(a)["port_mapping"]["requests"] == 6
    assert a.stop() == 0


def test_netcheck_reports_which_port_mapping_protocols_answered(lab: Lab) -> None:
    require_tool("miniupnpd")
    net = internet(lab)
    host, router = site(lab, net.wan, "a", 1, "hard", upnp=True)
    proc = host.run([sys.executable, "-m", "wgdisco", "netcheck", "--stun", f"{STUN_A}:3478", "--json"], check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pm = json.loads(proc.stdout)["port_mapping"]
    assert pm == {"gateway": "10.1.0.1", "pcp": True, "natpmp": True, "natpmp_external": "203.0.113.1",
                  "upnp": True, "upnp_external": "203.0.113.1", "answered": ["pcp", "natpmp", "upnp"], "error": None}
    human = host.run([sys.executable, "-m", "wgdisco", "netcheck", "--port-mapping"]).stdout
    assert "  * Port mapping: PCP yes, NAT-PMP yes (203.0.113.1), UPnP IGD yes (203.0.113.1) (gateway 10.1.0.1)\n" in human
    assert "10.1.0.2" not in nft_rules(router).split("prerouting_miniupnpd")[-1]  # nothing was mapped


def test_a_new_lan_address_gets_a_new_mapping_and_the_peer_follows(lab: Lab) -> None:
    """Roaming behind the mapping router (defaults: auto): the host's LAN address changes; the
    network change brings a new mapping for the new address, published at once, and the path
    recovers within 5 s."""
    a, b, router = mapped_hard_and_easy(lab, None)
    a.start()
    b.start()
    first_ping(b, a.inner4, timeout=20)
    old = status(a)["port_mapping"]["external"]
    ifname = a.host.run(["ip", "-o", "-4", "addr", "show", "to", "10.1.0.2"]).stdout.split()[1]
    a.host.sysctl(f"net.ipv4.conf.{ifname}.promote_secondaries=1")
    a.host.ip("addr", "add", "10.1.0.7/24", "dev", ifname)
    a.host.ip("addr", "del", "10.1.0.2/24", "dev", ifname)
    moved = time.monotonic()
    deadline = moved + 15
    while True:
        pm = status(a)["port_mapping"]
        if pm["state"] == "mapped" and "dnat ip to 10.1.0.7:51820" in nft_rules(router) and \
                b.host.run(["ping", "-c1", "-W1", a.inner4], check=False).returncode == 0:
            break
        assert time.monotonic() < deadline, f"{pm}\n{a.proc.stderr()}\n{b.proc.stderr()}"  # type: ignore[union-attr]
        time.sleep(0.1)
    recovery = time.monotonic() - moved
    print(f"new LAN address behind the mapping router: recovered after {recovery:.2f} s ({old} -> {pm['external']})")
    assert recovery < 5.0
    assert b.dump()[a.public]["endpoint"] == pm["external"]


def test_hard_nat_with_port_mapping_to_hard_nat_is_direct(lab: Lab) -> None:
    """Both NATs map per destination; one router maps a port (defaults: auto). The other side
    probes the mapped address from its hard NAT, whose new mapping the answers come back through."""
    a, b, _router = mapped_hard_and_easy(lab, None, kind_b="hard")
    start = time.monotonic()
    a.start()
    b.start()
    first_ping(b, a.inner4, timeout=20)
    elapsed = time.monotonic() - start
    print(f"hard (miniupnpd, auto) <-> hard: first ping {elapsed:.2f} s")
    assert elapsed <= 8.0
    external = status(a)["port_mapping"]["external"]
    assert (status(b)["peers"][0]["path"], b.dump()[a.public]["endpoint"]) == ("direct", external)


def test_auto_on_a_upnp_only_gateway_falls_through_to_upnp(lab: Lab) -> None:
    """miniupnpd with NAT-PMP and PCP off: the default (auto) asks all three at once, gets no PCP
    and no NAT-PMP answer (three requests each, 1.75 s), and maps by UPnP IGD; direct to the easy
    side."""
    a, b, router = mapped_hard_and_easy(lab, None, natpmp=False)
    start = time.monotonic()
    a.start()
    b.start()
    first_ping(b, a.inner4, timeout=30)
    elapsed = time.monotonic() - start
    print(f"hard (miniupnpd UPnP only, auto) <-> easy: first ping {elapsed:.2f} s")
    assert elapsed <= 12.0
    # the first ping may come by birthday punching (hard <-> easy) before UPnP has mapped
    deadline = time.monotonic() + 15
    while (pm := status(a)["port_mapping"])["state"] != "mapped":
        assert time.monotonic() < deadline, pm
        time.sleep(0.2)
    assert (pm["state"], pm["protocol"], pm["answered"], pm["requests"]) == ("mapped", "upnp", ["upnp"], 6), pm
    assert nft_rules(router).count("dnat ip to 10.1.0.2:51820") == 1
    assert a.stop() == 0
    assert "10.1.0.2:51820" not in nft_rules(router)
