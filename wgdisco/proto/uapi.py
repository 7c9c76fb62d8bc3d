"""The cross-platform WireGuard configuration protocol (UAPI), as a pure codec.

Theory of operation
-------------------
`wg` talks to a userspace implementation over ``/var/run/wireguard/<iface>.sock``
(https://www.wireguard.com/xplatform/#configuration-protocol). A connection carries
requests, each answered before the next is read:

- ``get=1\\n\\n``: the reply is ``key=value`` lines, then ``errno=0\\n\\n``.
- ``set=1\\n`` + ``key=value`` lines + an empty line: the reply is ``errno=N\\n\\n``,
  N = 0 or a negative errno.

This module turns bytes into values and values into bytes; it never touches a socket,
the clock, or the device. The shell does::

    buf += received
    while (framed := split_request(buf)) is not None:
        request, buf = framed
        try:
            op = parse_request(request)        # GetRequest | SetRequest
        except UapiError as e:
            reply = format_set_result(e.errno) if e.reply else None
        else:
            reply = format_get(snapshot) if isinstance(op, GetRequest) else apply(op)

Behaviour mirrors wireguard-go ``device/uapi.go`` (``IpcHandle``, ``IpcSetOperation``,
``handleDeviceLine``, ``handlePeerLine``, ``IpcGetOperation``) and the error codes of
``ipc/uapi_unix.go``; value syntax mirrors Go's ``strconv.ParseUint``,
``netip.ParseAddrPort`` and ``netip.ParsePrefix``. Deliberate differences:

- A set request is parsed whole before anything is applied, so an invalid line rejects
  the request atomically (wireguard-go has already applied the lines before it).
- A set request cut short by end of stream is refused with EPROTO (wireguard-go would
  apply the part it read).
- Values must be ASCII, and an IPv6 zone printable ASCII without spaces (Go takes any bytes).

Set requests are normalised so that a device may apply each op in a fixed order and
reach the same state as applying the lines one by one: device fields, then peers in
order; within a peer, ``remove``, then ``replace_allowed_ips``, then ``allowed_ips`` in
order. A ``replace_allowed_ips`` line drops the ``allowed_ip`` lines before it, and a
``remove`` line makes the other lines of that peer moot (they are still validated).
The one effect this loses: in wireguard-go an ``allowed_ip`` line that a later
``replace_allowed_ips``/``remove``/``update_only`` line of the same block undoes has
already taken its prefix from another peer, which is left without it; here that line
is dropped and the other peer keeps the prefix. ``wg`` never sends such a block.
"""

from __future__ import annotations

import errno as _errno
import ipaddress
import re
import math
from dataclasses import dataclass

from wgdisco.errors import DecodeError, LocalError
from wgdisco.proto.keys import KEY_LEN, clamp

# Wire errno values, negative as sent; wireguard-go ipc/uapi_unix.go.
EIO = -_errno.EIO  # IpcErrorIO: a read or write failed, a line too long
EPROTO = -_errno.EPROTO  # IpcErrorProtocol: a line without '='
EINVAL = -_errno.EINVAL  # IpcErrorInvalid: a bad key or value
EADDRINUSE = -_errno.EADDRINUSE  # IpcErrorPortInUse: listen_port/fwmark could not be applied
ENOANO = -55  # IpcErrorUnknown (wireguard-go hard-codes 55)

GET_REQUEST = b"get=1\n\n"
# bufio.Scanner's MaxScanTokenSize (64 KiB) holds a line and its '\n'; longer is EIO.
MAX_LINE = 64 * 1024 - 1

ZERO_KEY = bytes(KEY_LEN)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UapiError(DecodeError):
    """A request the daemon must refuse.

    ``errno`` is the negative value to send back as ``errno=N``. ``reply`` is False when
    wireguard-go would close the connection without answering (an unknown operation
    line, a request cut short before its operation was known).
    """

    def __init__(self, errno: int, message: str, *, reply: bool = True) -> None:
        self.errno = errno
        self.message = message
        self.reply = reply
        super().__init__(f"errno={errno}: {message}")


