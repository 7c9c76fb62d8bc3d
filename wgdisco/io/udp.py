"""The one UDP socket (the tunnel's listen port) and the addresses it speaks in.

``open_udp`` makes a non-blocking dual-stack socket: AF_INET6 bound to ``::``
with IPV6_V6ONLY off, so IPv4 peers arrive as IPv4-mapped addresses
(``::ffff:198.51.100.7``).  Without IPv6 in the kernel it falls back to an
AF_INET socket on ``0.0.0.0``.  SO_REUSEADDR is deliberately not set: a port
another process holds is an error, not a silent share.

The cores treat an address as an opaque hashable value: exactly the tuple
``recvfrom`` returns, ``(host, port, flowinfo, scope_id)`` on the dual-stack
socket and ``(host, port)`` on the IPv4 fallback.  ``to_sockaddr`` builds the
same canonical tuple from a config's ``host``/``port`` so the two compare
equal: the host is written as ``inet_ntop`` writes it (lowercase, compressed,
mapped IPv4 dotted), flowinfo is 0 (the kernel reports 0 unless IPV6_FLOWINFO
is enabled), and a link-local scope is the interface index in the fourth
field, never a ``%name`` suffix in the host.

``Sender`` sends on the current socket: one datagram, or a run to one address in one
UDP GSO ``sendmsg`` (one ``sendto`` each where the path cannot segment); a failed send
is counted by errno, never raised.

Sticky sources (issue 14; the kernel module's and wireguard-go's conn/sticky_linux.go):
``enable_pktinfo`` makes the kernel report, with every datagram, the local address (and
interface index) it arrived on, and ``recv_segments`` returns that report untouched, as
the ``(level, type, data)`` item ``recvmsg`` gave: on the dual-stack socket always
``IPV6_PKTINFO`` (IPv4 datagrams carry the IPv4-mapped address), on the IPv4 fallback
``IP_PKTINFO``. Sent back as is in ``sendmsg``'s ancillary data, the same item makes the
kernel send from that address: nothing is parsed or packed per packet. The device records
it per endpoint from authenticated packets (``Device.sources``); the ``Sender`` asks for it
through a query (``Sender.source_for``, wired to ``Device.source_for``) and shares no container
with the core. A send the kernel refuses because of the source (the address was removed: EINVAL,
EADDRNOTAVAIL, ENETUNREACH, ...) asks the core to forget it (``Sender.forget_source``) and is
retried once without it, so the kernel chooses again.

Fragmentation, chosen per socket (issue 25; nothing rests on the kernel's defaults,
``set_fragmentation``):

- IPv4 (and IPv4-mapped on the dual-stack socket): ``IP_PMTUDISC_DONT``, no DF on the outer
  packets, as the kernel module sends them (``udp_tunnel_xmit_skb`` with ``df`` 0): a datagram
  larger than a hop is fragmented there (or here, by the kernel, past the device MTU or a path
  MTU it learnt from ICMP). So a peer without path MTU discovery (wireguard-go, the kernel
  module) works wherever fragments pass; between wgdisco peers, proto/pmtu.py keeps datagrams
  within the path so that nothing needs fragmenting, and an inner IPv4 packet without DF over
  the limit is sent in (inner) fragments.
- IPv6: ``IPV6_PMTUDISC_WANT``: the kernel fragments at the source down to a path MTU it learnt
  from ICMPv6 "packet too big" (routers never fragment IPv6, RFC 8200 §5); that honours what
  ICMPv6 does arrive, for every peer.
- Path MTU probes (``is_mtu_probe``: wgdisco probe requests over the minimum size) go out with
  ``IP_PMTUDISC_PROBE`` / ``IPV6_PMTUDISC_PROBE`` for that one ``sendto``: DF set, never
  fragmented, the kernel's learnt path MTU ignored (RFC 8899 §3: a probe must not be
  fragmented, and what answers it is the path itself). All sends happen under the tunnel's
  lock, so the switch never catches a data packet.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import struct
from typing import Any, Callable, Iterable

from wgdisco.errors import LocalError

log = logging.getLogger("wgdisco")  # the daemon's logger: its lines read as before

Sockaddr = tuple  # (host, port) or (host, port, flowinfo, scope_id), as recvfrom returns

SOCKET_BUFFER = 4 * 1024 * 1024
SO_SNDBUFFORCE = 32  # Linux <asm-generic/socket.h>; not in Python's socket module
SO_RCVBUFFORCE = 33
SO_MARK = getattr(socket, "SO_MARK", 36)
_MAPPED_PREFIX = bytes(10) + b"\xff\xff"  # ::ffff:0:0/96, RFC 4291 §2.5.5.2
# <linux/in.h>, <linux/in6.h>: not all in Python's socket module
IP_MTU_DISCOVER, IPV6_MTU_DISCOVER = 10, 23
IP_PMTUDISC_DONT, IP_PMTUDISC_PROBE = 0, 3
IPV6_PMTUDISC_WANT, IPV6_PMTUDISC_PROBE = 1, 3
PROBE_REQUEST, PROBE_MIN = 0xF1, 64  # proto/probe.py REQUEST_TYPE, MIN_REQUEST_SIZE (io imports no proto)


def open_udp(port: int, *, fwmark: int = 0) -> socket.socket:
    """The tunnel's UDP socket on ``port`` (0: the kernel picks one; see ``local_port``).

    Raises LocalError if the port is taken or not permitted, or if ``fwmark`` is
    set without CAP_NET_ADMIN.
    """
    if not 0 <= port <= 65535:
        raise LocalError(f"UDP port {port} is out of range 0..65535")
    try:
        sock = _bind(socket.AF_INET6, "::", port)
    except OSError as e:
        if e.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT):
            raise
        sock = _bind(socket.AF_INET, "0.0.0.0", port)
    try:
        _raise_buffers(sock)
        if fwmark:
            set_fwmark(sock, fwmark)
    except BaseException:
        sock.close()
        raise
    return sock


def set_fwmark(sock: socket.socket, fwmark: int) -> None:
    """Mark every packet the socket sends (SO_MARK), for policy routing."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_MARK, fwmark)
    except PermissionError:
        raise LocalError("setting a fwmark on the UDP socket needs root (CAP_NET_ADMIN)") from None


