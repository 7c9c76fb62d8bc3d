"""wgdisco.io.netmon: parsing rtnetlink notifications, on hand-built messages.

The monitor itself, in a lab namespace: tests/netns/test_netmon_lab.py.
"""

from __future__ import annotations

import socket
import struct

import pytest

from wgdisco.errors import DecodeError, LocalError
from wgdisco.io.netmon import (
    IFLA_IFNAME,
    NLMSG_DONE,
    RTA_MULTIPATH,
    RTA_OIF,
    RTM_DELADDR,
    RTM_F_CLONED,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
    Change,
    NetworkMonitor,
    iter_changes,
)


# --- hand-built rtnetlink messages -------------------------------------------------------------


def rtattr(rta_type: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), rta_type) + payload
    return raw + bytes(-len(raw) % 4)


def nlmsg(msg_type: int, body: bytes, pid: int = 0) -> bytes:
    raw = struct.pack("=IHHII", 16 + len(body), msg_type, 0, 0, pid) + body
    return raw + bytes(-len(raw) % 4)


def link_msg(index: int, name: str | None = None, msg_type: int = RTM_NEWLINK) -> bytes:
    body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, 0, 0)
    if name is not None:
        body += rtattr(IFLA_IFNAME, name.encode() + b"\0")
    return nlmsg(msg_type, body)


def addr_msg(index: int, msg_type: int = RTM_NEWADDR) -> bytes:
    return nlmsg(msg_type, struct.pack("=BBBBI", socket.AF_INET, 24, 0, 0, index))


def route_msg(*oifs: int, multipath: tuple[int, ...] = (), flags: int = 0) -> bytes:
    body = struct.pack("=BBBBBBBBI", socket.AF_INET, 24, 0, 0, 254, 3, 253, 1, flags)
    body += rtattr(1, socket.inet_aton("10.8.0.0"))  # RTA_DST
    for oif in oifs:
        body += rtattr(RTA_OIF, struct.pack("=i", oif))
    if multipath:
        body += rtattr(RTA_MULTIPATH, b"".join(struct.pack("=HBBi", 8, 0, 0, i) for i in multipath))
    return nlmsg(RTM_NEWROUTE, body)


def test_iter_changes_reads_type_and_interface():
    data = link_msg(7, "wg0") + addr_msg(3, RTM_DELADDR) + route_msg(5) + route_msg(multipath=(2, 9))
    assert list(iter_changes(data)) == [
        Change("link", RTM_NEWLINK, (7,), "wg0"),
        Change("addr", RTM_DELADDR, (3,)),
        Change("route", RTM_NEWROUTE, (5,)),
        Change("route", RTM_NEWROUTE, (2, 9)),
    ]


def test_iter_changes_skips_other_types_and_cloned_routes():
    data = nlmsg(NLMSG_DONE, b"\0" * 4) + nlmsg(28, b"\0" * 12) + route_msg(4, flags=RTM_F_CLONED) + link_msg(1)
    assert list(iter_changes(data)) == [Change("link", RTM_NEWLINK, (1,), None)]
    assert list(iter_changes(b"")) == []
    assert list(iter_changes(route_msg())) == [Change("route", RTM_NEWROUTE, ())]  # e.g. a blackhole route


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x01\x02\x03",  # shorter than a header
        struct.pack("=IHHII", 8, RTM_NEWADDR, 0, 0, 0),  # length below the header's own
        struct.pack("=IHHII", 400, RTM_NEWADDR, 0, 0, 0) + bytes(8),  # length beyond the datagram
        nlmsg(RTM_NEWADDR, b"\0\0"),  # body too short for ifaddrmsg
        nlmsg(RTM_NEWLINK, bytes(8)),  # body too short for ifinfomsg
        nlmsg(RTM_NEWROUTE, bytes(12) + struct.pack("=HH", 200, RTA_OIF)),  # rtattr overruns the message
        nlmsg(RTM_NEWROUTE, bytes(12) + rtattr(RTA_MULTIPATH, struct.pack("=HBBi", 2, 0, 0, 1))),
    ],
    ids=["short", "len-too-small", "len-too-big", "addr-body", "link-body", "rtattr", "nexthop"],
)
def test_iter_changes_raises_decode_error_on_garbage(garbage):
    with pytest.raises(DecodeError):
        list(iter_changes(garbage))


def test_iter_changes_yields_what_precedes_garbage():
    it = iter_changes(addr_msg(2) + b"\xff" * 5)
    assert next(it) == Change("addr", RTM_NEWADDR, (2,))
    with pytest.raises(DecodeError):
        next(it)


def test_bad_arguments():
    with pytest.raises(LocalError):
        NetworkMonitor(print, debounce=-1)
    with pytest.raises(LocalError):
        NetworkMonitor(print, debounce=0.5, max_delay=0.1)
    with pytest.raises(LocalError, match="ignore_ifnames"):
        NetworkMonitor(print, ignore_ifindexes={"wg0"})  # type: ignore[arg-type]