# ---------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True)
class GetRequest:
    """``get=1``: the caller answers with ``format_get(snapshot)``."""


@dataclass(frozen=True)
class AllowedIpOp:
    """One ``allowed_ip=`` line; ``remove`` for the ``-prefix`` form (wireguard-go)."""

    network: IPNetwork  # masked, as the allowed-IPs trie stores it
    remove: bool = False


@dataclass(frozen=True)
class DeviceConfigOp:
    """The device lines of a set request; None / False means "leave as is".

    ``private_key`` is already clamped; all zeros means "clear the private key"
    (``NoisePrivateKey.FromMaybeZeroHex``). ``replace_peers`` removes every peer
    before the peer ops are applied.
    """

    private_key: bytes | None = None
    listen_port: int | None = None
    fwmark: int | None = None
    replace_peers: bool = False


@dataclass(frozen=True)
class PeerConfigOp:
    """The lines from one ``public_key=`` line to the next.

    Apply as: if ``remove``, remove the peer and stop. Else, if the peer does not exist:
    skip it when ``update_only``, create it otherwise. Then set ``preshared_key``
    (all zeros clears it), ``endpoint`` (host, port; host canonical, an IPv6 host may
    carry ``%zone``), ``persistent_keepalive_interval`` (seconds, 0 = off); if
    ``replace_allowed_ips``, drop its allowed IPs; then apply ``allowed_ips`` in order.
    A peer whose key is the device's own public key is ignored (wireguard-go "dummy").
    """

    public_key: bytes
    remove: bool = False
    update_only: bool = False
    preshared_key: bytes | None = None
    endpoint: tuple[str, int] | None = None
    persistent_keepalive_interval: int | None = None
    replace_allowed_ips: bool = False
    allowed_ips: tuple[AllowedIpOp, ...] = ()
    protocol_version: int | None = None


@dataclass(frozen=True)
class SetRequest:
    """``set=1``: device ops, then peer ops in the order they came."""

    device: DeviceConfigOp = DeviceConfigOp()
    peers: tuple[PeerConfigOp, ...] = ()


@dataclass(frozen=True)
class PeerSnapshot:
    """One peer as ``get=1`` reports it.

    ``endpoint`` is (host, port) with the host an IP literal (IPv6 possibly with
    ``%zone``), or None. ``last_handshake`` is wall-clock seconds since the epoch of the
    last completed handshake, 0 for never. ``preshared_key`` None means none (all zeros
    on the wire). ``allowed_ips``: ip_network values (CIDR strings also do), in the
    order to report them.
    """

    public_key: bytes
    preshared_key: bytes | None = None
    endpoint: tuple[str, int] | None = None
    last_handshake: float = 0.0
    tx_bytes: int = 0
    rx_bytes: int = 0
    persistent_keepalive_interval: int = 0
    allowed_ips: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True)
class DeviceSnapshot:
    """The device as ``get=1`` reports it. ``listen_port`` is the bound port, 0 if none."""

    private_key: bytes | None = None
    listen_port: int = 0
    fwmark: int = 0
    peers: tuple[PeerSnapshot, ...] = ()


# ---------------------------------------------------------------------------------------
# Framing


def split_request(buffer: bytes) -> tuple[bytes, bytes] | None:
    """Cut the first complete request off ``buffer``: (request, rest), or None if more
    bytes are needed.

    Raises UapiError when the stream can no longer be framed: an operation line other
    than ``get=1``/``set=1`` (``reply`` False: close, as wireguard-go does), or a line
    longer than MAX_LINE (EIO). After either, the shell should close the connection.
    """
    head = bytes(buffer[:6])
    if not (b"get=1\n".startswith(head) or b"set=1\n".startswith(head)):
        raise UapiError(EPROTO, f"invalid UAPI operation {_show(head)}", reply=False)
    if len(head) < 6:
        return None
    if head == b"get=1\n":
        if len(buffer) < 7:
            return None
        return bytes(buffer[:7]), bytes(buffer[7:])
    start = 6
    while True:
        end = buffer.find(b"\n", start)
        if end < 0:
            if len(buffer) - start > MAX_LINE:
                raise UapiError(EIO, "line too long")
            return None
        if end - start > MAX_LINE:
            raise UapiError(EIO, "line too long")
        line = buffer[start:end]
        if line == b"" or line == b"\r":  # bufio.ScanLines drops one trailing '\r'
            return bytes(buffer[: end + 1]), bytes(buffer[end + 1 :])
        start = end + 1