def _bind(family: int, host: str, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setblocking(False)
        set_fragmentation(sock)
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise LocalError(f"UDP port {port} is already in use") from None
        if e.errno == errno.EACCES:
            raise LocalError(f"UDP port {port} is not permitted (privileged port?)") from None
        raise
    return sock


def set_fragmentation(sock: socket.socket, probe: bool = False) -> None:
    """The socket's outer fragmentation (module docstring); ``probe``: DF and no fragmenting."""
    v4 = IP_PMTUDISC_PROBE if probe else IP_PMTUDISC_DONT
    sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, v4)  # on AF_INET6 too: its IPv4-mapped peers
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_PROBE if probe else IPV6_PMTUDISC_WANT)


def is_mtu_probe(data: bytes) -> bool:
    """A path MTU probe (proto/pmtu.py): a probe request larger than the smallest."""
    return len(data) > PROBE_MIN and data[0] == PROBE_REQUEST


def _raise_buffers(sock: socket.socket) -> None:
    """4 MiB buffers: the FORCE options ignore rmem_max/wmem_max but need CAP_NET_ADMIN."""
    for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)  # capped by the sysctl


# --- batching: UDP GSO on send, GRO on receive (Linux >= 4.18 / 5.0) -----------

SOL_UDP = 17
UDP_SEGMENT = 103  # <linux/udp.h>: sendmsg cmsg, u16 segment size
UDP_GRO = 104  # setsockopt, then recvmsg cmsg carrying the segment size (int)
MAX_SEGMENTS = 64  # UDP_MAX_SEGMENTS on older kernels
MAX_GSO_BYTES = 65000  # one datagram's IP payload limit, with room for headers
GRO_CMSG_SPACE = socket.CMSG_SPACE(4)

