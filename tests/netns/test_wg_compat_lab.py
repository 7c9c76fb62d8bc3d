"""wgdisco behaves like wireguard-go where `wg` and wg-quick can see it: each check runs against
wgdisco and against Debian's wireguard-go in the same run (the two columns of one table), the
peer being wireguard-go in both cases. Run with ``-s`` to see the columns.
"""

from __future__ import annotations

import base64
import re
import socket
import time

import pytest

from wgdisco.lab import Lab, require_tool
from wgdisco.lab.wg import SOCKET_DIR, Node, keypair, pair

pytestmark = pytest.mark.netns

IMPLEMENTATIONS = ["wgdisco", "wireguard-go"]
COLUMNS: dict[str, dict[str, object]] = {}
MARK_RULES = """table inet markcheck {
    chain out {
        type filter hook output priority 0;
        meta mark 0x1234 udp dport 51820 counter
    }
}
"""  # check -> {implementation: what it showed}


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tool("wireguard-go")
    require_tool("wg")
    require_tool("nft")


def note(check: str, kind: str, value: object) -> None:
    COLUMNS.setdefault(check, {})[kind] = value
    print(f"{check:<40} {kind:<13} {value}")


def wg(node: Node, *args: str, check: bool = True) -> str:
    return node.host.run(["wg", *args], check=check).stdout.strip()


@pytest.mark.parametrize("kind", IMPLEMENTATIONS)
def test_fwmark_is_applied_to_the_socket_and_shown(lab: Lab, kind: str) -> None:
    a, b = pair(lab, kind, "wireguard-go")
    assert wg(a, "show", a.iface, "fwmark") == "off"
    wg(a, "set", a.iface, "fwmark", "0x1234")
    assert wg(a, "show", a.iface, "fwmark") == "0x1234"
    # the mark is on the tunnel's own datagrams: counted by an nftables rule in a's output hook
    a.host.run(["nft", "-f", "-"], input=MARK_RULES)
    a.host.ping(b.inner4, count=2, wait=3)
    counted = a.host.run(["nft", "list", "table", "inet", "markcheck"]).stdout
    packets = int(re.search(r"counter packets (\d+)", counted).group(1))  # type: ignore[union-attr]
    note("fwmark 0x1234: marked datagrams", kind, packets)
    assert packets >= 2
    wg(a, "set", a.iface, "fwmark", "0")
    assert wg(a, "show", a.iface, "fwmark") == "off"


@pytest.mark.parametrize("kind", IMPLEMENTATIONS)
def test_transfer_counts_every_datagram(lab: Lab, kind: str) -> None:
    a, b = pair(lab, kind, "wireguard-go")
    a.host.ping(b.inner4, count=1, wait=3)  # a initiates: initiation, response, data
    b.host.ping(a.inner4, count=1, wait=3)
    rx, tx = (int(x) for x in wg(a, "show", a.iface, "transfer").split("\t")[1:])
    note("transfer after one ping each way (rx, tx)", kind, (rx, tx))
    # 92-byte response + 2 x 128-byte data in; 148-byte initiation + 2 x 128 out (whitepaper §5.4),
    # plus whatever keepalives went out meanwhile (32 bytes each)
    assert rx >= 92 + 2 * 128 and (rx - 92 - 2 * 128) % 32 == 0, rx
    assert tx >= 148 + 2 * 128 and (tx - 148 - 2 * 128) % 32 == 0, tx


@pytest.mark.parametrize("kind", IMPLEMENTATIONS)
def test_setconf_with_130561_allowed_ips(lab: Lab, kind: str) -> None:
    a, b = pair(lab, kind, "wireguard-go")
    lines = [f"{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}.0/24" for i in range(1, 130_561 + 1)]
    conf = lab.logdir / f"big-{kind}.conf"
    conf.write_text(wg(a, "showconf", a.iface) + "\n" + "".join(f"AllowedIPs = {n}\n" for n in lines))
    start = time.monotonic()
    a.host.run(["wg", "setconf", a.iface, str(conf)], timeout=120)
    took = time.monotonic() - start
    shown = wg(a, "show", a.iface, "allowed-ips").split("\t", 1)[1].split()
    note("setconf 130,561 allowed-ips lines: s", kind, round(took, 2))
    assert len(shown) == 130_561 + 2  # and the two the pair started with
    a.host.ping(b.inner4, count=1, wait=3)  # still a working tunnel


@pytest.mark.parametrize("kind", IMPLEMENTATIONS)
def test_listen_port_zero_picks_a_port_and_says_which(lab: Lab, kind: str) -> None:
    a, b = pair(lab, kind, "wireguard-go")
    wg(a, "set", a.iface, "listen-port", "0")
    port = int(wg(a, "show", a.iface, "listen-port"))
    note("listen-port 0 -> shown port", kind, port)
    assert port > 0
    if kind == "wgdisco":
        assert a.proc is not None
        deadline = time.monotonic() + 5
        while f"listening on UDP port {port}" not in a.proc.stderr():
            assert time.monotonic() < deadline, a.proc.stderr()
            time.sleep(0.05)
        assert "listening on UDP port 0" not in a.proc.stderr()


