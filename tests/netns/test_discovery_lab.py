"""Discovery in the lab: two nodes with each other's key and no Endpoint find each other.

Real parts: wgdisco daemons, Avahi (in its own mount namespace with its own dbus),
Knot (RFC 2136 + TSIG), wireguard-go. Everything inside namespaces the test made.
"""

from __future__ import annotations

import re
import time

import pytest

from tests.observe import metric, wait_until
from wgdisco.lab import Lab
from wgdisco.lab.avahi import Avahi, parse_browse, require_avahi
from wgdisco.lab.knot import start_knot, zone_name
from wgdisco.lab.wg import Node, keypair
from wgdisco.proto import keys

pytestmark = pytest.mark.netns
DOMAIN = "wg.example.net"


def label_of(public_b64: str) -> str:
    return keys.key_to_base32(keys.key_from_base64(public_b64))


def wait_ping(node: Node, target: str, timeout: float) -> float:
    """Seconds until one ping through the tunnel succeeds (pings every 100 ms, 1 s wait each)."""
    start = time.monotonic()
    while True:
        if node.host.run(["ping", "-c1", "-W1", "-i0.1", target], check=False).returncode == 0:
            return time.monotonic() - start
        assert time.monotonic() - start < timeout, f"no ping to {target} within {timeout} s"
        time.sleep(0.1)


def lan_pair(lab: Lab, discovery: dict[str, str]) -> tuple[Node, Node]:
    lan = lab.lan("lan")
    ha, hb = lab.host("a"), lab.host("b")
    lab.attach(ha, lan, "10.1.0.1/24", "fd00:1::1/64")
    lab.attach(hb, lan, "10.1.0.2/24", "fd00:1::2/64")
    tag = lab.prefix[3:9]
    a = Node(ha, "wgdisco", f"wa{tag}", *keypair(), ["10.9.0.1/24", "fd00:9::1/64"], discovery=dict(discovery))
    b = Node(hb, "wgdisco", f"wb{tag}", *keypair(), ["10.9.0.2/24", "fd00:9::2/64"], discovery=dict(discovery))
    a.peers = [b.peer_spec()]  # no Endpoint: discovery must find it
    b.peers = [a.peer_spec()]
    return a, b


# --- mDNS on one LAN -------------------------------------------------------------------------


def test_two_nodes_on_a_lan_connect_by_mdns_within_3s(lab: Lab) -> None:
    a, b = lan_pair(lab, {"mDNS": "on"})
    start = time.monotonic()
    b.start()
    a.start()
    wait_ping(a, b.inner4, timeout=10)
    total = time.monotonic() - start  # from starting both to the first ping through the tunnel
    assert total < 3.0, f"first ping after {total:.2f} s"
    a.host.ping(b.inner6, count=1, wait=2)
    assert a.dump()[b.public]["endpoint"] in ("10.1.0.2:51820", "[fd00:1::2]:51820")
    assert "handshake completed" in a.proc.stderr()  # type: ignore[union-attr]


def test_avahi_sees_our_records_and_we_use_an_avahi_published_one(lab: Lab) -> None:
    require_avahi()
    lan = lab.lan("lan")
    ha, hg, hv = lab.host("a"), lab.host("g"), lab.host("v")
    lab.attach(ha, lan, "10.1.0.1/24", "fd00:1::1/64")
    lab.attach(hg, lan, "10.1.0.3/24", "fd00:1::3/64")
    ifv = lab.attach(hv, lan, "10.1.0.9/24", "fd00:1::9/64")
    tag = lab.prefix[3:9]
    a = Node(ha, "wgdisco", f"wa{tag}", *keypair(), ["10.9.0.1/24", "fd00:9::1/64"], discovery={"mDNS": "on"})
    g = Node(hg, "wireguard-go", f"wg{tag}", *keypair(), ["10.9.0.3/24", "fd00:9::3/64"])
    a.peers = [g.peer_spec()]  # no endpoint: it comes from a record avahi-publish makes
    g.peers = [a.peer_spec()]
    g.start()
    a.start()
    avahi = Avahi(hv, ifv).start()
    # (a) avahi-browse resolves our instance with pub=
    deadline = time.monotonic() + 10
    while True:
        entries = parse_browse(avahi.run(["avahi-browse", "-rpt", "_wireguard._udp"], check=False).stdout)
        ours = [e for e in entries if e["name"] == label_of(a.public)]
        if ours or time.monotonic() > deadline:
            break
    assert ours, entries
    assert f"pub={a.public}" in ours[0]["txt"] and ours[0]["port"] == 51820  # type: ignore[operator]
    # (b) a record for the wireguard-go node, published by avahi-publish in wgsd layout
    avahi.popen(["avahi-publish", "-s", label_of(g.public), "_wireguard._udp", "51820",
                 "txtvers=1", f"pub={g.public}", "allowed=10.9.0.3/32", "cand=10.1.0.3:51820"])
    wait_ping(a, g.inner4, timeout=10)
    assert g.dump()[a.public]["latest_handshake"] > 0


