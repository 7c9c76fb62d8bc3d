"""wgdisco.io.udp: the dual-stack socket and its address tuples (loopback only, no root)."""

from __future__ import annotations

import select
import socket

import pytest

from wgdisco.errors import LocalError
from wgdisco.io import udp
from wgdisco.lab import skip_or_fail


def ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture
def _ipv6_loopback() -> None:
    if not ipv6_available():  # a skip; a failure under WGDISCO_REQUIRE_NETNS=1 (the CI machine has it)
        skip_or_fail("no IPv6 loopback on this machine")


needs_ipv6 = pytest.mark.usefixtures("_ipv6_loopback")


@pytest.fixture
def sock():
    s = udp.open_udp(0)
    yield s
    s.close()


def recv(sock: socket.socket, timeout: float = 2.0) -> tuple[bytes, tuple]:
    ready, _, _ = select.select([sock], [], [], timeout)
    assert ready, "no datagram arrived"
    return sock.recvfrom(2048)


@needs_ipv6
def test_socket_is_dual_stack_nonblocking(sock):
    assert sock.family == socket.AF_INET6
    assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
    assert sock.getblocking() is False
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 0
    assert sock.getsockname()[0] == "::"
    assert udp.local_port(sock) > 0
    with pytest.raises(BlockingIOError):
        sock.recvfrom(2048)


def test_buffers_raised(sock):
    # The kernel doubles the value it stores; without root it is capped by rmem_max.
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 200_000


@needs_ipv6
def test_receives_ipv4_as_mapped_and_ipv6(sock):
    port = udp.local_port(sock)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as v4:
        v4.sendto(b"four", ("127.0.0.1", port))
        data, addr = recv(sock)
        assert data == b"four"
        assert addr == ("::ffff:127.0.0.1", v4.getsockname()[1], 0, 0)
        assert addr == udp.to_sockaddr(sock, "127.0.0.1", v4.getsockname()[1])
        assert udp.from_sockaddr(addr) == ("127.0.0.1", v4.getsockname()[1])
        # A reply to the mapped tuple reaches the IPv4 socket.
        sock.sendto(b"back", addr)
        assert v4.recvfrom(100) == (b"back", ("127.0.0.1", port))
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as v6:
        v6.sendto(b"six", ("::1", port))
        data, addr = recv(sock)
        assert data == b"six"
        assert addr == ("::1", v6.getsockname()[1], 0, 0)
        assert addr == udp.to_sockaddr(sock, "::1", v6.getsockname()[1])
        assert udp.from_sockaddr(addr) == ("::1", v6.getsockname()[1])


@needs_ipv6
def test_to_sockaddr_exact_values(sock):
    assert udp.to_sockaddr(sock, "198.51.100.7", 51820) == ("::ffff:198.51.100.7", 51820, 0, 0)
    assert udp.to_sockaddr(sock, "2001:DB8:0:0::1", 1) == ("2001:db8::1", 1, 0, 0)
    assert udp.to_sockaddr(sock, "[2001:db8::1]", 1) == ("2001:db8::1", 1, 0, 0)
    assert udp.to_sockaddr(sock, "::ffff:203.0.113.9", 2) == ("::ffff:203.0.113.9", 2, 0, 0)
    assert udp.to_sockaddr(sock, "fe80::1%lo", 3) == ("fe80::1", 3, 0, socket.if_nametoindex("lo"))
    assert udp.to_sockaddr(sock, "fe80::1%7", 3) == ("fe80::1", 3, 0, 7)


def test_to_sockaddr_errors(sock):
    with pytest.raises(LocalError, match="no interface 'nosuchif0'"):
        udp.to_sockaddr(sock, "fe80::1%nosuchif0", 1)
    with pytest.raises(LocalError, match="IPv4 address has no scope"):
        udp.to_sockaddr(sock, "198.51.100.1%lo", 1)
    with pytest.raises(LocalError, match="out of range"):
        udp.to_sockaddr(sock, "198.51.100.1", 65536)