# --- sticky sources: IP_PKTINFO / IPV6_PKTINFO ------------------------------------

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # <linux/in.h>; missing from Python's socket module
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
# room for UDP_GRO's int and the larger pktinfo (struct in6_pktinfo, 20 bytes; in_pktinfo is 12)
RECV_CMSG_SPACE = socket.CMSG_SPACE(4) + socket.CMSG_SPACE(20)
# a send from a sticky source the kernel refuses for the source's sake: drop it, retry once
UNSTICK_ERRNOS = frozenset({errno.EINVAL, errno.EADDRNOTAVAIL, errno.ENETUNREACH, errno.EHOSTUNREACH,
                            errno.ENODEV, errno.ENXIO})

Source = tuple  # (level, type, data): the pktinfo item recvmsg returned, for sendmsg as is


def enable_pktinfo(sock: socket.socket) -> bool:
    """Report each datagram's local address and interface (the sticky source); False if unsupported.

    On the dual-stack socket IPV6_RECVPKTINFO alone covers IPv4 too (an IPV6_PKTINFO with the
    IPv4-mapped address, which sendmsg accepts back for a mapped destination, Linux
    ip_cmsg_send); IP_PKTINFO as well would add a second item to every IPv4 datagram.
    """
    try:
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    except OSError:
        return False
    return True


def source_address(source: Source) -> tuple[str, int]:
    """``(address, interface index)`` of a pktinfo item, for logs and tests (never the hot path)."""
    level, _kind, data = source
    if level == socket.IPPROTO_IPV6:
        host = socket.inet_ntop(socket.AF_INET6, data[:16])
        return (host[7:] if host.startswith("::ffff:") and "." in host else host), struct.unpack_from("=I", data, 16)[0]
    ifindex, spec_dst = struct.unpack_from("=i4s", data)
    return socket.inet_ntop(socket.AF_INET, spec_dst), ifindex


def make_source(sock: socket.socket, host: str, ifindex: int = 0) -> Source:
    """The pktinfo item that makes ``sock`` send from ``host`` (tests, tools; the data path
    sends back what it received)."""
    ip = ipaddress.ip_address(host)
    if sock.family == socket.AF_INET6:
        packed = (ipaddress.IPv6Address(_MAPPED_PREFIX + ip.packed) if ip.version == 4 else ip).packed
        return (socket.IPPROTO_IPV6, IPV6_PKTINFO, packed + struct.pack("=I", ifindex))
    return (socket.IPPROTO_IP, IP_PKTINFO, struct.pack("=i4s4s", ifindex, ip.packed, bytes(4)))


def enable_gro(sock: socket.socket) -> bool:
    """Ask the kernel to coalesce received datagrams of a flow (UDP_GRO); False if unsupported."""
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


def send_segments(sock: socket.socket, datagrams: list[bytes], segment: int, addr: Sockaddr,
                  source: Source | None = None) -> None:
    """Send datagrams of ``segment`` bytes (the last may be shorter) in one sendmsg (UDP GSO),
    from ``source`` (a pktinfo item) if given.

    OSError as from sendto; EIO/EINVAL mean the path cannot segment, and the
    caller falls back to one sendto each.
    """
    cmsgs = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", segment))]
    if source is not None:
        cmsgs.append(source)
    sock.sendmsg([b"".join(datagrams)], cmsgs, 0, addr)


def errno_name(error: OSError) -> str:
    """``ENETUNREACH`` for the drop counters (``send-ENETUNREACH``); the number if it has no name."""
    return str(errno.errorcode.get(error.errno or 0, error.errno))