# ---------------------------------------------------------------------------------------
# Requests


def parse_request(data: bytes) -> GetRequest | SetRequest:
    """Parse exactly one request (as cut by split_request). Raises UapiError only."""
    framed = split_request(data)
    if framed is None:
        if data.startswith(b"set=1\n"):
            raise UapiError(EPROTO, "set request not terminated by an empty line")
        # wireguard-go returns without a reply when the stream ends here
        raise UapiError(EPROTO, "request cut short", reply=False)
    request, rest = framed
    if rest:
        raise UapiError(EPROTO, "bytes after the end of the request")
    if request.startswith(b"get=1\n"):
        if request[6:] != b"\n":
            raise UapiError(EINVAL, f"trailing character in UAPI get: {_show(request[6:])}")
        return GetRequest()
    return _parse_set(request[6:])


def _parse_set(body: bytes) -> SetRequest:
    device: dict[str, object] = {}
    peers: list[PeerConfigOp] = []
    peer: _PeerBuilder | None = None
    for raw in body.split(b"\n")[:-1]:
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if raw == b"":
            break  # split_request guarantees this is the last line
        key, value = _key_value(raw)
        if key == "public_key":
            if peer is not None:
                peers.append(peer.build())
            peer = _PeerBuilder(_parse_key(value, "public_key"))
        elif peer is None:
            _device_line(device, key, value)
        else:
            peer.line(key, value)
    if peer is not None:
        peers.append(peer.build())
    return SetRequest(DeviceConfigOp(**device), tuple(peers))  # type: ignore[arg-type]


def _device_line(device: dict[str, object], key: str, value: str) -> None:
    # wireguard-go handleDeviceLine
    if key == "private_key":
        k = _parse_key(value, key)
        device[key] = k if k == ZERO_KEY else clamp(k)
    elif key == "listen_port":
        device[key] = _parse_uint(value, 16, key)
    elif key == "fwmark":
        device[key] = _parse_uint(value, 32, key)
    elif key == "replace_peers":
        device[key] = _parse_true(value, key)
    else:
        raise UapiError(EINVAL, f"invalid UAPI device key: {key!r}")


class _PeerBuilder:
    def __init__(self, public_key: bytes) -> None:
        self.public_key = public_key
        self.remove = False
        self.update_only = False
        self.preshared_key: bytes | None = None
        self.endpoint: tuple[str, int] | None = None
        self.keepalive: int | None = None
        self.replace_allowed_ips = False
        self.allowed_ips: list[AllowedIpOp] = []
        self.protocol_version: int | None = None

    def line(self, key: str, value: str) -> None:
        # wireguard-go handlePeerLine
        if key == "update_only":
            self.update_only = _parse_true(value, key)
        elif key == "remove":
            self.remove = _parse_true(value, key)
        elif key == "preshared_key":
            self.preshared_key = _parse_key(value, key)
        elif key == "endpoint":
            self.endpoint = parse_endpoint(value)
        elif key == "persistent_keepalive_interval":
            self.keepalive = _parse_uint(value, 16, key)
        elif key == "replace_allowed_ips":
            _parse_true(value, key)
            self.replace_allowed_ips = True
            self.allowed_ips.clear()  # the lines before it are undone by it
        elif key == "allowed_ip":
            remove = value.startswith("-")
            network = parse_prefix(value[1:] if remove else value)
            self.allowed_ips.append(AllowedIpOp(network, remove))
        elif key == "protocol_version":
            if value != "1":
                raise UapiError(EINVAL, f"invalid protocol version: {value!r}")
            self.protocol_version = 1
        else:
            raise UapiError(EINVAL, f"invalid UAPI peer key: {key!r}")

    def build(self) -> PeerConfigOp:
        if self.remove:
            return PeerConfigOp(self.public_key, remove=True)
        return PeerConfigOp(
            public_key=self.public_key,
            update_only=self.update_only,
            preshared_key=self.preshared_key,
            endpoint=self.endpoint,
            persistent_keepalive_interval=self.keepalive,
            replace_allowed_ips=self.replace_allowed_ips,
            allowed_ips=tuple(self.allowed_ips),
            protocol_version=self.protocol_version,
        )