@pytest.mark.parametrize("kind", IMPLEMENTATIONS)
def test_private_key_dev_null_removes_the_key(lab: Lab, kind: str) -> None:
    a, b = pair(lab, kind, "wireguard-go")
    a.host.ping(b.inner4, count=1, wait=3)
    wg(a, "set", a.iface, "private-key", "/dev/null")
    shown = wg(a, "show", a.iface, "private-key")
    answered = a.host.run(["ping", "-c", "2", "-W", "2", b.inner4], check=False).returncode == 0
    note("private-key /dev/null: shown, ping", kind, (shown, "answered" if answered else "no answer"))
    assert shown == "(none)" and not answered
    keyfile = lab.logdir / f"{a.iface}-again.key"
    keyfile.write_text(a.private + "\n")
    keyfile.chmod(0o600)
    wg(a, "set", a.iface, "private-key", str(keyfile))
    assert wg(a, "show", a.iface, "private-key") == a.private
    a.host.ping(b.inner4, count=2, wait=6)  # a new handshake with the key back


# The low-order points of wireguard-linux's netns.sh (RFC 7748 §6.1; u = 0, 1, two of order 8,
# p-1, p, p+1): its "send nothing" section adds them all with keepalive 1 and an endpoint.
LOW_ORDER_POINTS = [
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    "4Ot6fDtBuK4WVuP68Z/EatoJjeucMrH9hmIFFl9JuAA=", "X5yVvKNQjCSx0LFVnIPvWwREXMRYHI6G2CJO3dCfEVc=",
    "7P///////////////////////////////////////38=", "7f///////////////////////////////////////38=",
    "7v///////////////////////////////////////38=",
]
LOOPBACK_COUNTERS = """table inet lowcheck {
    chain out {
        type filter hook output priority 0;
        ip daddr 127.0.0.1 udp dport 1111 counter
        ip daddr 127.0.0.1 udp dport 1112 counter
    }
}
"""


def loopback_counts(node: Node) -> list[int]:
    """Datagrams ``node`` sent to 127.0.0.1:1111 (the low-order peers) and :1112 (the control)."""
    listed = node.host.run(["nft", "list", "table", "inet", "lowcheck"]).stdout
    return [int(n) for n in re.findall(r"counter packets (\d+)", listed)]


@pytest.mark.parametrize("kind", IMPLEMENTATIONS)
def test_low_order_peers_are_accepted_and_sent_nothing(lab: Lab, kind: str) -> None:
    a, b = pair(lab, kind, "wireguard-go")
    a.host.ip("link", "set", "lo", "up")
    a.host.run(["nft", "-f", "-"], input=LOOPBACK_COUNTERS)
    for point in LOW_ORDER_POINTS:  # each accepted: no "Protocol error"
        wg(a, "set", a.iface, "peer", point, "persistent-keepalive", "1", "endpoint", "127.0.0.1:1111")
    shown = wg(a, "show", a.iface, "peers").split()
    dump = a.dump()
    assert set(LOW_ORDER_POINTS) <= set(shown)
    assert all(dump[p]["endpoint"] == "127.0.0.1:1111" and dump[p]["keepalive"] == "1" for p in LOW_ORDER_POINTS)
    # the control: an ordinary key set the same way gets handshake initiations (one per
    # REKEY_TIMEOUT, whitepaper §6.1), so two of them prove the timers ran for five seconds
    control = keypair()[1]
    wg(a, "set", a.iface, "peer", control, "persistent-keepalive", "1", "endpoint", "127.0.0.1:1112")
    deadline = time.monotonic() + 20
    while loopback_counts(a)[1] < 2:
        assert time.monotonic() < deadline, loopback_counts(a)
        time.sleep(0.2)
    low, ctl = loopback_counts(a)
    note("low-order peers: datagrams to them (control)", kind, (low, ctl))
    assert low == 0
    a.host.ping(b.inner4, count=1, wait=3)  # the interface still works
    if kind == "wgdisco":
        assert a.proc is not None and "Traceback" not in a.proc.stderr(), a.proc.stderr()
    for point in LOW_ORDER_POINTS:
        wg(a, "set", a.iface, "peer", point, "remove")
    assert not set(LOW_ORDER_POINTS) & set(wg(a, "show", a.iface, "peers").split())


