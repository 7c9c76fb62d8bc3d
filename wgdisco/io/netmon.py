"""Network-change monitor: rtnetlink multicast notifications, debounced into one callback per burst.

Theory of operation
-------------------
A raw ``AF_NETLINK``/``NETLINK_ROUTE`` socket is bound to the multicast groups
for links, IPv4/IPv6 addresses and IPv4/IPv6 routes (rtnetlink(7)).  It is
non-blocking and watched with ``loop.add_reader``; each datagram holds one or
more netlink messages, of which only the ``nlmsghdr`` type and the interface
index (``ifinfomsg.ifi_index``, ``ifaddrmsg.ifa_index``, a route's ``RTA_OIF``
or its ``RTA_MULTIPATH`` next hops) are read.  pyroute2's ``AsyncIPRoute`` was
the alternative: it works, but it parses every attribute of every message into
dicts, owns its own queue and transport, and leaves a receive-buffer overrun
(ENOBUFS) hard to see — here that is one ``except`` clause.

The socket lives in the network namespace of the thread that calls
``start()`` (the loop's thread), like ``ip monitor``.

Each accepted message adds its kind (``"link"``, ``"addr"``, ``"route"``) to a
pending set.  The callback gets that set once the changes have been quiet for
``debounce`` seconds, or at the latest ``max_delay`` seconds after the first
change of the burst (so a flapping link cannot postpone it forever).

Ignored interfaces (the daemon's own TUN, whose coming up is a burst of link,
address and route events): by index (a set, or a predicate on the index) or by
name.  A name is resolved when the monitor starts and learned again from
``IFLA_IFNAME`` in every link message, so an interface created after
``start()`` is ignored from its very first event.  A route is ignored when all
of its output interfaces are; a route without one (blackhole, nexthop object)
never is.  Learned indexes are kept after the interface goes away (the kernel
does not reuse an index soon), so its trailing events are ignored too.

The receive path never raises: messages not sent by the kernel, malformed
messages and socket errors are dropped and counted.  ENOBUFS means the kernel
dropped notifications because we were slow; we cannot know which, so the next
callback reports every kind.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from wgdisco.errors import DecodeError, LocalError

log = logging.getLogger(__name__)

# <linux/rtnetlink.h> multicast groups (the legacy bitmask form bind() takes).
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400
GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE

# Message types.
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN = 1, 2, 3, 4
RTM_NEWLINK, RTM_DELLINK = 16, 17
RTM_NEWADDR, RTM_DELADDR = 20, 21
RTM_NEWROUTE, RTM_DELROUTE = 24, 25

LINK, ADDR, ROUTE = "link", "addr", "route"
ALL_KINDS = frozenset({LINK, ADDR, ROUTE})
KIND_OF_TYPE = {
    RTM_NEWLINK: LINK, RTM_DELLINK: LINK,
    RTM_NEWADDR: ADDR, RTM_DELADDR: ADDR,
    RTM_NEWROUTE: ROUTE, RTM_DELROUTE: ROUTE,
}

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
RTATTR = struct.Struct("=HH")  # len, type
RTNEXTHOP = struct.Struct("=HBBi")  # len, flags, hops, ifindex
IFLA_IFNAME = 3
RTA_OIF = 4
RTA_MULTIPATH = 9
RTM_F_CLONED = 0x200  # a route cache entry, not a route anybody configured

RECV_SIZE = 65536  # a netlink datagram never exceeds this for these groups
RECV_BATCH = 64  # datagrams per reader wake-up, so a storm cannot starve the loop
DEFAULT_RCVBUF = 1 << 20
SO_RCVBUFFORCE = 33  # <asm-generic/socket.h>; needs CAP_NET_ADMIN, else SO_RCVBUF (capped by rmem_max)


def _align(n: int) -> int:
    return (n + 3) & ~3  # NLMSG_ALIGN / RTA_ALIGN


@dataclass(frozen=True)
class Change:
    """One rtnetlink notification, reduced to what the monitor needs."""

    kind: str  # "link", "addr" or "route"
    msg_type: int  # RTM_NEWLINK, ...
    ifindexes: tuple[int, ...]  # interfaces it concerns; empty for a route without an output interface
    ifname: str | None = None  # IFLA_IFNAME of a link message


def _attrs(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, payload start, payload end) of each rtattr in ``data[start:end]``."""
    while start + RTATTR.size <= end:
        length, rta_type = RTATTR.unpack_from(data, start)
        if length < RTATTR.size or start + length > end:
            raise DecodeError(f"rtattr length {length} at offset {start} overruns its message")
        yield rta_type & 0x3FFF, start + RTATTR.size, start + length  # low bits: NLA_F_NESTED etc. off
        start += _align(length)


