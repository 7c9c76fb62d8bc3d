"""Recompute handshake.json with an independent Noise implementation (`noiseprotocol`).

WireGuard's handshake is Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s with prologue = the
identifier and payload = TAI64N (whitepaper §5.4.2), so the Noise library must produce
the same ephemeral/static/timestamp and ephemeral/empty fields. The WireGuard framing
(type, indices) and mac1 are recomputed here from hashlib alone. Nothing of wgdisco is used.

Runs in the suite as tests/unit/test_vectors_crosscheck.py (`noiseprotocol` is in the test extras),
or alone: .venv/bin/python tests/vectors/crosscheck_noiseprotocol.py
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import struct
import sys

from noise.connection import Keypair, NoiseConnection

HERE = pathlib.Path(__file__).parent
NAME = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
PROLOGUE = b"WireGuard v1 zx2c4 Jason@zx2c4.com"


def conn(initiator: bool, static: bytes, psk: bytes, ephemeral: bytes, remote: bytes | None):
    c = NoiseConnection.from_name(NAME)
    c.set_psks(psk=psk)
    c.set_prologue(PROLOGUE)
    c.set_keypair_from_private_bytes(Keypair.STATIC, static)
    c.set_keypair_from_private_bytes(Keypair.EPHEMERAL, ephemeral)
    if remote is not None:
        c.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, remote)
    c.set_as_initiator() if initiator else c.set_as_responder()
    c.start_handshake()
    return c


def tai64n(wall: float) -> bytes:
    secs = int(wall // 1)
    nano = int(round((wall - secs) * 1e9)) & 0xFF000000  # wireguard-go whitening
    return struct.pack(">QI", 0x400000000000000A + secs, nano)


def mac1(peer_public: bytes, body: bytes) -> bytes:
    key = hashlib.blake2s(b"mac1----" + peer_public).digest()
    return hashlib.blake2s(body, key=key, digest_size=16).digest()


def check(v: dict) -> list[str]:
    """What in vector ``v`` differs from what noiseprotocol computes (empty: nothing)."""
    try:
        return _check(v)
    except Exception as e:  # noqa: BLE001 - e.g. InvalidTag: the library refuses a message; a mismatch too
        return [f"{v['name']}: noiseprotocol refused the transcript: {type(e).__name__} {e}"]


def _check(v: dict) -> list[str]:
    h = bytes.fromhex
    psk = h(v["preshared_key"])
    ini = conn(True, h(v["initiator_private"]), psk, h(v["initiator_ephemeral"]), h(v["responder_public"]))
    res = conn(False, h(v["responder_private"]), psk, h(v["responder_ephemeral"]), None)
    problems: list[str] = []

    def expect(what: str, got: bytes, want: bytes) -> None:
        if got != want:
            problems.append(f"{v['name']}: {what}: {got.hex()} != {want.hex()}")

    expect("initiator public", ini.noise_protocol.keypairs["s"].public_bytes, h(v["initiator_public"]))
    expect("responder public", res.noise_protocol.keypairs["s"].public_bytes, h(v["responder_public"]))
    symmetric = ini.noise_protocol.symmetric_state  # kept: the library drops it once the handshake is done
    noise1 = bytes(ini.write_message(tai64n(v["wall"])))
    body1 = struct.pack("<II", 1, v["initiator_index"]) + noise1
    init = h(v["initiation"])
    expect("initiation body", body1, init[:116])
    expect("initiation mac1", mac1(h(v["responder_public"]), body1), init[116:132])
    expect("initiation mac2", bytes(16), init[132:])
    expect("timestamp", bytes(res.read_message(noise1)), tai64n(v["wall"]))
    expect("hash after initiation", symmetric.h, h(v["hash_after_initiation"]))
    expect("chaining key after initiation", symmetric.ck, h(v["chaining_key_after_initiation"]))

    noise2 = bytes(res.write_message(b""))
    body2 = struct.pack("<III", 2, v["responder_index"], v["initiator_index"]) + noise2
    resp = h(v["response"])
    expect("response body", body2, resp[:60])
    expect("response mac1", mac1(h(v["initiator_public"]), body2), resp[60:76])
    expect("response mac2", bytes(16), resp[76:])
    ini.read_message(noise2)
    expect("handshake hash", ini.get_handshake_hash(), h(v["hash_after_response"]))
    expect("chaining key after response", symmetric.ck, h(v["chaining_key_after_response"]))
    # Split() (Noise §5.2): the initiator sends with the first key (whitepaper §5.4.5)
    expect("initiator send key", ini.noise_protocol.cipher_state_encrypt.k, h(v["initiator_send_key"]))
    expect("initiator receive key", ini.noise_protocol.cipher_state_decrypt.k, h(v["initiator_receive_key"]))

    keepalive = struct.pack("<IIQ", 4, v["responder_index"], 0) + bytes(ini.encrypt(b""))
    expect("keepalive", keepalive, h(v["initiator_keepalive"]))
    return problems


def main() -> int:
    vectors = json.loads((HERE / "handshake.json").read_text())["vectors"]
    problems = [p for v in vectors for p in check(v)]
    for p in problems:
        print("FAIL:", p)
    print(f"{len(vectors)} vectors, {len(problems)} mismatches")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
