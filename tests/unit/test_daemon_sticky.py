"""wgdisco.daemon.sticky: which sticky sources to look up, and which the route made stale."""

from __future__ import annotations

import socket

import pytest

from wgdisco.daemon.sticky import Check, stale, to_check
from wgdisco.io import udp


@pytest.fixture
def sock():
    s = udp.open_udp(0)
    yield s
    s.close()


def test_what_is_looked_up(sock) -> None:
    v4 = udp.to_sockaddr(sock, "10.0.0.2", 51820)  # IPv4-mapped on the dual-stack socket
    v6 = udp.to_sockaddr(sock, "2001:db8::2", 51820)
    lo = ("fe80::2", 51820, 0, 1)  # scoped: the address names its interface
    sources = {
        v4: udp.make_source(sock, "10.0.0.1", 2),
        v6: udp.make_source(sock, "2001:db8::1", 3),
        lo: udp.make_source(sock, "fe80::1", 1),
        udp.to_sockaddr(sock, "10.0.0.5", 1): udp.make_source(sock, "10.0.0.1", 0),  # no interface named
    }
    checks = to_check(sources)
    assert [(c.src, c.dst, c.ifindex) for c in checks] == [("10.0.0.1", "10.0.0.2", 2), ("2001:db8::1", "2001:db8::2", 3)]
    assert checks[0].endpoint == v4 and checks[0].source is sources[v4]


def test_stale_when_the_route_leaves_elsewhere() -> None:
    a = Check(("10.0.0.2", 1), object(), "10.0.0.1", "10.0.0.2", 2)
    b = Check(("10.0.0.4", 1), object(), "10.0.0.1", "10.0.0.4", 2)
    c = Check(("10.0.0.6", 1), object(), "10.0.0.9", "10.0.0.6", 2)
    assert stale([a, b, c], [3, 2, None]) == [a]  # None: no route or not our address, the send tells


def test_ipv4_fallback_socket() -> None:
    s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        checks = to_check({("192.0.2.2", 51820): udp.make_source(s4, "192.0.2.1", 4)})
    finally:
        s4.close()
    assert [(c.src, c.dst, c.ifindex) for c in checks] == [("192.0.2.1", "192.0.2.2", 4)]