def test_mdns_binds_a_lan_that_appears_after_start(lab: Lab) -> None:
    """Started before its network (at boot, before the link or DHCP): mDNS waits, then binds."""
    lan = lab.lan("lan")
    ha, hb = lab.host("a"), lab.host("b")
    lab.attach(hb, lan, "10.1.0.2/24")
    tag = lab.prefix[3:9]
    a = Node(ha, "wgdisco", f"wa{tag}", *keypair(), ["10.9.0.1/24"], discovery={"mDNS": "on"})
    b = Node(hb, "wgdisco", f"wb{tag}", *keypair(), ["10.9.0.2/24"], discovery={"mDNS": "on"})
    a.peers, b.peers = [b.peer_spec()], [a.peer_spec()]
    b.start()
    a.start()
    a.proc.wait_for(r"mDNS: no LAN interface yet", timeout=5, stream="stderr")  # type: ignore[union-attr]
    lab.attach(ha, lan, "10.1.0.1/24")
    took = wait_ping(a, b.inner4, timeout=15)
    assert took < 6.0, f"first ping {took:.2f} s after the LAN came up"
    assert b.dump()[a.public]["endpoint"] == "10.1.0.1:51820"
    assert "Traceback" not in a.proc.stderr()  # type: ignore[union-attr]


def test_mdns_follows_renumbering(lab: Lab) -> None:
    """A's LAN address changes: mDNS rebinds and A's record carries the new address, so a
    node that comes later reaches A there (IPv4 only, so no other candidate would do)."""
    lan = lab.lan("lan")
    ha, hb, hc = lab.host("a"), lab.host("b"), lab.host("c")
    ifa = lab.attach(ha, lan, "10.1.0.1/24")
    lab.attach(hb, lan, "10.1.0.2/24")
    lab.attach(hc, lan, "10.1.0.3/24")
    tag = lab.prefix[3:9]
    mk = lambda h, n, inner: Node(h, "wgdisco", f"w{n}{tag}", *keypair(), [inner], discovery={"mDNS": "on"})  # noqa: E731
    a, b, c = mk(ha, "a", "10.9.0.1/24"), mk(hb, "b", "10.9.0.2/24"), mk(hc, "c", "10.9.0.3/24")
    a.peers, b.peers, c.peers = [b.peer_spec(), c.peer_spec()], [a.peer_spec()], [a.peer_spec()]
    a.start()
    b.start()
    wait_ping(b, a.inner4, timeout=10)
    ha.ip("addr", "del", "10.1.0.1/24", "dev", ifa)  # (the other order would take 10.1.0.5 with it)
    ha.ip("addr", "add", "10.1.0.5/24", "dev", ifa)
    a.proc.wait_for(r"mDNS: rebinding", timeout=5, stream="stderr")  # type: ignore[union-attr]
    c.start()
    wait_ping(c, a.inner4, timeout=10)
    assert c.dump()[a.public]["endpoint"] == "10.1.0.5:51820"
    assert "Traceback" not in a.proc.stderr()  # type: ignore[union-attr]


# --- unicast DNS-SD with Knot --------------------------------------------------------------


def routed_sites(lab: Lab):
    """Site 1 (a, knot) and site 2 (b) on two LANs joined by a router: routed, no NAT."""
    r = lab.router("r")
    lan1, lan2 = lab.lan("lan1"), lab.lan("lan2")
    lab.attach(r, lan1, "198.51.100.1/24")
    lab.attach(r, lan2, "203.0.113.1/24")
    ha, hb, hk = lab.host("a"), lab.host("b"), lab.host("k")
    lab.attach(ha, lan1, "198.51.100.10/24")
    lab.attach(hk, lan1, "198.51.100.53/24")
    lab.attach(hb, lan2, "203.0.113.20/24")
    for h, gw in ((ha, "198.51.100.1"), (hk, "198.51.100.1"), (hb, "203.0.113.1")):
        h.add_route("default", via=gw)
    return ha, hb, hk