def _route_oifs(data: bytes, start: int, end: int) -> tuple[int, ...]:
    oifs: list[int] = []
    for rta_type, lo, hi in _attrs(data, start, end):
        if rta_type == RTA_OIF and hi - lo >= 4:
            oifs.append(struct.unpack_from("=i", data, lo)[0])
        elif rta_type == RTA_MULTIPATH:
            pos = lo
            while pos + RTNEXTHOP.size <= hi:
                length, _, _, ifindex = RTNEXTHOP.unpack_from(data, pos)
                if length < RTNEXTHOP.size:
                    raise DecodeError(f"rtnexthop length {length} in RTA_MULTIPATH")
                oifs.append(ifindex)
                pos += _align(length)
    return tuple(oifs)


def _link_name(data: bytes, start: int, end: int) -> str | None:
    for rta_type, lo, hi in _attrs(data, start, end):
        if rta_type == IFLA_IFNAME:
            return data[lo:hi].split(b"\0", 1)[0].decode(errors="replace")
    return None


def iter_changes(data: bytes) -> Iterator[Change]:
    """The link, address and route notifications in one netlink datagram.

    Other message types (NOOP, DONE, ERROR, anything unknown) are skipped, as
    are cloned routes (route cache entries).  Raises DecodeError at the first
    malformed message; the changes before it have already been yielded.
    """
    pos = 0
    while pos < len(data):
        if len(data) - pos < NLMSGHDR.size:
            raise DecodeError(f"{len(data) - pos} trailing bytes, shorter than a netlink header")
        length, msg_type, _flags, _seq, _pid = NLMSGHDR.unpack_from(data, pos)
        if length < NLMSGHDR.size or pos + length > len(data):
            raise DecodeError(f"netlink message length {length} at offset {pos} of a {len(data)}-byte datagram")
        body, end = pos + NLMSGHDR.size, pos + length
        pos += _align(length)
        kind = KIND_OF_TYPE.get(msg_type)
        if kind is None:
            continue
        if kind == LINK:
            if end - body < IFINFOMSG.size:
                raise DecodeError(f"link message of {length} bytes is too short")
            index = IFINFOMSG.unpack_from(data, body)[2]
            yield Change(kind, msg_type, (index,), _link_name(data, body + IFINFOMSG.size, end))
        elif kind == ADDR:
            if end - body < IFADDRMSG.size:
                raise DecodeError(f"address message of {length} bytes is too short")
            yield Change(kind, msg_type, (IFADDRMSG.unpack_from(data, body)[4],))
        else:
            if end - body < RTMSG.size:
                raise DecodeError(f"route message of {length} bytes is too short")
            if RTMSG.unpack_from(data, body)[8] & RTM_F_CLONED:
                continue
            yield Change(kind, msg_type, _route_oifs(data, body + RTMSG.size, end))


