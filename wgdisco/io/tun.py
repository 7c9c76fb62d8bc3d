"""The TUN device: a non-blocking fd carrying raw IP packets (Linux).

``Tun(name)`` opens ``/dev/net/tun`` and attaches it to a new layer-3 interface
with ``IFF_TUN | IFF_NO_PI`` (no 4-byte packet-information header: each read
returns exactly one IPv4 or IPv6 packet, each write takes one).  ``IFF_TUN_EXCL``
makes the kernel refuse a name that already exists instead of attaching to it,
so a second daemon for the same interface fails loudly.

The interface lives as long as the fd (it is not made persistent); closing the
fd deletes it.  Addresses, MTU and routes are netlink's business, not ours.

Would-block is not an error on a non-blocking fd: ``read``/``readinto`` return
``None`` and ``write`` returns 0 (the packet is dropped and counted in
``drops``), so the data plane never needs a try/except around them.

When the interface is deleted under us (``ip link del``, all ``wg-quick down``
does) the kernel detaches the fd: epoll reports EPOLLERR and every read and write
fails with EBADFD (``link_gone``).  EIO on write only means the link is down.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct

from wgdisco.errors import LocalError

TUN_PATH = "/dev/net/tun"
TUNSETIFF = 0x400454CA  # _IOW('T', 202, int)
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_TUN_EXCL = 0x8000
IFF_VNET_HDR = 0x4000
TUNSETOFFLOAD = 0x400454D0  # _IOW('T', 208, unsigned int)
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
VNET_HDR_LEN = 10  # struct virtio_net_hdr, the default TUNSETVNETHDRSZ
_ZERO_VNET_HDR = bytes(VNET_HDR_LEN)
IFNAMSIZ = 16
IFREQ_SIZE = 40  # sizeof(struct ifreq) on Linux
IFREQ_FORMAT = f"{IFNAMSIZ}sH{IFREQ_SIZE - IFNAMSIZ - 2}x"  # ifr_name, ifr_flags, union padding

# Write errors meaning "the kernel could not take this packet now": drop it, like a full queue.
_WRITE_DROPS = frozenset({errno.EAGAIN, errno.ENOBUFS, errno.ENOMEM, errno.EIO})


def link_gone(e: OSError) -> bool:
    """True if a TUN read/write error means the interface was deleted (EBADFD, drivers/net/tun.c)."""
    return e.errno == errno.EBADFD


def pack_ifreq(name: str, flags: int) -> bytes:
    """``struct ifreq`` with ``ifr_name`` and ``ifr_flags`` set, as TUNSETIFF takes it."""
    raw = name.encode()
    if len(raw) >= IFNAMSIZ or "/" in name or any(c.isspace() for c in name):
        raise LocalError(f"invalid interface name {name!r} (at most {IFNAMSIZ - 1} bytes, no '/' or spaces)")
    return struct.pack(IFREQ_FORMAT, raw, flags)


def unpack_ifreq_name(ifreq: bytes) -> str:
    """The NUL-terminated ``ifr_name`` of a ``struct ifreq``."""
    return ifreq[:IFNAMSIZ].split(b"\0", 1)[0].decode()


class Tun:
    """One TUN interface, opened and owned by this process."""

    def __init__(self, name: str, *, vnet_hdr: bool = False) -> None:
        """Create interface ``name`` (a kernel pattern such as ``"tun%d"`` is allowed).

        With ``vnet_hdr`` every packet crosses the fd behind a 10-byte virtio-net
        header (IFF_VNET_HDR): ``read`` strips it, ``write`` adds a zero one, and
        ``write_vnet`` passes one through, e.g. for a coalesced GSO packet. No
        offloads are enabled, so what we read is always a plain, checksummed packet.

        Raises LocalError when not permitted (needs root / CAP_NET_ADMIN), when the
        name is taken, or when ``/dev/net/tun`` is missing.
        """
        self.vnet_hdr = vnet_hdr
        ifreq = pack_ifreq(name, IFF_TUN | IFF_NO_PI | IFF_TUN_EXCL | (IFF_VNET_HDR if vnet_hdr else 0))
        try:
            fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise LocalError(f"{TUN_PATH} does not exist (is the tun module loaded?)") from None
        except PermissionError:
            raise LocalError("opening a TUN device needs root (CAP_NET_ADMIN)") from None
        try:
            result = fcntl.ioctl(fd, TUNSETIFF, ifreq)
        except OSError as e:
            os.close(fd)
            if e.errno == errno.EPERM:
                raise LocalError("opening a TUN device needs root (CAP_NET_ADMIN)") from None
            if e.errno in (errno.EBUSY, errno.EEXIST):
                raise LocalError(f"interface {name} already exists") from None
            raise LocalError(f"cannot create TUN interface {name}: {e.strerror}") from e
        self._fd = fd
        self.name = unpack_ifreq_name(result)
        try:  # the index identifies our link for good; a name can be taken by another one later
            self.ifindex = socket.if_nametoindex(self.name)
        except OSError as e:
            self.close()
            raise LocalError(f"cannot find the index of TUN interface {self.name}: {e.strerror}") from e
        self.drops = 0  # packets write() could not hand to the kernel

    def fileno(self) -> int:
        """The fd, for ``loop.add_reader`` or ``select``; raises LocalError once closed."""
        if self._fd < 0:
            raise LocalError(f"TUN {self.name} is closed")
        return self._fd

    def read(self, bufsize: int = 65535) -> bytes | None:
        """One packet, or None when none is waiting (EAGAIN)."""
        try:
            data = os.read(self.fileno(), bufsize)
        except BlockingIOError:
            return None
        return data[VNET_HDR_LEN:] if self.vnet_hdr else data

    def readinto(self, buf: bytearray | memoryview) -> int | None:
        """Read one packet into ``buf``; its length, or None when none is waiting (EAGAIN).

        A packet longer than ``buf`` is truncated by the kernel (size ``buf`` for the MTU).
        Not for a ``vnet_hdr`` device.
        """
        if self.vnet_hdr:
            raise LocalError("readinto does not strip the virtio-net header; use read")
        try:
            return os.readv(self.fileno(), [buf])
        except BlockingIOError:
            return None

    def enable_offloads(self) -> bool:
        """Let the kernel hand over TCP super-packets (up to 64 KiB, TSO) and packets with a
        partial checksum (TUNSETOFFLOAD with TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6), as
        wireguard-go does; False if refused or not a ``vnet_hdr`` device. Only for a reader
        that splits them and completes checksums (the compiled data path, io/_fastpath.c):
        ``read`` then returns such packets as they came."""
        if not self.vnet_hdr:
            return False
        try:
            fcntl.ioctl(self.fileno(), TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
        except OSError:
            return False
        return True

    def write(self, packet: bytes | bytearray | memoryview) -> int:
        """Hand one IP packet to the kernel; bytes written, or 0 if it was dropped.

        Dropped (counted in ``drops``, not raised): EAGAIN/ENOBUFS/ENOMEM (queue full)
        and EIO (the interface is down).  Other errors, e.g. EINVAL for a malformed
        packet or EBADFD after the interface was deleted, are raised as OSError.
        """
        if self.vnet_hdr:
            return self.write_vnet(_ZERO_VNET_HDR, packet)
        try:
            return os.write(self.fileno(), packet)
        except OSError as e:
            if e.errno not in _WRITE_DROPS:
                raise
            self.drops += 1
            return 0

    def write_vnet(self, header: bytes, packet: bytes | bytearray | memoryview) -> int:
        """Write a packet behind its virtio-net header (``vnet_hdr`` devices); as ``write``."""
        try:
            return os.writev(self.fileno(), (header, packet))
        except OSError as e:
            if e.errno not in _WRITE_DROPS:
                raise
            self.drops += 1
            return 0

    def close(self) -> None:
        """Close the fd, which deletes the interface. Idempotent."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> Tun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._fd < 0 else f"fd={self._fd}"
        return f"<Tun {self.name} {state}>"
