"""Coverage-guided fuzz targets (atheris) for every parser the network or a user reaches.

Each target takes raw bytes and must raise nothing but the parser's documented error; anything
else is a crash that atheris reports with the input. Run with fuzz/run.py (make fuzz).
"""

from __future__ import annotations

import os

import atheris

with atheris.instrument_imports():  # coverage feedback from the bytecode of what these import
    from wgdisco import config
    from wgdisco.errors import ConfigError, DecodeError
    from wgdisco.proto import keys, records, uapi
    from wgdisco.proto.device import Device
    from wgdisco.proto.probe import Prober
    from wgdisco.proto.stun import StunClient


def _device(seed: int) -> Device:
    return Device(keys.clamp(bytes([seed]) * 32), rng=os.urandom, now=0.0, handshake_load_threshold=64)


RESPONDER, PEER = _device(1), _device(2)
RESPONDER.add_peer(PEER.identity.public)
PROBER = Prober(RESPONDER.identity.private, RESPONDER.identity.public, [PEER.identity.public],
                rng=os.urandom, wall=1.7e9)
LABEL = keys.key_to_base32(PEER.identity.public)
_now = [1.0]


def wireguard(data: bytes) -> None:
    _now[0] += 0.001
    assert RESPONDER.receive_datagram(data, ("192.0.2.9", 4000), _now[0]) is None
    RESPONDER.datagrams_to_send()


def stun(data: bytes) -> None:
    client = StunClient([("192.0.2.3", 3478)], rng=os.urandom)
    client.start(0.0)
    client.receive(data, ("192.0.2.3", 3478), 0.1)


def probe(data: bytes) -> None:
    _now[0] += 0.001
    received = PROBER.receive(data, ("192.0.2.9", 4000), _now[0])
    assert received.reply is None or len(received.reply) <= len(data)


def record(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    port = fdp.ConsumeIntInRange(0, 70000) if fdp.ConsumeBool() else None
    target = fdp.ConsumeUnicodeNoSurrogates(40) if fdp.ConsumeBool() else None
    addresses = [fdp.ConsumeUnicodeNoSurrogates(40) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    txt = [fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 260)) for _ in range(fdp.ConsumeIntInRange(0, 8))]
    try:
        records.record_from_dns(LABEL, port, target, addresses, txt)
    except DecodeError:
        pass