def fake_getaddrinfo(answers):
    """A getaddrinfo that answers from a table: name tests never touch a resolver."""

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (fam, socket.SOCK_DGRAM, 17, "", (ip, port, 0, 0) if fam == socket.AF_INET6 else (ip, port))
            for fam, ip in answers[host]
            if family in (socket.AF_UNSPEC, fam)
        ]

    return getaddrinfo


def test_to_sockaddr_resolves_names(sock, monkeypatch):
    monkeypatch.setattr(
        socket,
        "getaddrinfo",
        fake_getaddrinfo(
            {
                "v4.example": [(socket.AF_INET, "198.51.100.9")],
                "v6.example": [(socket.AF_INET6, "2001:db8::9"), (socket.AF_INET, "198.51.100.9")],
            }
        ),
    )
    if sock.family == socket.AF_INET6:
        assert udp.to_sockaddr(sock, "v4.example", 4) == ("::ffff:198.51.100.9", 4, 0, 0)
        assert udp.to_sockaddr(sock, "v6.example", 4) == ("2001:db8::9", 4, 0, 0)  # first answer wins
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s4:
        assert udp.to_sockaddr(s4, "v6.example", 4) == ("198.51.100.9", 4)  # asks for IPv4 only
    with pytest.raises(LocalError, match="cannot resolve 'nowhere.example'"):
        udp.to_sockaddr(sock, "nowhere.example", 1)


def test_ipv4_only_socket_addresses():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s4:
        assert udp.to_sockaddr(s4, "198.51.100.7", 9) == ("198.51.100.7", 9)
        assert udp.to_sockaddr(s4, "::ffff:198.51.100.7", 9) == ("198.51.100.7", 9)
        with pytest.raises(LocalError, match="IPv4-only"):
            udp.to_sockaddr(s4, "2001:db8::1", 9)


def test_from_sockaddr_exact_values():
    assert udp.from_sockaddr(("::ffff:198.51.100.7", 51820, 0, 0)) == ("198.51.100.7", 51820)
    assert udp.from_sockaddr(("198.51.100.7", 51820)) == ("198.51.100.7", 51820)
    assert udp.from_sockaddr(("2001:db8::1", 5, 0, 0)) == ("2001:db8::1", 5)
    assert udp.from_sockaddr(("fe80::1", 5, 0, socket.if_nametoindex("lo"))) == ("fe80::1%lo", 5)
    assert udp.from_sockaddr(("fe80::1", 5, 0, 987654)) == ("fe80::1%987654", 5)


@needs_ipv6
@pytest.mark.parametrize(
    "addr",
    [
        ("::ffff:198.51.100.7", 51820, 0, 0),
        ("2001:db8::1", 1, 0, 0),
        ("2001:db8:1:2:3:4:5:6", 65535, 0, 0),
        ("fe80::1", 0, 0, 1),
    ],
)
def test_round_trip(sock, addr):
    assert udp.to_sockaddr(sock, *udp.from_sockaddr(addr)) == addr


def test_sockaddr_bytes_exact_values():
    # Whitepaper §5.4.4 / kernel cookie.c: source IP bytes, then the UDP port in network order.
    assert udp.sockaddr_bytes(("::ffff:198.51.100.7", 51820, 0, 0)) == bytes([198, 51, 100, 7, 0xCA, 0x6C])
    assert udp.sockaddr_bytes(("198.51.100.7", 51820)) == bytes([198, 51, 100, 7, 0xCA, 0x6C])
    assert udp.sockaddr_bytes(("2001:db8::1", 1, 0, 0)) == bytes.fromhex("20010db8000000000000000000000001") + b"\x00\x01"
    assert udp.sockaddr_bytes(("fe80::1", 258, 0, 4)) == bytes.fromhex("fe800000000000000000000000000001") + b"\x01\x02"
    # Mapped and plain IPv4 are one source; different ports are different sources.
    assert udp.sockaddr_bytes(("::ffff:203.0.113.1", 7, 0, 0)) == udp.sockaddr_bytes(("203.0.113.1", 7))
    assert udp.sockaddr_bytes(("203.0.113.1", 7)) != udp.sockaddr_bytes(("203.0.113.1", 8))