def format_set_request(request: SetRequest) -> bytes:
    """The bytes of a set request, in the order wireguard-tools ``ipc-uapi.h`` writes
    them (for talking to another UAPI implementation, and for round trips)."""
    out: list[str] = ["set=1"]
    d = request.device
    if d.private_key is not None:
        out.append(f"private_key={_key_hex(d.private_key)}")
    if d.listen_port is not None:
        out.append(f"listen_port={_check_uint(d.listen_port, 16, 'listen_port')}")
    if d.fwmark is not None:
        out.append(f"fwmark={_check_uint(d.fwmark, 32, 'fwmark')}")
    if d.replace_peers:
        out.append("replace_peers=true")
    for p in request.peers:
        out.append(f"public_key={_key_hex(p.public_key)}")
        if p.remove:
            out.append("remove=true")
            continue
        if p.update_only:
            out.append("update_only=true")
        if p.protocol_version is not None:
            if p.protocol_version != 1:
                raise LocalError("protocol_version must be 1")
            out.append("protocol_version=1")
        if p.preshared_key is not None:
            out.append(f"preshared_key={_key_hex(p.preshared_key)}")
        if p.endpoint is not None:
            out.append(f"endpoint={format_endpoint(*p.endpoint)}")
        if p.persistent_keepalive_interval is not None:
            pka = _check_uint(p.persistent_keepalive_interval, 16, "persistent_keepalive_interval")
            out.append(f"persistent_keepalive_interval={pka}")
        if p.replace_allowed_ips:
            out.append("replace_allowed_ips=true")
        for a in p.allowed_ips:
            out.append(f"allowed_ip={'-' if a.remove else ''}{_format_network(a.network)}")
    return ("\n".join(out) + "\n\n").encode("ascii")


def format_set_result(errno: int) -> bytes:
    """The reply to a set request (or a refused get): ``errno=N\\n\\n``, N = 0 or < 0."""
    if type(errno) is not int or not -(2**31) <= errno <= 0:
        raise LocalError(f"a UAPI errno is 0 or a negative int32, got {errno!r}")
    return f"errno={errno}\n\n".encode("ascii")


# ---------------------------------------------------------------------------------------
# Get


def format_get(device: DeviceSnapshot) -> bytes:
    """The reply to ``get=1``, field for field as wireguard-go ``IpcGetOperation`` writes
    it, then ``errno=0`` and the empty line (``IpcHandle``)."""
    out: list[str] = []
    if device.private_key is not None and device.private_key != ZERO_KEY:
        out.append(f"private_key={_key_hex(device.private_key)}")
    if _check_uint(device.listen_port, 16, "listen_port"):
        out.append(f"listen_port={device.listen_port}")
    if _check_uint(device.fwmark, 32, "fwmark"):
        out.append(f"fwmark={device.fwmark}")
    for p in device.peers:
        sec, nsec = _split_time(p.last_handshake)
        out.append(f"public_key={_key_hex(p.public_key)}")
        psk = ZERO_KEY if p.preshared_key is None else p.preshared_key
        out.append(f"preshared_key={_key_hex(psk)}")
        out.append("protocol_version=1")
        if p.endpoint is not None:
            out.append(f"endpoint={format_endpoint(*p.endpoint)}")
        out.append(f"last_handshake_time_sec={sec}")
        out.append(f"last_handshake_time_nsec={nsec}")
        out.append(f"tx_bytes={_check_uint(p.tx_bytes, 64, 'tx_bytes')}")
        out.append(f"rx_bytes={_check_uint(p.rx_bytes, 64, 'rx_bytes')}")
        pka = _check_uint(p.persistent_keepalive_interval, 16, "persistent_keepalive_interval")
        out.append(f"persistent_keepalive_interval={pka}")
        for network in p.allowed_ips:
            out.append(f"allowed_ip={_format_network(network)}")
    out.append("errno=0")
    return ("\n".join(out) + "\n\n").encode("ascii")