def conf(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    try:
        config.parse(text, "fuzz.conf")
    except ConfigError:
        pass


def uapi_request(data: bytes) -> None:
    try:
        uapi.parse_request(data)
    except uapi.UapiError:
        pass


# --- the compiled data path (wgdisco/io/_fastpath.c): its two parse entry points ----------------
# No coverage feedback from the C code (that needs clang's -fsanitize=fuzzer-no-link); instead the
# inputs are built to reach deep: datagrams under the held keypair's real key with fuzzed counters
# and inner packets (so the replay window, the inner IP checks and the TUN coalescing see them),
# UDP GSO batches (GRO runs on the receiving socket), and virtio-net headers with TSO super-packets.
# `make test-asan` runs these against the AddressSanitizer/UBSan build.


class _FastBed:
    """A DataPath on a socketpair "TUN" and loopback UDP, one peer with one keypair."""

    def __init__(self) -> None:
        import socket

        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

        from wgdisco.daemon.fastpath import load_module
        from wgdisco.io import udp

        module, why = load_module()
        if module is None:
            raise SystemExit(f"the compiled data path is not built: {why}")
        self.tun, self.kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        udp.enable_gro(self.sock)
        udp.enable_pktinfo(self.sock)
        self.peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.peer.bind(("127.0.0.1", 0))
        for s in (self.tun, self.kernel, self.sock, self.peer):
            s.setblocking(False)
        self.dp = module.DataPath(self.tun.fileno(), self.sock.fileno(), socket.AF_INET, True, 1420)
        self.key = bytes(range(32))
        self.aead = ChaCha20Poly1305(self.key)
        self.index = 0x11223344
        self.dp.add_keypair(self.index, 0, self.key, self.key, 0x55667788, 0, 2**60, 2**60, 1e12, True, 0,
                            bytes(8192))
        self.dp.set_routes([(bytes([10, 0, 0, 0]), 8, 0), (bytes(16), 0, 0), (bytes([192, 0, 2, 0]), 24, 1)])
        self.dp.set_peer(0, self.peer.getsockname(), None, self.index, True)
        self.dp.set_peer(1, None, None, -1, False)
        self.counter = 0

    def drain(self) -> None:
        for s in (self.kernel, self.peer):
            while True:
                try:
                    s.recv(70000)
                except BlockingIOError:
                    break
        self.dp.take_drops()


_BED: list = []


def _bed() -> _FastBed:
    if not _BED:
        _BED.append(_FastBed())
    return _BED[0]


def fastpath_udp(data: bytes) -> None:
    import struct

    bed = _bed()
    fdp = atheris.FuzzedDataProvider(data)
    datagrams = []
    for _ in range(fdp.ConsumeIntInRange(1, 6)):
        kind = fdp.ConsumeIntInRange(0, 3)
        if kind == 0:  # raw bytes
            datagrams.append(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 1600)))
            continue
        counter = fdp.ConsumeIntInRange(0, 20000) if kind == 1 else bed.counter
        bed.counter += 1
        index = bed.index if fdp.ConsumeIntInRange(0, 7) else fdp.ConsumeInt(4) & 0xFFFFFFFF
        header = struct.pack("<IIQ", 4, index, counter)
        inner = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 1500))
        if fdp.ConsumeBool():  # an IPv4 header from the peer's prefix, its length field mostly right
            length = 20 + len(inner) if fdp.ConsumeIntInRange(0, 3) else fdp.ConsumeIntInRange(0, 65535)
            inner = struct.pack("!BBHHHBBH4s4s", 0x45, 0, length & 0xFFFF, 0, 0, 64, fdp.PickValueInList([6, 17, 1]),
                                0, bytes([10, 9, 0, 1]), bytes([10, 9, 0, 2])) + inner
        sealed = header + bed.aead.encrypt(bytes(4) + header[8:], inner, None)
        if kind == 3 and sealed:  # tampered or cut
            i = fdp.ConsumeIntInRange(0, len(sealed) - 1)
            sealed = sealed[:i] if fdp.ConsumeBool() else sealed[:i] + bytes([sealed[i] ^ 0x40]) + sealed[i + 1:]
        datagrams.append(sealed)
    target = bed.sock.getsockname()
    size = len(datagrams[0])
    if len(datagrams) > 1 and size and all(len(d) == size for d in datagrams[:-1]) and len(datagrams[-1]) <= size:
        try:  # one UDP GSO batch: a GRO run at the socket
            bed.peer.sendmsg([b"".join(datagrams)], [(17, 103, struct.pack("=H", size))], 0, target)
        except OSError:
            pass
    else:
        for d in datagrams:
            try:
                bed.peer.sendto(d, target)
            except OSError:
                pass
    punted, events, _drops = bed.dp.udp_read(16)
    assert isinstance(punted, list) and isinstance(events, list)
    bed.drain()


def fastpath_tun(data: bytes) -> None:
    import struct

    bed = _bed()
    fdp = atheris.FuzzedDataProvider(data)
    for _ in range(fdp.ConsumeIntInRange(1, 4)):
        if fdp.ConsumeBool():  # a virtio-net header that looks like the kernel's
            gso_type = fdp.PickValueInList([0, 1, 4, 3, 0x81])
            vnet = struct.pack("<BBHHHH", fdp.ConsumeIntInRange(0, 1), gso_type, fdp.ConsumeIntInRange(0, 120),
                               fdp.ConsumeIntInRange(0, 2000), fdp.ConsumeIntInRange(0, 80),
                               fdp.PickValueInList([6, 16, fdp.ConsumeIntInRange(0, 70000) & 0xFFFF]))
        else:
            vnet = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 12))
        version = fdp.PickValueInList([0x45, 0x60, fdp.ConsumeInt(1) & 0xFF])
        body = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 9000))
        packet = bytes([version]) + body
        if version == 0x45 and len(packet) >= 20:  # to 10/8: the peer with a keypair
            packet = packet[:16] + bytes([10, 1, 2, 3]) + packet[20:]
        try:
            bed.kernel.send(vnet + packet)
        except OSError:
            pass
    packets, events, _drops = bed.dp.tun_read(8)
    assert isinstance(packets, list) and isinstance(events, list)
    bed.drain()


TARGETS = {"wireguard": wireguard, "stun": stun, "probe": probe, "record": record, "config": conf,
           "uapi": uapi_request, "fastpath_udp": fastpath_udp, "fastpath_tun": fastpath_tun}