def test_port_in_use():
    with udp.open_udp(0) as first:
        port = udp.local_port(first)
        with pytest.raises(LocalError) as info:
            udp.open_udp(port)
        assert str(info.value) == f"UDP port {port} is already in use"


def test_port_held_by_ipv4_socket_is_in_use():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as v4:
        v4.bind(("0.0.0.0", 0))
        port = v4.getsockname()[1]
        with pytest.raises(LocalError, match=f"^UDP port {port} is already in use$"):
            udp.open_udp(port)


def test_port_out_of_range():
    with pytest.raises(LocalError, match="out of range"):
        udp.open_udp(70000)


def test_format_for_users() -> None:
    from wgdisco.io.udp import format_hostport, format_sockaddr

    assert format_sockaddr(("::ffff:198.51.100.7", 51820, 0, 0)) == "198.51.100.7:51820"
    assert format_sockaddr(("2001:db8::7", 51820, 0, 0)) == "[2001:db8::7]:51820"
    assert format_sockaddr(("198.51.100.7", 1)) == "198.51.100.7:1"
    assert format_hostport("fd00::1", 3478) == "[fd00::1]:3478"


# --- sticky sources: IPV6_PKTINFO / IP_PKTINFO in, the same item out ----------------------


def loopback_has(ip: str) -> bool:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((ip, 0))
        return True
    except OSError:
        return False


@pytest.fixture
def _loopback_127_0_0_2() -> None:
    if not loopback_has("127.0.0.2"):  # Linux routes all of 127/8 to lo; a failure under WGDISCO_REQUIRE_NETNS=1
        skip_or_fail("127.0.0.2 is not local here")


needs_127_0_0_2 = pytest.mark.usefixtures("_loopback_127_0_0_2")


def recv_segments(sock: socket.socket, timeout: float = 2.0):
    ready, _, _ = select.select([sock], [], [], timeout)
    assert ready, "no datagram arrived"
    return udp.recv_segments(sock, 65535)


@pytest.fixture
def sticky_sock():
    s = udp.open_udp(0)
    assert udp.enable_pktinfo(s)
    yield s
    s.close()


@needs_ipv6
@needs_127_0_0_2
def test_pktinfo_names_the_local_address_ipv4_mapped_and_ipv6(sticky_sock):
    port = udp.local_port(sticky_sock)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as v4:
        v4.bind(("127.0.0.1", 0))
        v4.sendto(b"four", ("127.0.0.2", port))
        data, addr, segment, source = recv_segments(sticky_sock)
        assert (data, addr, segment) == (b"four", ("::ffff:127.0.0.1", v4.getsockname()[1], 0, 0), 0)
        # one item, IPV6_PKTINFO with the mapped address, on the dual-stack socket
        assert source[:2] == (socket.IPPROTO_IPV6, udp.IPV6_PKTINFO) and len(source[2]) == 20
        assert source[2][:16] == bytes(10) + b"\xff\xff" + bytes([127, 0, 0, 2])
        assert udp.source_address(source) == ("127.0.0.2", socket.if_nametoindex("lo"))
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as v6:
        v6.sendto(b"six", ("::1", port))
        data, addr, segment, source = recv_segments(sticky_sock)
        assert data == b"six" and udp.source_address(source) == ("::1", socket.if_nametoindex("lo"))


def test_no_pktinfo_no_source(sock):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as v4:
        v4.sendto(b"x", ("127.0.0.1", udp.local_port(sock)))
        assert recv_segments(sock)[3] is None


@needs_ipv6
@needs_127_0_0_2
def test_reply_leaves_from_the_address_the_datagram_came_to(sticky_sock):
    """The received item, sent back as is, is the source (the kernel alone picks 127.0.0.1)."""
    port = udp.local_port(sticky_sock)
    counts: dict[str, int] = {}
    sender = udp.Sender(counts, sticky_sock)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        peer.sendto(b"hello", ("127.0.0.2", port))
        _data, addr, _segment, source = recv_segments(sticky_sock)
        sender.send(b"plain", addr)
        assert recv(peer)[1] == ("127.0.0.1", port)  # what the kernel chooses
        sender.source_for = {addr: source}.get
        sender.send(b"sticky", addr)
        assert recv(peer) == (b"sticky", ("127.0.0.2", port))
        sender.send_all([(b"all", addr)])
        assert recv(peer) == (b"all", ("127.0.0.2", port))
        # a GSO batch carries UDP_SEGMENT and the pktinfo together
        sender.send_batch([b"a" * 100, b"b" * 100, b"c" * 40], 100, addr)
        got = [recv(peer) for _ in range(3)]
        assert got == [(b"a" * 100, ("127.0.0.2", port)), (b"b" * 100, ("127.0.0.2", port)),
                       (b"c" * 40, ("127.0.0.2", port))]
    assert counts == {} and sender.unstuck == 0


