"""wgdisco.io.tun and wgdisco.io.netlink on a real TUN device, inside a throwaway network namespace.

Theory of operation: the pytest process never changes namespace.  Each test gets
a fresh namespace ``<lab prefix>tun`` (the ``lab`` fixture's unique prefix) and a one-thread executor whose thread has
entered it with setns(2) (a per-thread operation); test bodies run there, so the
TUN device, the netlink socket and any child process (ping) live in the
namespace.  Teardown stops the thread and deletes the namespace, even on failure.

What needs no namespace: tests/unit/test_io_tun.py.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import select
import socket
import struct
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from wgdisco.errors import LocalError
from wgdisco.io import netlink
from wgdisco.io.tun import Tun
from wgdisco.lab import Lab, skip_or_fail
from wgdisco.lab.netns import enter_netns as _enter_netns

TUN_ADDRS = [ipaddress.ip_interface("10.77.0.1/24"), ipaddress.ip_interface("fd00:77::1/64")]
PEER4 = "10.77.0.2"
PEER6 = "fd00:77::2"


class Netns:
    """A namespace plus a thread living in it; ``run(fn, ...)`` calls ``fn`` on that thread."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=name, initializer=_enter_netns, initargs=(name,))

    def run(self, fn, *args, **kwargs):
        return self._thread.submit(fn, *args, **kwargs).result(timeout=120)

    def exec(self, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.name, *cmd], capture_output=True, text=True, timeout=timeout)

    def close(self) -> None:
        self._thread.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def ns(lab: Lab):
    # the lab fixture (tests/conftest.py) skips, or fails under WGDISCO_REQUIRE_NETNS=1, without root
    # and namespaces, and gives the run's unique name prefix (wgdisco/lab/netns.py)
    name = f"{lab.prefix}tun"
    subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, check=True)
    space = Netns(name)
    try:
        yield space
    finally:
        space.close()
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture
def ifname() -> str:
    return f"wgt{secrets.token_hex(3)}"


# --- packet helpers ----------------------------------------------------------------------------