def parse_get_response(data: bytes) -> DeviceSnapshot:
    """Read a ``get=1`` reply (the client side, as wireguard-tools does).

    Unknown keys are skipped, as ``wg`` skips them. Raises UapiError with the reported
    errno when it is not 0, EPROTO when the reply is malformed.
    """
    if not data.endswith(b"\n\n"):
        raise UapiError(EPROTO, "get reply not terminated by an empty line")
    dev: dict[str, object] = {}
    peers: list[PeerSnapshot] = []
    peer: dict[str, object] | None = None
    errno: int | None = None

    def close_peer() -> None:
        if peer is not None:
            sec, nsec = peer.pop("_sec", 0), peer.pop("_nsec", 0)
            last = sec + nsec / 1e9  # type: ignore[operator]
            peers.append(PeerSnapshot(last_handshake=last, **peer))  # type: ignore[arg-type]

    for raw in data[:-2].split(b"\n"):
        key, value = _key_value(raw, EPROTO)
        try:
            if key == "errno":
                errno = _parse_int(value)
            elif key == "public_key":
                close_peer()
                peer = {"public_key": _parse_key(value, key), "allowed_ips": ()}
            elif peer is None:
                if key == "private_key":
                    dev[key] = _parse_key(value, key)
                elif key == "listen_port":
                    dev[key] = _parse_uint(value, 16, key)
                elif key == "fwmark":
                    dev[key] = _parse_uint(value, 32, key)
            elif key == "preshared_key":
                psk = _parse_key(value, key)
                peer[key] = None if psk == ZERO_KEY else psk
            elif key == "endpoint":
                peer[key] = parse_endpoint(value)
            elif key == "last_handshake_time_sec":
                peer["_sec"] = _parse_uint(value, 63, key)
            elif key == "last_handshake_time_nsec":
                peer["_nsec"] = _parse_uint(value, 63, key)
            elif key in ("tx_bytes", "rx_bytes"):
                peer[key] = _parse_uint(value, 64, key)
            elif key == "persistent_keepalive_interval":
                peer[key] = _parse_uint(value, 16, key)
            elif key == "allowed_ip":
                peer["allowed_ips"] += (parse_prefix(value),)  # type: ignore[operator]
        except UapiError as e:
            raise UapiError(EPROTO, f"bad get reply line {_show(raw)}: {e}") from None
    close_peer()
    if errno is None:
        raise UapiError(EPROTO, "get reply without errno")
    if errno != 0:
        # wireguard-go never fails a get; wg reads a positive number here, so take either
        raise UapiError(-abs(errno), f"the device answered errno={errno}")
    return DeviceSnapshot(peers=tuple(peers), **dev)  # type: ignore[arg-type]


def _split_time(t: float) -> tuple[int, int]:
    """Wall seconds → (sec, nsec), as lastHandshakeNano / 1e9 and % 1e9."""
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
        raise LocalError(f"last_handshake is a non-negative number of seconds, got {t!r}")
    sec = int(t)
    nsec = round((t - sec) * 1_000_000_000)
    if nsec >= 1_000_000_000:
        sec, nsec = sec + 1, nsec - 1_000_000_000
    return sec, nsec


# ---------------------------------------------------------------------------------------
# Value syntax (Go's strconv and net/netip)

_DIGITS = frozenset("0123456789")
_HEX = frozenset("0123456789abcdefABCDEF")
# A zone (interface name or index) is non-empty printable ASCII without spaces; Go takes
# any bytes, but Linux interface names never hold spaces and a newline would end the line.
_ZONE = frozenset(chr(c) for c in range(0x21, 0x7F))