@needs_ipv6
@pytest.mark.parametrize("gone,peer_ip", [("192.0.2.99", "127.0.0.1"), ("2001:db8::99", "::1")])
@pytest.mark.parametrize("batch", [False, True])
def test_a_source_that_is_gone_is_dropped_and_the_send_retried(sticky_sock, gone, peer_ip, batch):
    """An address no longer local: the kernel refuses it (EINVAL / ENETUNREACH); the datagram
    goes once more from the kernel's choice and the endpoint is no longer sticky."""
    port = udp.local_port(sticky_sock)
    counts: dict[str, int] = {}
    sender = udp.Sender(counts, sticky_sock)
    sources: dict = {}
    forgotten: list = []

    def forget(endpoint, source):
        forgotten.append(endpoint)
        if sources.get(endpoint) is source:
            del sources[endpoint]

    sender.source_for, sender.forget_source = sources.get, forget
    with socket.socket(socket.AF_INET6 if ":" in peer_ip else socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind((peer_ip, 0))
        addr = udp.to_sockaddr(sticky_sock, peer_ip, peer.getsockname()[1])
        sources[addr] = udp.make_source(sticky_sock, gone)
        if batch:
            sender.send_batch([b"x" * 50, b"y" * 50], 50, addr)
            assert [recv(peer)[0] for _ in range(2)] == [b"x" * 50, b"y" * 50]
        else:
            sender.send(b"retried", addr)
            assert recv(peer) == (b"retried", (peer_ip, port) if ":" not in peer_ip else (peer_ip, port, 0, 0))
    assert sources == {} and forgotten == [addr] and sender.unstuck == 1
    assert counts == {} and sender.gso is True  # neither a drop nor "cannot segment"


@needs_127_0_0_2
def test_ipv4_only_socket_uses_ip_pktinfo():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("0.0.0.0", 0))
        s.setblocking(False)
        assert udp.enable_pktinfo(s)
        port = udp.local_port(s)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind(("127.0.0.1", 0))
            peer.sendto(b"hi", ("127.0.0.2", port))
            _data, addr, _segment, source = recv_segments(s)
            assert source[:2] == (socket.IPPROTO_IP, udp.IP_PKTINFO) and len(source[2]) == 12
            assert udp.source_address(source) == ("127.0.0.2", socket.if_nametoindex("lo"))
            assert udp.make_source(s, "127.0.0.2")[2][4:8] == bytes([127, 0, 0, 2])
            sender = udp.Sender({}, s)
            sender.source_for = {addr: source}.get
            sender.send(b"back", addr)
            assert recv(peer) == (b"back", ("127.0.0.2", port))
    finally:
        s.close()


def test_sockaddr_bytes_matches_the_ipaddress_reference() -> None:
    import ipaddress
    import random
    import struct

    def reference(addr):
        ip = ipaddress.ip_address(addr[0].partition("%")[0])
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip.packed + struct.pack("!H", addr[1])

    rng = random.Random(7)
    for _ in range(2000):
        port = rng.randrange(65536)
        kind = rng.randrange(3)
        if kind == 0:
            addr = (str(ipaddress.IPv4Address(rng.getrandbits(32))), port)
        elif kind == 1:
            addr = (f"::ffff:{ipaddress.IPv4Address(rng.getrandbits(32))}", port, 0, 0)
        else:
            addr = (str(ipaddress.IPv6Address(rng.getrandbits(128))) + rng.choice(["", "%2"]), port, 0, 0)
        assert udp.sockaddr_bytes(addr) == reference(addr), addr