# --- extra sockets (birthday punching, proto/birthday.py) ------------------------
#
# A peer reached from one of the node's extra sockets has the address ``(*sockaddr, id)``: the
# socket's tuple with the socket id appended, so plain addresses have an even length (2 or 4)
# and these an odd one (3 or 5). The cores treat both as opaque; only the Sender and the data
# plane look inside.


def via(addr: Sockaddr, sid: int) -> Sockaddr:
    """``addr`` reached from extra socket ``sid``."""
    return (*addr, sid)


def via_socket(addr: Any) -> int | None:
    """The extra socket id of an address from ``via``; None for a plain address."""
    return addr[-1] if len(addr) & 1 else None


def open_extra(*, fwmark: int = 0) -> socket.socket:
    """An extra socket on an ephemeral port: dual-stack like the listen socket, default buffers
    (it carries one peer's traffic; 256 of them may be open during an attempt)."""
    try:
        sock = _bind(socket.AF_INET6, "::", 0)
    except OSError as e:
        if e.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT):
            raise
        sock = _bind(socket.AF_INET, "0.0.0.0", 0)
    if fwmark:
        try:
            set_fwmark(sock, fwmark)
        except BaseException:
            sock.close()
            raise
    return sock


def _no_source(addr: Sockaddr) -> Source | None:
    return None


def _forget_nothing(addr: Sockaddr, source: Source) -> bool:
    return False