def test_knot_publish_lookup_connect_across_a_router(lab: Lab) -> None:
    ha, hb, hk = routed_sites(lab)
    knot = start_knot(hk, ["198.51.100.53"])
    tag = lab.prefix[3:9]
    common = {"mDNS": "off", "Domain": DOMAIN, "Nameserver": "198.51.100.53"}
    a = Node(ha, "wgdisco", f"wa{tag}", *keypair(), ["10.9.0.1/24"], discovery={**common, "UpdateKey": knot.update_key})
    b = Node(hb, "wgdisco", f"wb{tag}", *keypair(), ["10.9.0.2/24"], discovery=dict(common))
    a.peers = [b.peer_spec()]
    b.peers = [a.peer_spec()]
    a.start()
    b.start()
    label = label_of(a.public)
    deadline = time.monotonic() + 10
    while "SRV" not in knot.dig(hb, f"{label}._wireguard._udp.{DOMAIN}.", "SRV"):
        assert time.monotonic() < deadline, knot.log() + a.proc.stderr()  # type: ignore[union-attr]
        time.sleep(0.2)
    assert label in knot.dig(hb, f"_wireguard._udp.{DOMAIN}.", "PTR")
    txt = knot.dig(hb, f"{label}._wireguard._udp.{DOMAIN}.", "TXT")
    assert '"txtvers=1"' in txt and f'"pub={a.public}"' in txt and '"allowed=10.9.0.1/32"' in txt
    assert "198.51.100.10" in knot.dig(hb, f"wg-{label[:16]}.{DOMAIN}.", "A")
    wait_ping(b, a.inner4, timeout=10)  # b found a through Knot, across the router
    assert b.dump()[a.public]["endpoint"] == "198.51.100.10:51820"
    # clean shutdown withdraws a's records
    assert a.stop() == 0
    assert "SRV" not in knot.dig(hb, f"{label}._wireguard._udp.{DOMAIN}.", "SRV")


def test_hand_written_wgsd_zone_is_consumed(lab: Lab) -> None:
    ha, hb, hk = routed_sites(lab)
    tag = lab.prefix[3:9]
    g = Node(ha, "wireguard-go", f"wg{tag}", *keypair(), ["10.9.0.1/24"])
    label = label_of(g.public)
    # wgsd's own layout, as its CoreDNS plugin serves it: TTL 0, the A record at the SRV target
    zone = (f"_wireguard._udp 0 IN PTR {zone_name(label)}._wireguard._udp\n"
            f"{zone_name(label)}._wireguard._udp 0 IN SRV 0 0 51820 {zone_name(label)}._wireguard._udp\n"
            f"{zone_name(label)}._wireguard._udp 0 IN A 198.51.100.10\n"
            f'{zone_name(label)}._wireguard._udp 0 IN TXT "txtvers=1" "pub={g.public}" "allowed=10.9.0.1/32"\n')
    start_knot(hk, ["198.51.100.53"], extra_records=zone)
    b = Node(hb, "wgdisco", f"wb{tag}", *keypair(), ["10.9.0.2/24"],
             discovery={"mDNS": "off", "Domain": DOMAIN, "Nameserver": "198.51.100.53"})
    b.peers = [g.peer_spec()]
    g.peers = [b.peer_spec()]
    g.start()
    b.start()
    wait_ping(b, g.inner4, timeout=10)


# --- bad input ----------------------------------------------------------------------------


def test_nameserver_down_then_back_and_wrong_tsig_key(lab: Lab) -> None:
    ha, hb, hk = routed_sites(lab)
    knot = start_knot(hk, ["198.51.100.53"])
    knot.stop()
    tag = lab.prefix[3:9]
    common = {"mDNS": "off", "Domain": DOMAIN, "Nameserver": "198.51.100.53"}
    bad_key = "hmac-sha256:wgdisco.:" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="
    a = Node(ha, "wgdisco", f"wa{tag}", *keypair(), ["10.9.0.1/24"], discovery={**common, "UpdateKey": knot.update_key})
    b = Node(hb, "wgdisco", f"wb{tag}", *keypair(), ["10.9.0.2/24"],
             discovery={**common, "UpdateKey": bad_key, "Metrics": "127.0.0.1:9586"})
    a.peers = [b.peer_spec()]
    b.peers = [a.peer_spec()]
    a.start()
    b.start()
    # several failed lookups and publish retries against the dead server (b's counter says so) ...
    wait_until(lambda: metric(b, "dns_errors_total") >= 4, 30, lambda: f"4 DNS errors\n{b.proc.stderr()}")  # type: ignore[union-attr]
    assert a.proc.alive() and b.proc.alive()  # type: ignore[union-attr]
    # ... and one line in the log for the outage, not one per attempt
    outage_lines = re.findall(r"DNS-SD lookups: .*retrying with backoff", b.proc.stderr())  # type: ignore[union-attr]
    assert len(outage_lines) == 1, b.proc.stderr()  # type: ignore[union-attr]
    knot.start()
    wait_ping(b, a.inner4, timeout=60)  # recovered: a published, b looked it up
    assert "DNS-SD lookups: working again" in b.proc.stderr()  # type: ignore[union-attr]
    # b's key is wrong: one clear error naming the key, no crash
    deadline = time.monotonic() + 10
    while "TSIG key 'wgdisco.' was refused" not in b.proc.stderr():  # type: ignore[union-attr]
        assert time.monotonic() < deadline, b.proc.stderr()  # type: ignore[union-attr]
        time.sleep(0.2)
    assert "Traceback" not in a.proc.stderr() + b.proc.stderr()  # type: ignore[union-attr]


