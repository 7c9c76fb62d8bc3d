"""Sticky sources follow the route's interface.

A sticky source (io/udp.py) is the pktinfo item of the latest authenticated packet from an
endpoint: its local address and the interface it arrived on, and ``sendmsg`` with it pins both.
The kernel module forgets it when the route to the endpoint, looked up from that address, now
leaves through another interface (wireguard-linux socket.c ``send4``: ``rt->dst.dev->ifindex !=
endpoint->src_if4``), so the new route's preferred source is used; wireguard-go makes the same
lookup when rtnetlink reports a route change (device/sticky_linux.go). wgdisco does what
wireguard-go does: after a burst of route, address or link changes (io/netmon.py) every sticky
source is looked up once (``ip route get DST from SRC mark FWMARK``, io/netlink.py
``route_interfaces``) and dropped where the interface differs. The peer then follows the new
source by roaming (whitepaper §2.1).

``to_check(sources)`` says what to look up; ``stale(checked, interfaces)`` which entries to drop.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from wgdisco.io import udp


class Check(NamedTuple):
    endpoint: Any  # the Device.sources key (a socket address)
    source: Any  # its pktinfo item, as recorded (dropped only if it is still this one)
    src: str  # the sticky address
    dst: str  # the endpoint's address
    ifindex: int  # the interface the sticky source names


def to_check(sources: dict[Any, Any]) -> list[Check]:
    """The sticky sources that name an interface, with the addresses to look their route up by."""
    out: list[Check] = []
    for endpoint, source in sources.items():
        try:
            src, ifindex = udp.source_address(source)
            dst = udp.from_sockaddr(endpoint)[0]
        except (ValueError, TypeError, IndexError, OSError):
            continue  # not a (host, port, ...) address: nothing to look up
        if ifindex and "%" not in dst:  # a scoped (link-local) endpoint names its interface itself
            out.append(Check(endpoint, source, src, dst, ifindex))
    return out


def stale(checked: list[Check], interfaces: list[int | None]) -> list[Check]:
    """The checks whose route now leaves through another interface (None: no answer, the
    send itself will tell, io/udp.py UNSTICK_ERRNOS)."""
    return [c for c, oif in zip(checked, interfaces) if oif is not None and oif != c.ifindex]
