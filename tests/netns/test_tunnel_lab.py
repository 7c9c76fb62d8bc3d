"""The userspace tunnel in the lab, against real wireguard-go + wg (Debian's), and against itself.

Each test builds its own namespaces (wgdisco/lab), starts real daemons, and tears
everything down, also on failure.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import sys
import time
from pathlib import Path

import pytest

from tests.observe import status, wait_until
from wgdisco.lab import LAB_DIR, Lab, require_tool
from wgdisco.lab.skips import netns_required
from wgdisco.lab.wg import Node, PeerSpec, keypair, pair
from wgdisco.proto import icmp

pytestmark = pytest.mark.netns

TCPXFER = str(LAB_DIR / "tcpxfer.py")
XFER_BYTES = 50 * 2**20
REPO = str(Path(__file__).resolve().parents[2])


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tool("wireguard-go")
    require_tool("wg")


def transfer(client: Node, server: Node, *, inner6: bool, nbytes: int = XFER_BYTES) -> dict:
    """TCP through the tunnel, nbytes each way, SHA-256 checked on both sides."""
    srv = server.host.popen([sys.executable, TCPXFER, "serve", "5201"], name=f"xfer-srv-{time.monotonic_ns()}")
    srv.wait_for("listening", timeout=10)
    target = server.inner6 if inner6 else server.inner4
    out = client.host.run([sys.executable, TCPXFER, "send", target, "5201", str(nbytes)], timeout=300)
    result = json.loads(out.stdout)
    assert result["up_ok"] and result["down_ok"], result
    srv.wait(timeout=30)
    assert json.loads(srv.stdout().splitlines()[-1]) == {"received": nbytes, "ok": True}
    return result


def handshakes_logged(node: Node) -> int:
    assert node.proc is not None
    return len(re.findall(r"handshake completed", node.proc.stderr()))


# --- interop and self: ping + 50 MB both ways -------------------------------------

CASES = [
    # (peer kind, outer IPv6?, who knows the endpoint: that side initiates)
    pytest.param("wireguard-go", False, "a", id="wireguard-go/outer4/wgdisco-initiates"),
    pytest.param("wireguard-go", True, "b", id="wireguard-go/outer6/wgdisco-responds"),
    pytest.param("wgdisco", False, "a", id="wgdisco/outer4"),
    pytest.param("wgdisco", True, "b", id="wgdisco/outer6"),
]
# Both data paths (docs/tunnel.md "Data paths"): "auto" is the default (the compiled one where it
# is built, required here when CI runs: WGDISCO_REQUIRE_NETNS=1), "python" the reference.
DATAPATHS = ["auto", "python"]


@pytest.mark.parametrize("datapath", DATAPATHS)
@pytest.mark.parametrize("kind_b,outer6,initiator", CASES)
def test_ping_and_50mb_both_ways(lab: Lab, kind_b: str, outer6: bool, initiator: str, datapath: str) -> None:
    env = {"WGDISCO_DATAPATH": datapath}
    if datapath == "auto" and netns_required():
        env["WGDISCO_DATAPATH"] = "c"  # in CI the compiled path must be there (make venv builds it)
    a, b = pair(lab, "wgdisco", kind_b, outer6=outer6, endpoint_on=initiator, env=env)
    first, second = (a, b) if initiator == "a" else (b, a)
    # the side without the other's endpoint can only respond: the first ping proves who initiates
    first.host.ping(second.inner4, count=3, wait=3)
    first.host.ping(second.inner6, count=3, wait=3)
    second.host.ping(first.inner4, count=2, wait=2)
    second.host.ping(first.inner6, count=2, wait=2)
    result = transfer(first, second, inner6=outer6)
    assert result["bytes"] == XFER_BYTES
    # `wg show` on the wgdisco interface: peer, endpoint, handshake, counters
    view = a.dump()[b.public]
    outer_b = "[2001:db8:1::2]:51820" if outer6 else "198.51.100.2:51820"
    assert view["endpoint"] == outer_b
    assert view["latest_handshake"] > time.time() - 120
    assert view["rx"] > XFER_BYTES and view["tx"] > XFER_BYTES
    expected = "data path: pure Python" if datapath == "python" else "data path: "
    assert expected in a.proc.stderr(), a.proc.stderr()  # type: ignore[union-attr]
    assert a.stop() == 0
    assert not a.host.run(["ip", "link", "show", a.iface], check=False).returncode == 0  # interface removed
    assert not Path(f"/var/run/wireguard/{a.iface}.sock").exists()


# --- rekeying under traffic --------------------------------------------------------

SHORT = {"rekey_after_time": 2.0, "reject_after_time": 4.0, "keepalive_timeout": 1.0,
         "rekey_timeout": 0.5, "rekey_attempt_time": 3.0}


def test_rekey_repeatedly_while_traffic_flows(lab: Lab) -> None:
    a, b = pair(lab, "wgdisco", "wgdisco", endpoint_on="both", timing=SHORT)
    a.host.ping(b.inner4, count=1, wait=3)
    out = a.host.run(["ping", "-q", "-i", "0.01", "-c", "1200", "-W", "1", b.inner4], check=False, timeout=60).stdout
    sent, received = map(int, re.search(r"(\d+) packets transmitted, (\d+) received", out).groups())  # type: ignore[union-attr]
    assert sent == 1200
    assert sent - received <= 5, out
    # ~12 s of traffic with REKEY_AFTER_TIME = 2 s: both sides completed many handshakes
    assert handshakes_logged(a) >= 4 and handshakes_logged(b) >= 4, (a.proc.stderr(), b.proc.stderr())  # type: ignore[union-attr]


# --- roaming (whitepaper §2.1) -------------------------------------------------------


@pytest.mark.parametrize("mover_kind,follower_kind", [
    ("wgdisco", "wireguard-go"), ("wgdisco", "wgdisco"), ("wireguard-go", "wgdisco"),
])
def test_roaming_peer_follows_the_new_address(lab: Lab, mover_kind: str, follower_kind: str) -> None:
    a, b = pair(lab, mover_kind, follower_kind, endpoint_on="a")
    a.host.ping(b.inner4, count=2, wait=3)
    pinger = a.host.popen(["ping", "-i", "0.05", "-c", "100", "-W", "1", b.inner4], name="roam-ping")
    time.sleep(1.5)
    dev = a.host.run(["ip", "-o", "-4", "addr", "show", "to", "198.51.100.1"]).stdout.split()[1]
    a.host.sysctl(f"net.ipv4.conf.{dev}.promote_secondaries=1")  # keep the new address when the old goes
    a.host.ip("addr", "add", "198.51.100.11/24", "dev", dev)
    a.host.ip("addr", "del", "198.51.100.1/24", "dev", dev)
    if mover_kind == "wgdisco":
        # one packet from the new address is enough: the follower answers there at once
        a.host.ping(b.inner4, count=1, wait=2)
    else:
        # wireguard-go keeps its sticky source address until a handshake retransmission
        # clears it (device/timers.go); give it that time, then our follower must have moved
        deadline = time.monotonic() + 30
        while a.host.ping(b.inner4, count=1, wait=1, check=False).returncode != 0:
            assert time.monotonic() < deadline, "wireguard-go never sent from its new address"
    assert b.dump()[a.public]["endpoint"] == "198.51.100.11:51820"
    pinger.wait(timeout=30)
    received = int(re.search(r"(\d+) received", pinger.stdout()).group(1))  # type: ignore[union-attr]
    if mover_kind == "wgdisco":
        assert received >= 95, pinger.stdout()
    if follower_kind == "wgdisco":
        assert "endpoint 198.51.100.1:51820 -> 198.51.100.11:51820" in b.proc.stderr()  # type: ignore[union-attr]


# --- cookies under load (whitepaper §5.3) -----------------------------------------------


@pytest.mark.last  # a flood: after the rest (conftest.py)
def test_cookie_replies_under_flood_and_genuine_peer_gets_through(lab: Lab) -> None:
    lan = lab.lan("lan")
    ha, hb, hc = lab.host("a"), lab.host("b"), lab.host("c")
    lab.attach(ha, lan, "198.51.100.1/24")
    lab.attach(hb, lan, "198.51.100.2/24")
    lab.attach(hc, lan, "198.51.100.3/24")
    tag = lab.prefix[3:9]
    b = Node(hb, "wgdisco", f"wb{tag}", *keypair(), ["10.9.0.2/24", "fd00:9::2/64"])
    a = Node(ha, "wireguard-go", f"wa{tag}", *keypair(), ["10.9.0.1/24", "fd00:9::1/64"])
    b.peers = [a.peer_spec()]
    a.peers = [b.peer_spec("198.51.100.2:51820")]
    b.start(load_threshold=50)
    a.start()
    flood = hc.popen([sys.executable, "-m", "wgdisco.lab.flood", "initiations", "198.51.100.2", "51820",
                      b.public, "3000", "8"], name="flood", env={"PYTHONPATH": REPO})
    # the responder is under load now: its status says so (docs/troubleshooting.md)
    wait_until(lambda: status(b)["handshakes"]["under_load"], 15,
               lambda: f"b under load (status handshakes: {status(b)['handshakes']})\n{flood.stderr()}")
    a.host.ping(b.inner4, count=1, wait=10)  # wireguard-go: cookie reply, then mac2, then through
    assert flood.wait(timeout=30) == 0, flood.stderr()
    result = json.loads(flood.stdout())
    assert result["cookie_replies"] >= 1000 and result["valid_cookie"], result
    assert result["other_replies"] == 0, result  # a stranger never gets a handshake response
    assert b.dump()[a.public]["latest_handshake"] > 0
    assert b.stop() == 0
    summary = re.search(r"going down; dropped: (.*)", b.proc.stderr()).group(1)  # type: ignore[union-attr]
    # before the load threshold, the strangers' initiations were consumed and refused (unknown peer)
    assert "handshake-auth" in summary, summary


# --- bad input --------------------------------------------------------------------


def test_malformed_datagrams_are_dropped_counted_and_harmless(lab: Lab) -> None:
    a, b = pair(lab, "wgdisco", "wireguard-go", endpoint_on="a")
    a.host.ping(b.inner4, count=1, wait=3)
    out = b.host.run([sys.executable, "-m", "wgdisco.lab.flood", "garbage", "198.51.100.1", "51820", a.public],
                     env={"PYTHONPATH": REPO})
    sent = json.loads(out.stdout)["sent"]
    assert len(sent) == 16
    a.host.ping(b.inner4, count=2, wait=2)  # the tunnel is unharmed
    assert a.proc is not None and a.proc.alive()
    assert a.stop() == 0
    summary = re.search(r"going down; dropped: (.*)", a.proc.stderr()).group(1)
    counts = dict(item.split("=") for item in summary.split())
    assert sum(int(v) for v in counts.values()) >= 16, summary
    for reason in ("malformed", "mac1", "unknown-datagram", "stun-unexpected"):
        assert reason in counts, summary
    assert "Traceback" not in a.proc.stderr()


# --- wg set / wg show on a wgdisco interface ------------------------------------------


def test_wg_set_endpoint_changes_the_endpoint_used(lab: Lab) -> None:
    ha, hb = lab.host("a"), lab.host("b")
    lab.link(ha, hb, "198.51.100.1/24", "198.51.100.2/24")
    tag = lab.prefix[3:9]
    a = Node(ha, "wgdisco", f"wa{tag}", *keypair(), ["10.9.0.1/24", "fd00:9::1/64"])
    b = Node(hb, "wireguard-go", f"wb{tag}", *keypair(), ["10.9.0.2/24", "fd00:9::2/64"])
    a.peers = [b.peer_spec("198.51.100.99:51820")]  # wrong: nobody there
    b.peers = [a.peer_spec()]
    b.start()
    a.start()
    assert a.host.ping(b.inner4, count=1, wait=1, check=False).returncode != 0
    assert a.dump()[b.public]["endpoint"] == "198.51.100.99:51820"
    a.host.run(["wg", "set", a.iface, "peer", b.public, "endpoint", "198.51.100.2:51820", "persistent-keepalive", "7"])
    view = a.dump()[b.public]
    assert view["endpoint"] == "198.51.100.2:51820" and view["keepalive"] == "7"
    a.host.ping(b.inner4, count=2, wait=6)
    assert a.dump()[b.public]["latest_handshake"] > 0
    # wg showconf reads it back as a config wg can load
    conf = a.host.run(["wg", "showconf", a.iface]).stdout
    assert f"PublicKey = {b.public}" in conf and "Endpoint = 198.51.100.2:51820" in conf
    assert a.private in conf  # showconf shows the key, as with wireguard-go; `wg show` hides it
    assert a.private not in a.host.run(["wg", "show", a.iface]).stdout


def test_up_refuses_existing_interface_and_taken_port(lab: Lab) -> None:
    ha, hb = lab.host("a"), lab.host("b")
    lab.link(ha, hb, "198.51.100.1/24", "198.51.100.2/24")
    tag = lab.prefix[3:9]
    a = Node(ha, "wgdisco", f"wa{tag}", *keypair(), ["10.9.0.1/24"])
    a.start()
    conf = lab.logdir / f"{a.iface}.conf"
    again = ha.run([sys.executable, "-m", "wgdisco", "up", str(conf)], check=False, timeout=30)
    assert again.returncode == 1 and f"interface {a.iface} already exists" in again.stderr
    other = lab.logdir / f"wc{tag}.conf"
    other.write_text(conf.read_text())
    other.chmod(0o600)
    taken = ha.run([sys.executable, "-m", "wgdisco", "up", str(other)], check=False, timeout=30)
    assert taken.returncode == 1 and "UDP port 51820 is already in use" in taken.stderr
    assert ha.run(["ip", "link", "show", f"wc{tag}"], check=False).returncode != 0  # nothing left behind


def test_wg_syncconf_adds_and_removes_peers_without_dropping_the_live_session(lab: Lab) -> None:
    a, b = pair(lab, "wgdisco", "wireguard-go", endpoint_on="a")
    a.host.ping(b.inner4, count=1, wait=3)
    before = a.dump()[b.public]["latest_handshake"]
    _, extra_pub = keypair()
    conf = lab.logdir / "sync.conf"
    conf.write_text(
        f"[Interface]\nPrivateKey = {a.private}\nListenPort = 51820\n\n"
        f"[Peer]\nPublicKey = {b.public}\nAllowedIPs = 10.9.0.2/32, fd00:9::2/128\nEndpoint = 198.51.100.2:51820\n\n"
        f"[Peer]\nPublicKey = {extra_pub}\nAllowedIPs = 10.9.0.77/32\n"
    )
    a.host.run(["wg", "syncconf", a.iface, str(conf)])
    view = a.dump()
    assert set(view) == {b.public, extra_pub}
    assert view[b.public]["latest_handshake"] == before  # no new handshake: the session lives on
    assert view[extra_pub]["allowed_ips"] == "10.9.0.77/32"
    a.host.ping(b.inner4, count=1, wait=2)
    conf.write_text(f"[Interface]\nPrivateKey = {a.private}\nListenPort = 51820\n\n"
                    f"[Peer]\nPublicKey = {extra_pub}\nAllowedIPs = 10.9.0.77/32\n")
    a.host.run(["wg", "syncconf", a.iface, str(conf)])
    assert set(a.dump()) == {extra_pub}
    assert a.host.ping(b.inner4, count=1, wait=1, check=False).returncode != 0  # b is gone


def test_up_without_cap_net_admin_refuses_clearly(lab: Lab) -> None:
    h = lab.host("a")
    conf = lab.logdir / "wz0.conf"
    conf.write_text(f"[Interface]\nPrivateKey = {keypair()[0]}\n")
    conf.chmod(0o600)
    proc = h.run(["setpriv", "--inh-caps=-all", "--bounding-set=-all", sys.executable, "-m", "wgdisco", "up",
                  str(conf)], check=False, timeout=30)
    assert proc.returncode == 1, proc.stderr
    assert "needs root (CAP_NET_ADMIN)" in proc.stderr, proc.stderr
    assert h.run(["ip", "link", "show", "wz0"], check=False).returncode != 0


def test_sighup_adds_and_removes_peers_without_a_new_handshake_for_the_others(lab: Lab) -> None:
    lan = lab.lan("lan")
    hosts = {n: lab.host(n) for n in "abcd"}
    for i, (name, host) in enumerate(hosts.items(), start=1):
        lab.attach(host, lan, f"198.51.100.{i}/24")
    tag = lab.prefix[3:9]
    a = Node(hosts["a"], "wgdisco", f"wa{tag}", *keypair(), ["10.9.0.1/24"])
    others = {n: Node(hosts[n], "wireguard-go", f"w{n}{tag}", *keypair(), [f"10.9.0.{i}/24"])
              for i, n in ((2, "b"), (3, "c"), (4, "d"))}
    for i, (n, node) in enumerate(others.items(), start=2):
        node.peers = [a.peer_spec("198.51.100.1:51820")]
        node.start()
    b, c, d = others["b"], others["c"], others["d"]
    a.peers = [b.peer_spec("198.51.100.2:51820"), c.peer_spec("198.51.100.3:51820")]
    a.start()
    a.host.ping(b.inner4, count=1, wait=3)
    a.host.ping(c.inner4, count=1, wait=3)
    handshakes_before = handshakes_logged(a)
    # the new config: c removed, d added, b unchanged
    conf = lab.logdir / f"{a.iface}.conf"
    a.peers = [b.peer_spec("198.51.100.2:51820"), d.peer_spec("198.51.100.4:51820")]
    conf.write_text(a.config_text())
    a.host.run(["kill", "-HUP", str(a.proc.pid)])  # type: ignore[union-attr]
    a.proc.wait_for(r"reload: 2 peer\(s\)", timeout=5, stream="stderr")  # type: ignore[union-attr]
    assert set(a.dump()) == {b.public, d.public}
    a.host.ping(b.inner4, count=2, wait=2)
    a.host.ping(d.inner4, count=1, wait=3)
    # b's session lived on: the only new handshake is d's
    assert handshakes_logged(a) == handshakes_before + 1, a.proc.stderr()  # type: ignore[union-attr]
    assert a.host.ping(c.inner4, count=1, wait=1, check=False).returncode != 0


def test_default_route_through_the_tunnel_like_wg_quick(lab: Lab) -> None:
    """AllowedIPs = 0.0.0.0/0, ::/0 with Table = auto: everything goes through the tunnel but
    the tunnel's own datagrams (fwmark + two rules per family, as wg-quick); the LAN stays
    direct; a strict reverse-path filter still lets the replies in (nftables mark restore);
    rules and tables go away at shutdown."""
    r = lab.router("r")
    lan, wan = lab.lan("lan"), lab.lan("wan")
    lab.attach(r, lan, "10.1.0.1/24", "fd00:1::1/64")
    lab.attach(r, wan, "198.51.100.1/24", "2001:db8:1::1/64")
    hc, hs = lab.host("c"), lab.host("s")
    lab.attach(hc, lan, "10.1.0.2/24", "fd00:1::2/64")
    lab.attach(hs, wan, "198.51.100.2/24", "2001:db8:1::2/64")
    for host, v4, v6 in ((hc, "10.1.0.1", "fd00:1::1"), (hs, "198.51.100.1", "2001:db8:1::1")):
        host.add_route("default", via=v4)
        host.add_route("default", via=v6)
    # "the internet" behind the exit node: addresses only s has, which r cannot route to
    hs.ip("addr", "add", "203.0.113.80/32", "dev", "lo")
    hs.ip("addr", "add", "2001:db8:ff::80/128", "dev", "lo")
    tag = lab.prefix[3:9]
    c = Node(hc, "wgdisco", f"wc{tag}", *keypair(), ["10.9.0.2/24", "fd00:9::2/64"])
    s = Node(hs, "wgdisco", f"ws{tag}", *keypair(), ["10.9.0.1/24", "fd00:9::1/64"])
    c.peers = [PeerSpec(s.public, ["0.0.0.0/0", "::/0"], "198.51.100.2:51820")]
    s.peers = [c.peer_spec()]
    assert hc.ping("203.0.113.80", wait=1, check=False).returncode != 0  # not without the tunnel
    hc.sysctl("net.ipv4.conf.all.rp_filter=1")  # strict: replies need their mark back (io/nft.py)
    rules_before = hc.ip("-4", "rule").stdout + hc.ip("-6", "rule").stdout
    s.start()
    c.start()
    hc.ping("203.0.113.80", count=2, wait=2)
    hc.ping("2001:db8:ff::80", count=2, wait=2)
    for family in ("-4", "-6"):
        rules = hc.ip(family, "rule").stdout
        assert "32764:\tfrom all lookup main suppress_prefixlength 0" in rules, rules
        assert "32765:\tnot from all fwmark 0xca6c lookup 51820" in rules, rules
    assert f"dev {c.iface}" in hc.ip("route", "get", "203.0.113.80").stdout
    assert "via 10.1.0.1" in hc.ip("route", "get", "198.51.100.2", "mark", "0xca6c").stdout  # the tunnel's own
    assert f"dev {c.iface}" not in hc.ip("route", "get", "10.1.0.1").stdout  # the LAN stays direct
    hc.ping("10.1.0.1")
    assert hc.run(["sysctl", "-n", "net.ipv4.conf.all.src_valid_mark"]).stdout.strip() == "1"
    assert "fwmark: 0xca6c" in hc.run(["wg", "show", c.iface]).stdout
    tables = hc.run(["nft", "list", "tables"]).stdout
    assert f"table ip wgdisco-{c.iface}" in tables and f"table ip6 wgdisco-{c.iface}" in tables
    assert c.stop() == 0
    assert hc.ip("-4", "rule").stdout + hc.ip("-6", "rule").stdout == rules_before
    assert "wgdisco-" not in hc.run(["nft", "list", "tables"]).stdout
    assert "default routes 0.0.0.0/0, ::/0 through" in c.proc.stderr()  # type: ignore[union-attr]


# --- a UDP checksum that completes to zero -------------------------------------------------

ZERO_SUM_SENDER = r"""
import socket, sys
src, dst, payload = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3])
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind((src, 40009))
for _ in range(3):
    s.sendto(payload, (dst, 9))