class Sender:
    """Sends on the current socket (``sock``, replaced on a rebind) and counts failures.

    Nothing it sends is ever retried but for one case: a datagram the kernel refuses (a full
    buffer, no route) is counted in ``counts`` as ``send-would-block`` or ``send-<ERRNO>``
    (the daemon's drop counts), and the caller goes on; one refused because of its sticky
    source (``UNSTICK_ERRNOS``) loses the source and goes again, once, from where the kernel
    chooses.

    ``source_for(endpoint)`` answers the pktinfo item to send to it with, or None for a plain
    ``sendto``; ``forget_source(endpoint, item)`` is told when the kernel refused it. The tunnel
    wires both to the device (``Device.source_for`` / ``forget_source``); by default nothing is
    sticky.
    """

    def __init__(self, counts: dict[str, int], sock: socket.socket | None = None) -> None:
        self.sock = sock
        self.counts = counts  # reason -> count; the caller's dict, shared with its other drops
        self.gso = True  # False once the path refused to segment: one sendto each from then on
        self.source_for: Callable[[Sockaddr], Source | None] = _no_source  # endpoint -> sticky source
        self.forget_source: Callable[[Sockaddr, Source], bool] = _forget_nothing  # the kernel refused it
        self.unstuck = 0  # sticky sources dropped because the kernel refused them
        self.extra: dict[int, socket.socket] = {}  # extra socket id -> socket (``via`` addresses)

    def send(self, data: bytes, addr: Sockaddr) -> None:
        """One datagram (the hot path's lone packet: no helper call in between)."""
        if len(addr) & 1:  # from an extra socket (``via``)
            self._send_via(data, addr)
            return
        source = self.source_for(addr)
        try:
            if source is None:
                self.sock.sendto(data, addr)  # type: ignore[union-attr]
            else:
                self.sock.sendmsg((data,), (source,), 0, addr)  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            self._count("send-would-block")
        except OSError as e:
            if source is not None and e.errno in UNSTICK_ERRNOS:
                self._unstick(addr, source, e)
                self.send(data, addr)
            else:
                self._count(f"send-{errno_name(e)}")

    def send_all(self, datagrams: Iterable[tuple[bytes, Sockaddr]]) -> None:
        """``(data, addr)`` pairs, one datagram each; path MTU probes unfragmented (module docstring)."""
        send = self.send
        for data, addr in datagrams:
            if is_mtu_probe(data) and self.sock is not None and not len(addr) & 1:
                set_fragmentation(self.sock, probe=True)
                try:
                    send(data, addr)
                finally:
                    set_fragmentation(self.sock)
            else:
                send(data, addr)

    def send_batch(self, batch: list[bytes], segment: int, addr: Sockaddr) -> None:
        """Datagrams of ``segment`` bytes (the last may be shorter) to ``addr``, in one GSO
        sendmsg when there are several; ``batch`` is cleared."""
        sock = self.sock
        assert sock is not None
        if len(addr) & 1:  # from an extra socket: one by one (they carry one peer's traffic)
            for data in batch:
                self._send_via(data, addr)
            batch.clear()
            return
        if len(batch) > 1 and self.gso:
            source = self.source_for(addr)
            try:
                send_segments(sock, batch, segment, addr, source)
                batch.clear()
                return
            except (BlockingIOError, InterruptedError):
                self._count("send-would-block")
                batch.clear()
                return
            except OSError as e:
                if source is not None and e.errno in UNSTICK_ERRNOS:
                    # the source, or the segmenting (EINVAL is both): again without the source
                    self._unstick(addr, source, e)
                    self.send_batch(batch, segment, addr)
                    return
                if e.errno not in (errno.EIO, errno.EINVAL, errno.EOPNOTSUPP):
                    self._count(f"send-{errno_name(e)}")
                    batch.clear()
                    return
                self.gso = False  # this path cannot segment: one sendto each from now on
                log.info("UDP GSO unavailable (%s); sending datagrams one by one", e.strerror)
        send = self.send
        for data in batch:
            send(data, addr)
        batch.clear()

    def _send_via(self, data: bytes, addr: Sockaddr) -> None:
        sock = self.extra.get(addr[-1])
        if sock is None:
            self._count("send-socket-closed")  # the node closed it meanwhile
            return
        try:
            sock.sendto(data, addr[:-1])
        except (BlockingIOError, InterruptedError):
            self._count("send-would-block")
        except OSError as e:
            self._count(f"send-{errno_name(e)}")

    def _unstick(self, addr: Sockaddr, source: Source, e: OSError) -> None:
        """The kernel refused the sticky source (removed, no longer routes): let it choose."""
        self.forget_source(addr, source)
        self.unstuck += 1
        host, ifindex = source_address(source)
        log.info("sending to %s from %s (interface %d) failed (%s); the kernel chooses the source now",
                 format_sockaddr(addr), host, ifindex, errno_name(e))

    def _count(self, reason: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1


def recv_segments(sock: socket.socket, bufsize: int) -> tuple[bytes, Sockaddr, int, Source | None]:
    """One recvmsg: (data, sender, segment size, local source).

    The segment size is 0 when not coalesced (UDP_GRO); the source is the pktinfo item as
    received (``enable_pktinfo``), None without one.
    """
    data, ancdata, _flags, addr = sock.recvmsg(bufsize, RECV_CMSG_SPACE)
    segment = 0
    source = None
    for item in ancdata:
        if item[0] == SOL_UDP:
            if item[1] == UDP_GRO and len(item[2]) >= 4:
                segment = struct.unpack_from("=i", item[2])[0]
        else:  # the only other item the socket asks for
            source = item
    return data, addr, segment, source


def local_port(sock: socket.socket) -> int:
    """The port the socket is bound to."""
    return sock.getsockname()[1]


def to_sockaddr(sock: socket.socket, host: str, port: int) -> Sockaddr:
    """The address tuple ``sock.recvfrom`` would return for a datagram from ``host``:``port``.

    ``host`` is an IPv4 or IPv6 literal (``fe80::1%eth0`` gives the scope by
    interface name or number) or a name, resolved with getaddrinfo (blocking;
    only names the configuration gives), taking the first answer.
    """
    if not 0 <= port <= 65535:
        raise LocalError(f"port {port} is out of range 0..65535")
    ip, scope = _parse_host(sock, host, port)
    if sock.family == socket.AF_INET6:
        if ip.version == 4:
            return (f"::ffff:{ip}", port, 0, 0)
        return (socket.inet_ntop(socket.AF_INET6, ip.packed), port, 0, scope)
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return (str(ip.ipv4_mapped), port)
        raise LocalError(f"cannot reach IPv6 address {host} from an IPv4-only socket")
    return (str(ip), port)


def _parse_host(sock: socket.socket, host: str, port: int) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """(address, scope id) of a literal, or of the first getaddrinfo answer for a name."""
    literal, _, scope_text = host.strip("[]").partition("%")
    try:
        ip = ipaddress.ip_address(literal)
    except ValueError:
        return _resolve(sock, host, port)
    scope = 0
    if scope_text:
        if ip.version == 4:
            raise LocalError(f"an IPv4 address has no scope: {host}")
        if scope_text.isdigit():
            scope = int(scope_text)
            if scope >= 1 << 32:  # an interface index is 32 bits; sendto would raise OverflowError
                raise LocalError(f"scope {scope_text} of {host} is not an interface index")
        else:
            try:
                scope = socket.if_nametoindex(scope_text)
            except OSError:
                raise LocalError(f"no interface {scope_text!r} for the scope of {host}") from None
    return ip, scope


def _resolve(sock: socket.socket, host: str, port: int) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    family = socket.AF_UNSPEC if sock.family == socket.AF_INET6 else socket.AF_INET
    try:
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    except (socket.gaierror, UnicodeError) as e:
        raise LocalError(f"cannot resolve {host!r}: {e}") from None
    for fam, _, _, _, addr in infos:
        if fam in (socket.AF_INET, socket.AF_INET6):
            ip = ipaddress.ip_address(addr[0].partition("%")[0])
            return ip, (addr[3] if fam == socket.AF_INET6 else 0)
    raise LocalError(f"cannot resolve {host!r}: no IPv4 or IPv6 address")


def from_sockaddr(addr: Sockaddr) -> tuple[str, int]:
    """``(host, port)`` for people and configs: IPv4-mapped shown as plain IPv4,
    IPv6 without brackets, a scope as ``%ifname`` (``%index`` if the interface is gone)."""
    literal = addr[0].partition("%")[0]
    port = addr[1]
    ip = ipaddress.ip_address(literal)
    if ip.version == 4:
        return str(ip), port
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped), port
    host = socket.inet_ntop(socket.AF_INET6, ip.packed)
    scope = addr[3] if len(addr) > 3 else 0
    if scope:
        try:
            host += "%" + socket.if_indextoname(scope)
        except OSError:
            host += f"%{scope}"
    return host, port