def test_records_never_disturb_a_live_tunnel(lab: Lab) -> None:
    ha, hb, hk = routed_sites(lab)
    tag = lab.prefix[3:9]
    # this test counts lookup rounds that see the forged record, so it sets their interval
    common = {"mDNS": "off", "Domain": DOMAIN, "Nameserver": "198.51.100.53", "PollInterval": "1"}
    a = Node(ha, "wgdisco", f"wa{tag}", *keypair(), ["10.9.0.1/24"], discovery={"mDNS": "off"})
    b = Node(hb, "wgdisco", f"wb{tag}", *keypair(), ["10.9.0.2/24"], discovery=dict(common))
    label = label_of(a.public)
    forged = (f"_wireguard._udp 60 IN PTR {zone_name(label)}._wireguard._udp\n"
              f"{zone_name(label)}._wireguard._udp 60 IN SRV 0 0 4444 evil\n"
              f"evil 60 IN A 198.51.100.66\n"
              f'{zone_name(label)}._wireguard._udp 60 IN TXT "txtvers=1" "pub={a.public}" "cand=198.51.100.67:1,junk"\n'
              f'{zone_name(label)}._wireguard._udp 60 IN TXT "txtvers=1" "pub={a.public}" "cand=[::1"\n')
    start_knot(hk, ["198.51.100.53"], extra_records=forged)
    a.peers = [b.peer_spec(keepalive=1)]
    b.peers = [a.peer_spec("198.51.100.10:51820", keepalive=1)]  # b knows the real endpoint
    a.start()
    b.start()
    wait_ping(b, a.inner4, timeout=5)
    # Letting time pass to show that nothing happens: four poll rounds (PollInterval 1 s) that each
    # see the forged record must leave the live endpoint alone. Not a wait for something to happen:
    # the counters asserted at the end prove the rounds ran (hints-ignored-live >= 3).
    time.sleep(4)
    assert b.dump()[a.public]["endpoint"] == "198.51.100.10:51820"
    b.host.ping(a.inner4, count=3, wait=1)
    assert b.stop() == 0
    err = b.proc.stderr()  # type: ignore[union-attr]
    assert "endpoint 198.51.100.10:51820 -> " not in err
    counted = dict(kv.split("=") for kv in re.search(r"discovery: (.*)", err).group(1).split())  # type: ignore[union-attr]
    assert int(counted["hints-ignored-live"]) >= 3 and int(counted["record-parts-malformed"]) >= 3, err


def test_peers_set_over_uapi_connect_and_a_new_private_key_is_published(lab: Lab) -> None:
    """Issue 13, as a user found it: no [Peer] at start, keys given with `wg set`; then a new key.

    Both go through the daemon's UAPI handler into the node core (add_peer, set_identity), so
    this also checks the wiring the in-memory tests of proto/node.py cannot see.
    """
    a, b = lan_pair(lab, {"mDNS": "on"})
    a.peers, b.peers = [], []
    a.start()
    b.start()
    for x, y in ((a, b), (b, a)):
        x.host.run(["wg", "set", x.iface, "peer", y.public, "allowed-ips", ",".join(y.host_routes())])
    took = wait_ping(a, b.inner4, timeout=10)
    assert took < 5.0, f"first ping {took:.2f} s after wg set"
    assert a.dump()[b.public]["endpoint"] in ("10.1.0.2:51820", "[fd00:1::2]:51820")
    # a takes a new private key; b learns only the new public key, with no endpoint: it can
    # reach a only through the record a publishes under its new key (the old one is withdrawn)
    new_private, new_public = keypair()
    keyfile = lab.logdir / f"{a.iface}.newkey"
    keyfile.write_text(new_private + "\n")
    keyfile.chmod(0o600)
    a.host.run(["wg", "set", a.iface, "private-key", str(keyfile)])
    b.host.run(["wg", "set", b.iface, "peer", a.public, "remove",
                "peer", new_public, "allowed-ips", ",".join(a.host_routes())])
    took = wait_ping(b, a.inner4, timeout=10)
    assert took < 5.0, f"first ping {took:.2f} s after the key change"
    assert b.dump()[new_public]["endpoint"] in ("10.1.0.1:51820", "[fd00:1::1]:51820")
    assert a.public not in b.dump()
    err = a.proc.stderr() + b.proc.stderr()  # type: ignore[union-attr]
    assert "Traceback" not in err and new_private not in err