def _parse_key(value: str, name: str) -> bytes:
    """64 hex digits, either case (Go hex.DecodeString), exactly 32 bytes."""
    if len(value) != 2 * KEY_LEN or not _HEX.issuperset(value):
        raise UapiError(EINVAL, f"{name}: a key is {2 * KEY_LEN} hex digits")
    return bytes.fromhex(value)


def _parse_uint(value: str, bits: int, name: str) -> int:
    """strconv.ParseUint(value, 10, bits): ASCII digits only, no sign, in range."""
    if not value or not _DIGITS.issuperset(value):
        raise UapiError(EINVAL, f"{name}: not a decimal number: {value!r}")
    digits = value.lstrip("0") or "0"  # leading zeros are fine for ParseUint
    if len(digits) > 20 or int(digits) >= 1 << bits:
        raise UapiError(EINVAL, f"{name}: out of range: {value!r}")
    return int(digits)


def _parse_int(value: str) -> int:
    neg = value.startswith("-")
    n = _parse_uint(value[1:] if neg else value, 63, "errno")
    return -n if neg else n


def _parse_true(value: str, name: str) -> bool:
    if value != "true":
        raise UapiError(EINVAL, f"{name}: invalid value {value!r}")
    return True


def _parse_addr(text: str) -> tuple[IPAddress, str | None]:
    """netip.ParseAddr: an IPv4 or IPv6 literal; IPv6 may carry a non-empty %zone."""
    for ch in text:  # netip.ParseAddr picks the family by the first of . : %
        if ch == ".":
            return _parse_ipv4(text), None
        if ch == ":":
            addr, pct, zone = text.partition("%")
            if pct and not _ZONE.issuperset(zone or "\n"):
                raise UapiError(EINVAL, f"bad IPv6 zone in {text!r}")
            try:
                return ipaddress.IPv6Address(addr), (zone if pct else None)
            except ValueError:
                raise UapiError(EINVAL, f"invalid IPv6 address {text!r}") from None
        if ch == "%":
            break
    raise UapiError(EINVAL, f"invalid IP address {text!r}")


_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"  # 0..255, ASCII digits, no leading zero
_IPV4 = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")


def _parse_ipv4(text: str) -> ipaddress.IPv4Address:
    """Four decimal fields 0..255, no leading zeros (netip.ParseAddr, and Python's ipaddress).
    By regex: ipaddress's own parser is most of a large `wg setconf`'s time."""
    if _IPV4.fullmatch(text) is None:
        raise UapiError(EINVAL, f"invalid IPv4 address {text!r}")
    a, b, c, d = text.split(".")
    return ipaddress.IPv4Address(int(a) << 24 | int(b) << 16 | int(c) << 8 | int(d))


def _format_addr(addr: IPAddress, zone: str | None = None) -> str:
    """netip.Addr.String(): RFC 5952, an IPv4-mapped address as ::ffff:a.b.c.d."""
    if addr.version == 4:
        return str(addr)
    mapped = addr.ipv4_mapped  # type: ignore[union-attr]
    s = f"::ffff:{mapped}" if mapped is not None else str(addr)
    return f"{s}%{zone}" if zone else s


def parse_endpoint(value: str) -> tuple[str, int]:
    """netip.ParseAddrPort: ``a.b.c.d:port`` or ``[v6addr%zone]:port`` → (host, port),
    the host in canonical form without brackets."""
    i = value.rfind(":")
    if i < 0:
        raise UapiError(EINVAL, f"endpoint {value!r}: not an ip:port")
    host, port_s = value[:i], value[i + 1 :]
    if not host or not port_s:
        raise UapiError(EINVAL, f"endpoint {value!r}: no IP or no port")
    bracketed = host.startswith("[")
    if bracketed:
        if len(host) < 2 or not host.endswith("]"):
            raise UapiError(EINVAL, f"endpoint {value!r}: missing ]")
        host = host[1:-1]
    port = _parse_uint(port_s, 16, "endpoint port")
    addr, zone = _parse_addr(host)
    if bracketed and addr.version == 4:
        raise UapiError(EINVAL, f"endpoint {value!r}: brackets are for IPv6 only")
    if not bracketed and addr.version == 6:
        raise UapiError(EINVAL, f"endpoint {value!r}: IPv6 needs brackets")
    return _format_addr(addr, zone), port