def format_hostport(host: str, port: int) -> str:
    """``198.51.100.7:51820`` or ``[2001:db8::7]:51820``, for logs and status."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def format_sockaddr(addr: Sockaddr) -> str:
    """A socket address as a user reads it (IPv4-mapped shown as IPv4, IPv6 in brackets)."""
    return format_hostport(*from_sockaddr(addr))


def sockaddr_bytes(addr: Sockaddr) -> bytes:
    """The source address as the cookie MAC hashes it (whitepaper §5.4.4, kernel cookie.c):
    4 (IPv4, including IPv4-mapped) or 16 address bytes, then the port big-endian.

    Only the node that makes a cookie ever checks it, so this encoding only has to
    be consistent within wgdisco (wireguard-go happens to pack the port little-endian)."""
    # inet_pton, not ipaddress: this runs for every handshake message under load (a flood), and
    # ipaddress took 14 µs of the 16 a refused initiation cost
    host = addr[0].partition("%")[0]
    if ":" in host:
        packed = socket.inet_pton(socket.AF_INET6, host)
        if packed[:12] == _V4_MAPPED:
            packed = packed[12:]
    else:
        packed = socket.inet_pton(socket.AF_INET, host)
    return packed + _PORT.pack(addr[1])


_V4_MAPPED = bytes(10) + b"\xff\xff"
_PORT = struct.Struct("!H")