def inet_checksum(data: bytes) -> int:
    """RFC 1071 one's-complement sum."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4_packet(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0x4000, 64, proto, 0,
        socket.inet_aton(src), socket.inet_aton(dst),
    )
    checksum = inet_checksum(header)
    return header[:10] + struct.pack("!H", checksum) + header[12:] + payload


def ipv6_packet(src: str, dst: str, next_header: int, payload: bytes) -> bytes:
    return struct.pack(
        "!IHBB16s16s", 6 << 28, len(payload), next_header, 64,
        socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst),
    ) + payload


def icmp_echo_reply(request_icmp: bytes) -> bytes:
    """ICMPv4 echo reply (type 0) echoing id, sequence and data of a request (RFC 792)."""
    body = b"\x00\x00\x00\x00" + request_icmp[4:]
    return body[:2] + struct.pack("!H", inet_checksum(body)) + body[4:]


def icmp6_echo_reply(request_icmp: bytes, src: str, dst: str) -> bytes:
    """ICMPv6 echo reply (type 129); checksum over the RFC 8200 §8.1 pseudo-header."""
    body = b"\x81\x00\x00\x00" + request_icmp[4:]
    pseudo = (
        socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
        + struct.pack("!I3xB", len(body), 58)
    )
    return body[:2] + struct.pack("!H", inet_checksum(pseudo + body)) + body[4:]


def read_until(tun: Tun, wanted, timeout: float = 10.0) -> bytes:
    """Read packets until ``wanted(packet)``; other traffic (MLD, router solicitations) is skipped."""
    deadline = time.monotonic() + timeout
    seen = []
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([tun], [], [], left)
        if not ready:
            break
        packet = tun.read(65535)
        if packet is None:
            continue
        if wanted(packet):
            return packet
        seen.append(packet[:48].hex())
    raise AssertionError(f"wanted packet not read from the TUN; saw {seen}")


def is_echo4_to(dst: str):
    return lambda p: p[0] >> 4 == 4 and p[9] == 1 and p[16:20] == socket.inet_aton(dst) and p[(p[0] & 15) * 4] == 8


def is_echo6_to(dst: str):
    raw = socket.inet_pton(socket.AF_INET6, dst)
    return lambda p: p[0] >> 4 == 6 and p[6] == 58 and p[24:40] == raw and p[40] == 128


# --- tests -------------------------------------------------------------------------------------


@pytest.mark.netns
def test_runs_in_its_own_namespace(ns, ifname):
    def body():
        with Tun(ifname) as tun:
            assert tun.name == ifname
            assert netlink.link_exists(ifname)
            return os.readlink("/proc/thread-self/ns/net")

    inside = ns.run(body)
    assert inside != os.readlink("/proc/thread-self/ns/net")
    assert not netlink.link_exists(ifname)  # nothing appeared in the test's own namespace


@pytest.mark.netns
def test_ping_both_directions_ipv4_and_ipv6(ns, ifname):
    def body():
        with Tun(ifname) as tun:
            netlink.configure_link(ifname, addresses=TUN_ADDRS, mtu=1420)
            results = {}
            for peer, family_flag, wanted in ((PEER4, "-4", is_echo4_to(PEER4)), (PEER6, "-6", is_echo6_to(PEER6))):
                ping = subprocess.Popen(
                    ["ping", family_flag, "-n", "-c1", "-W5", peer],
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                )
                try:
                    request = read_until(tun, wanted)
                    if peer == PEER4:
                        ihl = (request[0] & 15) * 4
                        assert request[0] >> 4 == 4 and request[9] == 1  # IPv4, ICMP
                        assert request[12:16] == socket.inet_aton("10.77.0.1")
                        assert inet_checksum(request[:ihl]) == 0  # header checksum verifies
                        reply = ipv4_packet(PEER4, "10.77.0.1", 1, icmp_echo_reply(request[ihl:]))
                    else:
                        assert request[8:24] == socket.inet_pton(socket.AF_INET6, "fd00:77::1")
                        reply = ipv6_packet(PEER6, "fd00:77::1", 58, icmp6_echo_reply(request[40:], PEER6, "fd00:77::1"))
                    assert tun.write(reply) == len(reply)
                    out, _ = ping.communicate(timeout=15)
                finally:
                    if ping.poll() is None:
                        ping.kill()
                        ping.wait()
                results[peer] = (ping.returncode, out)
            return results

    for peer, (code, out) in ns.run(body).items():
        assert code == 0, f"ping {peer} got no reply through the TUN:\n{out}"
        assert "1 received" in out


@pytest.mark.netns
def test_readinto_and_nothing_waiting(ns, ifname):
    def body():
        with Tun(ifname) as tun:
            assert tun.read() is None
            assert tun.readinto(bytearray(2048)) is None
            netlink.configure_link(ifname, addresses=TUN_ADDRS[:1], mtu=1420)
            sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sender.sendto(b"hello tun", ("10.77.0.9", 9999))  # routed into the TUN, no further
            sender.close()
            buf = bytearray(2048)
            for _ in range(20):  # skip IPv6 chatter (router solicitations, MLD) on the fresh link
                select.select([tun], [], [], 5)
                n = tun.readinto(memoryview(buf))
                if n and buf[0] >> 4 == 4:
                    return n, bytes(buf[:n])
            raise AssertionError("the UDP datagram never came out of the TUN")

    n, packet = ns.run(body)
    assert n == 20 + 8 + len(b"hello tun")
    assert packet[0] >> 4 == 4 and packet[9] == 17 and packet[16:20] == socket.inet_aton("10.77.0.9")
    assert packet.endswith(b"hello tun")


@pytest.mark.netns
def test_write_while_down_is_a_counted_drop(ns, ifname):
    def body():
        with Tun(ifname) as tun:
            packet = ipv4_packet(PEER4, "10.77.0.1", 17, b"\0" * 8)
            written = tun.write(packet)  # the link is still down: EIO
            with pytest.raises(OSError):
                tun.write(b"\x00" * 20)  # not an IP packet: EINVAL is raised, not dropped
            return written, tun.drops

    assert ns.run(body) == (0, 1)


@pytest.mark.netns
def test_same_name_twice_fails_clearly(ns, ifname):
    def body():
        with Tun(ifname):
            with pytest.raises(LocalError) as info:
                Tun(ifname)
            return str(info.value)

    assert ns.run(body) == f"interface {ifname} already exists"


@pytest.mark.netns
def test_name_pattern_and_bad_names(ns):
    def body():
        with Tun("wgdt%d") as tun:
            name = tun.name
        with pytest.raises(LocalError, match="invalid interface name"):
            Tun("x" * 16)
        return name

    assert ns.run(body) == "wgdt0"


@pytest.mark.netns
def test_without_cap_net_admin_the_error_says_so(ns, ifname):
    code = (
        "from wgdisco.io.tun import Tun\n"
        "from wgdisco.errors import LocalError\n"
        f"try:\n    Tun({ifname!r})\nexcept LocalError as e:\n    print(e)\n"
    )
    # Still uid 0, but CAP_NET_ADMIN removed from the bounding set (so from the new process).
    result = ns.exec("setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin", sys.executable, "-c", code)
    if result.returncode != 0 and "setpriv" in result.stderr:
        skip_or_fail(f"setpriv cannot drop capabilities here: {result.stderr.strip()}")
    assert result.stdout.strip() == "opening a TUN device needs root (CAP_NET_ADMIN)", result.stderr


@pytest.mark.netns
def test_close_deletes_the_interface(ns, ifname):
    def body():
        tun = Tun(ifname)
        assert netlink.link_exists(ifname)
        tun.close()
        tun.close()  # idempotent
        with pytest.raises(LocalError, match="closed"):
            tun.fileno()
        return netlink.link_exists(ifname)

    assert ns.run(body) is False


def routes(ns: Netns, *args: str) -> list[str]:
    out = []
    for family in ("-4", "-6"):
        result = ns.exec("ip", family, "route", "show", *args)
        if "FIB table does not exist" in result.stderr:
            continue  # IPv6 reports an empty table that way
        assert result.returncode == 0, result.stderr
        out += [line.strip() for line in result.stdout.splitlines()]
    return out


@pytest.mark.netns
def test_routes_added_skipped_removed_and_gone_with_the_link(ns, ifname):
    nets = [ipaddress.ip_network(n) for n in (
        "10.77.0.0/24", "10.77.0.5/32", "10.88.0.0/16", "fd00:77::/64", "fd00:88::/48", "0.0.0.0/0", "::/0",
    )]

    def add():
        tun = Tun(ifname)
        netlink.configure_link(ifname, addresses=TUN_ADDRS, mtu=1420)
        netlink.configure_link(ifname, addresses=TUN_ADDRS, mtu=1420)  # idempotent
        first = netlink.add_routes(ifname, nets)
        again = netlink.add_routes(ifname, nets)  # EEXIST ignored
        table = netlink.add_routes(ifname, nets[2:3], table=51820)
        return tun, first, again, table

    tun, first, again, table = ns.run(add)
    try:
        covered = {"10.77.0.0/24", "10.77.0.5/32", "fd00:77::/64"}  # inside the address routes
        assert [str(n) for n in first] == [str(n) for n in nets if str(n) not in covered]
        assert again == first
        assert [str(n) for n in table] == ["10.88.0.0/16"]
        main = routes(ns, "dev", ifname)
        for expected in ("default scope link", "10.88.0.0/16 scope link", "fd00:88::/48 metric 1024 pref medium",
                         "default metric 1024 pref medium"):
            assert expected in main, main
        assert routes(ns, "table", "51820") == [f"10.88.0.0/16 dev {ifname} scope link"]
        link = ns.exec("ip", "-o", "link", "show", ifname).stdout
        assert "mtu 1420" in link and ",UP," in link

        ns.run(netlink.remove_routes, ifname, nets)
        ns.run(netlink.remove_routes, ifname, nets)  # already gone: fine
        after = routes(ns, "dev", ifname)
        # Only the kernel's own routes remain: address prefixes (and IPv6 link-local/multicast).
        assert all("proto kernel" in r for r in after), after
        assert any(r.startswith("10.77.0.0/24 proto kernel") for r in after)
        assert any(r.startswith("fd00:77::/64 proto kernel") for r in after)

        ns.run(netlink.add_routes, ifname, nets)
        ns.run(netlink.delete_link, ifname)
        assert ns.run(netlink.link_exists, ifname) is False
        assert not [r for r in routes(ns) if ifname in r]
        assert routes(ns, "table", "51820") == []
        ns.run(netlink.delete_link, ifname)  # already gone: fine
        ns.run(netlink.remove_routes, ifname, nets)  # link gone: nothing to do
        with pytest.raises(LocalError, match=f"interface {ifname} does not exist"):
            ns.run(netlink.add_routes, ifname, nets)
    finally:
        tun.close()


@pytest.mark.netns
def test_interface_addresses(ns, ifname):
    def body():
        with Tun(ifname):
            netlink.configure_link(ifname, addresses=TUN_ADDRS, mtu=1420)
            # an IPv6 address may be tentative for a moment on a busy machine (and is skipped)
            deadline = time.monotonic() + 5
            while len(netlink.interface_addresses()) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            return netlink.interface_addresses(), netlink.interface_addresses({ifname})

    everything, excluded = ns.run(body)
    # Loopback (down here anyway) and the link-local fe80:: address are never listed.
    assert sorted(map(str, (a for _, a in everything))) == ["10.77.0.1/24", "fd00:77::1/64"]
    assert {name for name, _ in everything} == {ifname}
    assert excluded == []