class NetworkMonitor:
    """Calls ``callback(kinds)`` once per burst of link/address/route changes.

    ``kinds`` is a non-empty subset of ``{"link", "addr", "route"}`` (a fresh
    set the callback may keep).  The callback runs on the event loop and must
    not block; an exception from it is logged, and monitoring goes on.

    ``ignore_ifindexes``: interface indexes whose changes are ignored, or a
    predicate ``f(ifindex) -> bool``.  ``ignore_ifnames``: the same by name
    (see the module docstring).  ``debounce``: seconds of quiet that end a
    burst; ``max_delay`` (default ``4 * debounce``): the longest a change
    waits for its callback.  ``rcvbuf``: the socket's receive buffer in bytes.
    """

    def __init__(
        self,
        callback: Callable[[set[str]], None],
        *,
        ignore_ifindexes: Iterable[int] | Callable[[int], bool] = (),
        ignore_ifnames: Iterable[str] = (),
        debounce: float = 0.2,
        max_delay: float | None = None,
        rcvbuf: int = DEFAULT_RCVBUF,
    ) -> None:
        if debounce < 0:
            raise LocalError(f"debounce must be >= 0, not {debounce}")
        max_delay = 4 * debounce if max_delay is None else max_delay
        if max_delay < debounce:
            raise LocalError(f"max_delay ({max_delay}) must be >= debounce ({debounce})")
        self._callback = callback
        self._debounce = debounce
        self._max_delay = max_delay
        self._rcvbuf = rcvbuf
        self._predicate: Callable[[int], bool] | None = None
        if callable(ignore_ifindexes):
            self._predicate = ignore_ifindexes
            self._ignored: set[int] = set()
        else:
            indexes = set(ignore_ifindexes)
            if not all(isinstance(i, int) for i in indexes):
                raise LocalError(f"ignore_ifindexes takes interface indexes; pass names as ignore_ifnames: {indexes}")
            self._ignored = indexes
        self._names = frozenset(ignore_ifnames)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: socket.socket | None = None
        self._closed = False
        self._pending: set[str] = set()
        self._first = self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        # Counters (never reset).
        self.changes = 0  # messages accepted
        self.ignored = 0  # messages about ignored interfaces
        self.malformed = 0  # datagrams with a malformed message (the rest of it dropped)
        self.foreign = 0  # datagrams not sent by the kernel
        self.overruns = 0  # ENOBUFS: the kernel dropped notifications
        self.errors = 0  # other receive errors
        self.callbacks = 0

    # -- lifecycle
    async def start(self) -> None:
        """Open the socket (in this thread's network namespace) and start watching."""
        if self._closed or self._sock is not None:
            raise LocalError("NetworkMonitor.start() called twice or after close()")
        loop = asyncio.get_running_loop()
        try:
            sock = socket.socket(
                socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
            )
        except OSError as e:
            raise LocalError(f"cannot open a rtnetlink socket: {e.strerror}") from e
        try:
            self._set_rcvbuf(sock)
            sock.bind((0, GROUPS))
        except OSError as e:
            sock.close()
            raise LocalError(f"cannot subscribe to rtnetlink groups: {e.strerror}") from e
        self._resolve_names()
        self._loop, self._sock = loop, sock
        loop.add_reader(sock.fileno(), self._on_readable)

    async def close(self) -> None:
        """Stop watching and close the socket; no callback runs after this.  Idempotent."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pending.clear()
        sock, self._sock = self._sock, None
        if sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(sock.fileno())
            sock.close()

    async def __aenter__(self) -> NetworkMonitor:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def running(self) -> bool:
        return self._sock is not None

    @property
    def port_id(self) -> int | None:
        """The socket's netlink port id (``nl_pid``, as ``ss -f netlink`` shows it); None unless running."""
        return self._sock.getsockname()[0] if self._sock is not None else None

    def counters(self) -> dict[str, int]:
        names = ("changes", "ignored", "malformed", "foreign", "overruns", "errors", "callbacks")
        return {name: getattr(self, name) for name in names}

    # -- receive path (never raises)
    def _set_rcvbuf(self, sock: socket.socket) -> None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self._rcvbuf)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._rcvbuf)

    def _resolve_names(self) -> None:
        for name in self._names:
            try:
                self._ignored.add(socket.if_nametoindex(name))
            except OSError:
                pass  # not there yet: learned from its first RTM_NEWLINK

    def _on_readable(self) -> None:
        for _ in range(RECV_BATCH):
            if self._sock is None:
                return
            try:
                data, (sender, _groups) = self._sock.recvfrom(RECV_SIZE)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self.overruns += 1
                    self._resolve_names()  # an ignored interface may have come and gone unseen
                    self._note(ALL_KINDS)
                else:
                    self.errors += 1
                    return
                continue
            self.datagram_received(data, sender)

    def datagram_received(self, data: bytes, sender: int) -> None:
        """Handle one datagram from netlink port ``sender`` (the kernel is 0); never raises on bad input."""
        if sender != 0:
            self.foreign += 1  # another process (root can multicast on rtnetlink): not news
            return
        kinds: set[str] = set()
        try:
            for change in iter_changes(data):
                if self._is_ignored(change):
                    self.ignored += 1
                else:
                    self.changes += 1
                    kinds.add(change.kind)
        except DecodeError:
            self.malformed += 1
        if kinds:
            self._note(kinds)

    def _is_ignored(self, change: Change) -> bool:
        if change.ifname is not None and change.ifname in self._names:
            self._ignored.add(change.ifindexes[0])
            return True
        if not change.ifindexes:
            return False
        return all(i in self._ignored or (self._predicate is not None and self._predicate(i))
                   for i in change.ifindexes)

    # -- debouncing
    def _note(self, kinds: Iterable[str]) -> None:
        if self._loop is None or self._closed:
            return
        now = self._loop.time()
        if not self._pending:
            self._first = now
        self._pending.update(kinds)
        self._last = now
        if self._timer is None:  # re-armed lazily in _on_timer, not on every message
            self._timer = self._loop.call_at(now + self._debounce, self._on_timer)

    def _due(self) -> float:
        return min(self._last + self._debounce, self._first + self._max_delay)

    def _on_timer(self) -> None:
        self._timer = None
        if self._loop is None or self._closed or not self._pending:
            return
        due = self._due()
        if due - self._loop.time() > 0.001:
            self._timer = self._loop.call_at(due, self._on_timer)
            return
        kinds, self._pending = self._pending, set()
        self.callbacks += 1
        try:
            self._callback(kinds)
        except Exception:
            log.exception("network-change callback failed")