def format_endpoint(host: str, port: int) -> str:
    """netip.AddrPort.String(): ``a.b.c.d:port`` or ``[v6]:port``."""
    if not isinstance(host, str):
        raise LocalError(f"an endpoint host is an IP literal string, got {host!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        addr, zone = _parse_addr(host)
    except UapiError as e:
        raise LocalError(f"bad endpoint host: {e.message}") from None
    port = _check_uint(port, 16, "endpoint port")
    text = _format_addr(addr, zone)
    return f"[{text}]:{port}" if addr.version == 6 else f"{text}:{port}"


def parse_prefix(value: str) -> IPNetwork:
    """netip.ParsePrefix, then masked (as the allowed-IPs trie stores it)."""
    i = value.rfind("/")
    if i < 0:
        raise UapiError(EINVAL, f"allowed_ip {value!r}: no '/'")
    addr, zone = _parse_addr(value[:i])
    if zone is not None:
        raise UapiError(EINVAL, f"allowed_ip {value!r}: a zone is not allowed in a prefix")
    bits_s = value[i + 1 :]
    if not bits_s or not _DIGITS.issuperset(bits_s) or (len(bits_s) > 1 and bits_s[0] == "0"):
        raise UapiError(EINVAL, f"allowed_ip {value!r}: bad bits after slash")
    bits = int(bits_s) if len(bits_s) <= 3 else 999
    if bits > addr.max_prefixlen:
        raise UapiError(EINVAL, f"allowed_ip {value!r}: prefix length out of range")
    # From the integer, masked here: an address object would be formatted and parsed again
    # (a `wg setconf` with 130,000 allowed IPs spends most of its time on that).
    host = addr.max_prefixlen - bits
    number = int(addr) >> host << host
    return ipaddress.IPv4Network((number, bits)) if addr.version == 4 else ipaddress.IPv6Network((number, bits))


def _format_network(network: IPNetwork | str) -> str:
    """netip.Prefix.String() of the masked prefix."""
    if isinstance(network, str):
        try:
            network = parse_prefix(network)
        except UapiError as e:
            raise LocalError(f"bad allowed IP: {e.message}") from None
    if not isinstance(network, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        raise LocalError(f"an allowed IP is an ip_network, got {network!r}")
    return f"{_format_addr(network.network_address)}/{network.prefixlen}"


def _key_hex(key: bytes) -> str:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_LEN:
        raise LocalError(f"a key is {KEY_LEN} bytes, got {key!r}")
    return bytes(key).hex()


def _check_uint(n: int, bits: int, name: str) -> int:
    if type(n) is not int or not 0 <= n < 1 << bits:
        raise LocalError(f"{name} is a {bits}-bit unsigned int, got {n!r}")
    return n


def _show(raw: bytes) -> str:
    return repr(bytes(raw[:80]))[1:]


def _key_value(raw: bytes, non_ascii: int = EINVAL) -> tuple[str, str]:
    """One protocol line ``key=value``: the key (latin-1, only ever compared and shown) and
    the value, which must be ASCII (wireguard-go: "failed to parse line"; a non-ASCII value
    is ``non_ascii``: EINVAL in a request, EPROTO in a get reply)."""
    key_b, eq, value_b = raw.partition(b"=")
    if not eq:
        raise UapiError(EPROTO, f"failed to parse line {_show(raw)}")
    key = key_b.decode("latin-1")
    try:
        return key, value_b.decode("ascii")
    except UnicodeDecodeError:
        raise UapiError(non_ascii, f"non-ASCII value for {key!r}") from None
