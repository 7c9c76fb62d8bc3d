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
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import struct
from typing import Any, Iterable

from wgdisco.errors import LocalError

log = logging.getLogger("wgdisco")  # the daemon's logger: its lines read as before

Sockaddr = tuple  # (host, port) or (host, port, flowinfo, scope_id), as recvfrom returns

SOCKET_BUFFER = 4 * 1024 * 1024
SO_SNDBUFFORCE = 32  # Linux <asm-generic/socket.h>; not in Python's socket module
SO_RCVBUFFORCE = 33
SO_MARK = getattr(socket, "SO_MARK", 36)
_MAPPED_PREFIX = bytes(10) + b"\xff\xff"  # ::ffff:0:0/96, RFC 4291 §2.5.5.2


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
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise LocalError(f"UDP port {port} is already in use") from None
        if e.errno == errno.EACCES:
            raise LocalError(f"UDP port {port} is not permitted (privileged port?)") from None
        raise
    return sock


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


def enable_gro(sock: socket.socket) -> bool:
    """Ask the kernel to coalesce received datagrams of a flow (UDP_GRO); False if unsupported."""
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


def send_segments(sock: socket.socket, datagrams: list[bytes], segment: int, addr: Sockaddr) -> None:
    """Send datagrams of ``segment`` bytes (the last may be shorter) in one sendmsg (UDP GSO).

    OSError as from sendto; EIO/EINVAL mean the path cannot segment, and the
    caller falls back to one sendto each.
    """
    sock.sendmsg([b"".join(datagrams)], [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", segment))], 0, addr)


class Sender:
    """Sends on the current socket (``sock``, replaced on a rebind) and counts failures.

    Nothing it sends is ever retried: a datagram the kernel refuses (a full buffer, no
    route) is counted in ``counts`` as ``send-would-block`` or ``send-<ERRNO>`` (the
    daemon's drop counts), and the caller goes on.
    """

    def __init__(self, counts: dict[str, int], sock: socket.socket | None = None) -> None:
        self.sock = sock
        self.counts = counts  # reason -> count; the caller's dict, shared with its other drops
        self.gso = True  # False once the path refused to segment: one sendto each from then on

    def send(self, data: bytes, addr: Sockaddr) -> None:
        """One datagram (the hot path's lone packet: no helper call in between)."""
        try:
            self.sock.sendto(data, addr)  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            self._count("send-would-block")
        except OSError as e:
            self._count(f"send-{errno.errorcode.get(e.errno or 0, e.errno)}")

    def send_all(self, datagrams: Iterable[tuple[bytes, Sockaddr]]) -> None:
        """``(data, addr)`` pairs, one sendto each."""
        sendto = self.sock.sendto  # type: ignore[union-attr]
        for data, addr in datagrams:
            self._sendto(sendto, data, addr)

    def send_batch(self, batch: list[bytes], segment: int, addr: Sockaddr) -> None:
        """Datagrams of ``segment`` bytes (the last may be shorter) to ``addr``, in one GSO
        sendmsg when there are several; ``batch`` is cleared."""
        sock = self.sock
        assert sock is not None
        if len(batch) > 1 and self.gso:
            try:
                send_segments(sock, batch, segment, addr)
                batch.clear()
                return
            except (BlockingIOError, InterruptedError):
                self._count("send-would-block")
                batch.clear()
                return
            except OSError as e:
                if e.errno not in (errno.EIO, errno.EINVAL, errno.EOPNOTSUPP):
                    self._count(f"send-{errno.errorcode.get(e.errno or 0, e.errno)}")
                    batch.clear()
                    return
                self.gso = False  # this path cannot segment: one sendto each from now on
                log.info("UDP GSO unavailable (%s); sending datagrams one by one", e.strerror)
        sendto = sock.sendto
        for data in batch:
            self._sendto(sendto, data, addr)
        batch.clear()

    def _sendto(self, sendto: Any, data: bytes, addr: Sockaddr) -> None:
        try:
            sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            self._count("send-would-block")
        except OSError as e:
            self._count(f"send-{errno.errorcode.get(e.errno or 0, e.errno)}")

    def _count(self, reason: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1


def recv_segments(sock: socket.socket, bufsize: int) -> tuple[bytes, Sockaddr, int]:
    """One recvmsg: (data, sender, segment size) — segment 0 when not coalesced."""
    data, ancdata, _flags, addr = sock.recvmsg(bufsize, GRO_CMSG_SPACE)
    for level, kind, value in ancdata:
        if level == SOL_UDP and kind == UDP_GRO and len(value) >= 4:
            return data, addr, struct.unpack_from("=i", value)[0]
    return data, addr, 0


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
    ip = ipaddress.ip_address(addr[0].partition("%")[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.packed + struct.pack("!H", addr[1])