"""


def zero_sum_payload(src: str, dst: str) -> bytes:
    """A payload from [src]:40009 to [dst]:9 whose UDP checksum completes to zero: its last two
    bytes are the Internet checksum (RFC 1071) of everything before them, pseudo-header included."""
    body = b"wgdisco-zero"  # 12 bytes: the last word is aligned
    length = 8 + len(body) + 2
    pseudo = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst) \
        + length.to_bytes(4, "big") + b"\0\0\0\x11"
    head = struct.pack("!HHHH", 40009, 9, length, 0)
    return body + icmp.checksum(pseudo + head + body).to_bytes(2, "big")


ZERO_SUM_LISTENER = r"""
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("::", 9))
s.settimeout(5)
print("listening", flush=True)
try:
    while True:
        data, _ = s.recvfrom(100)
        print("got", len(data), flush=True)
except socket.timeout:
    print("done", flush=True)
"""


def udp6_csum_errors(node: Node) -> int:
    for line in node.host.run(["cat", "/proc/net/snmp6"]).stdout.splitlines():
        if line.startswith("Udp6InCsumErrors"):
            return int(line.split()[1])
    return 0


@pytest.mark.parametrize("sender", ["wgdisco", "wireguard-go"])
def test_a_udp_checksum_that_completes_to_zero_gets_through_over_ipv6(lab: Lab, sender: str) -> None:
    """RFC 768: a UDP checksum that computes to zero goes on the wire as 0xFFFF; over IPv6 a zero is
    invalid (RFC 8200 §8.1) and the receiving kernel drops the packet. With TUN offloads on, the
    sending kernel leaves the checksum to whoever reads the TUN: the compiled data path completes it
    (it wrote 0x0000, and one IPv6/UDP flow in 65,536 with fixed bytes never got through). Three
    such datagrams each way between wgdisco and wireguard-go all arrive, none counted as a checksum
    error."""
    env = {"WGDISCO_DATAPATH": "c"} if netns_required() else {}
    a, b = pair(lab, "wgdisco", "wireguard-go", env=env)
    a.host.ping(b.inner6, count=1, wait=3)
    src, dst = (a, b) if sender == "wgdisco" else (b, a)
    errors = udp6_csum_errors(dst)
    listener = dst.host.popen([sys.executable, "-c", ZERO_SUM_LISTENER], name="zero-sum-listener")
    listener.wait_for("listening", timeout=5)
    src.host.run([sys.executable, "-c", ZERO_SUM_SENDER, src.inner6, dst.inner6, zero_sum_payload(src.inner6, dst.inner6).hex()])
    listener.wait_for("done", timeout=10)
    assert listener.stdout().count("got 14") == 3, listener.stdout()
    assert udp6_csum_errors(dst) == errors