def uapi(node: Node, text: str) -> str:
    """One UAPI exchange on ``node``'s socket (a ``/var/run/wireguard`` shared by every namespace)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(SOCKET_DIR / f"{node.iface}.sock"))
        s.sendall(text.encode())
        reply = b""
        while not reply.endswith(b"\n\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    return reply.decode()


def hex_key(b64: str) -> str:
    return base64.b64decode(b64).hex()


@pytest.mark.parametrize("kind", IMPLEMENTATIONS)
def test_allowed_ip_minus_removes_one_prefix_of_that_peer(lab: Lab, kind: str) -> None:
    """``allowed_ip=-<prefix>`` (wireguard-tools and wireguard-go from 2025, for ``wg set …
    allowed-ips -10.0.0.1/32``) removes that prefix if, and only if, the peer holds it. Debian
    12's wg (v1.0.20210914) cannot send it, so the UAPI text is written to the socket as wg
    would write it; Debian 12's wireguard-go (0.0.20220316) predates it (its column shows what
    it answers)."""
    a, b = pair(lab, kind, "wireguard-go")
    tried = a.host.run(["wg", "set", a.iface, "peer", b.public, "allowed-ips", "-10.9.0.77/32"], check=False)
    note("wg set allowed-ips -10.9.0.77/32 (this wg)", kind, tried.stderr.strip() or "sent")
    other = keypair()[1]
    wg(a, "set", a.iface, "peer", b.public, "allowed-ips", f"{b.inner4}/32,{b.inner6}/128,10.9.0.77/32")
    wg(a, "set", a.iface, "peer", other, "allowed-ips", "10.9.0.88/32")
    reply = uapi(a, f"set=1\npublic_key={hex_key(b.public)}\nallowed_ip=-10.9.0.77/32\n"
                    f"allowed_ip=-10.9.0.88/32\nallowed_ip=-fd00:9::2/128\n\n")
    after = {p: d["allowed_ips"] for p, d in a.dump().items()}
    note("allowed_ip=-: errno, b's allowed-ips", kind, (reply.strip(), after[b.public]))
    if kind != "wgdisco":
        return  # a column to compare with, nothing asserted of an older wireguard-go
    assert reply == "errno=0\n\n"
    assert after[b.public] == f"{b.inner4}/32"  # 10.9.0.77/32 and the IPv6 prefix removed
    assert after[other] == "10.9.0.88/32"  # not b's: left alone
    a.host.ping(b.inner4, count=1, wait=3)  # the prefix kept still routes to b
    assert uapi(a, f"set=1\npublic_key={hex_key(b.public)}\nallowed_ip=-10.9.0.0/33\n\n") == "errno=-22\n\n"  # EINVAL, as wireguard-go
    uapi(a, f"set=1\npublic_key={hex_key(b.public)}\nallowed_ip=-{b.inner4}/32\n\n")
    assert a.dump()[b.public]["allowed_ips"] == "(none)"
    assert a.host.run(["ping", "-c", "1", "-W", "1", b.inner4], check=False).returncode != 0


def ping_once(node: Node, target: str) -> tuple[float, str]:
    """``ping -c1 -W2``: (seconds it took, its output)."""
    start = time.monotonic()
    done = node.host.run(["ping", "-n", "-c", "1", "-W", "2", target], check=False)
    return time.monotonic() - start, done.stdout + done.stderr


@pytest.mark.parametrize("kind", ["wgdisco/c", "wgdisco/python", "wireguard-go"])
def test_a_packet_no_peer_takes_gets_icmp_unreachable(lab: Lab, kind: str) -> None:
    """The kernel module answers a packet that matches no peer's AllowedIPs, or whose peer has
    no endpoint, with ICMP host unreachable (IPv6: address unreachable; wireguard-linux device.c
    wg_xmit), so ``ping`` fails at once instead of after its timeout. wireguard-go sends nothing.
    wgdisco on both data paths (the compiled one hands such packets back to Python)."""
    implementation, _, datapath = kind.partition("/")
    a, b = pair(lab, implementation, "wireguard-go", env={"WGDISCO_DATAPATH": datapath} if datapath else None)
    for net in ("10.77.0.0/24", "fd00:77::/64", "10.77.1.0/24"):  # routed into the tunnel
        a.host.ip("-6" if ":" in net else "-4", "route", "add", net, "dev", a.iface)
    wg(a, "set", a.iface, "peer", keypair()[1], "allowed-ips", "10.77.1.0/24")  # no endpoint
    shown = {}
    for target, says in (("10.77.0.5", "Destination Host Unreachable"),
                         ("fd00:77::5", "Address unreachable"),
                         ("10.77.1.5", "Destination Host Unreachable")):
        took, out = ping_once(a, target)
        shown[target] = (round(took, 2), says in out)
        if implementation == "wgdisco":
            assert says in out and f"From {target}" in out, out
            assert took < 1.0, out  # at once, not after -W 2
    note("ping with no peer / no endpoint: s, ICMP", kind, shown)
    a.host.ping(b.inner4, count=1, wait=3)  # a routed packet still goes through
