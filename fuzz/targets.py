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


TARGETS = {"wireguard": wireguard, "stun": stun, "probe": probe, "record": record, "config": conf,
           "uapi": uapi_request}
