"""Write tests/vectors/handshake.json: deterministic WireGuard handshake transcripts.

Run: .venv/bin/python tests/vectors/make_handshake_vectors.py

Inputs are fixed (keys = clamp(BLAKE2s(label)), ephemerals, wall time, indices); outputs
are the exact message bytes (with mac1 as CookieGenerator fills it), the transcript
hash / chaining key after each message, the session keys and an encrypted keepalive.
The outputs were checked against independent implementations:
- interop_wireguard_go.py sends the stored initiation to a real wireguard-go, which accepts it;
- crosscheck_noiseprotocol.py recomputes the Noise messages with the `noiseprotocol` package.
"""

from __future__ import annotations

import json
import pathlib

from wgdisco.proto.cookie import CookieGenerator
from wgdisco.proto.crypto import HASH, aead_encrypt
from wgdisco.proto.keys import clamp
from wgdisco.proto.noise import (
    Handshake,
    StaticIdentity,
    begin_symmetric_session,
    consume_initiation,
    consume_response,
    create_initiation,
    create_response,
    pack_transport_header,
)

HERE = pathlib.Path(__file__).parent


def fixed_key(label: str) -> bytes:
    return clamp(HASH(label.encode()))


def inputs(name: str, preshared_key: bytes) -> dict:
    return {
        "name": name,
        "initiator_private": fixed_key("wgdisco vector initiator static").hex(),
        "responder_private": fixed_key("wgdisco vector responder static").hex(),
        "initiator_ephemeral": fixed_key(f"wgdisco vector {name} initiator ephemeral").hex(),
        "responder_ephemeral": fixed_key(f"wgdisco vector {name} responder ephemeral").hex(),
        "preshared_key": preshared_key.hex(),
        "wall": 1700000000.5,
        "initiator_index": 0x11223344,
        "responder_index": 0x55667788,
    }


def run(v: dict) -> dict:
    """Play the transcript described by the inputs of `v`; return the outputs."""
    ini = StaticIdentity(bytes.fromhex(v["initiator_private"]))
    res = StaticIdentity(bytes.fromhex(v["responder_private"]))
    psk = bytes.fromhex(v["preshared_key"])
    hs_i = Handshake(ini, res.public, psk)
    hs_r = Handshake(res, ini.public, psk)

    msg1 = create_initiation(
        ini,
        hs_i,
        sender_index=v["initiator_index"],
        ephemeral_private=bytes.fromhex(v["initiator_ephemeral"]),
        wall=v["wall"],
    )
    msg1 = CookieGenerator(res.public).add_macs(msg1, now=0.0)
    consume_initiation(res, msg1, lambda pk: hs_r if pk == ini.public else None, now=0.0)
    after1 = (hs_i.hash, hs_i.chaining_key)

    msg2 = create_response(
        res,
        hs_r,
        sender_index=v["responder_index"],
        ephemeral_private=bytes.fromhex(v["responder_ephemeral"]),
    )
    msg2 = CookieGenerator(ini.public).add_macs(msg2, now=0.0)
    consume_response(ini, msg2, lambda idx: hs_i if idx == hs_i.local_index else None)
    after2 = (hs_i.hash, hs_i.chaining_key)

    keys = begin_symmetric_session(hs_i, now=0.0)
    keepalive = pack_transport_header(keys.remote_index, 0) + aead_encrypt(keys.send_key, 0, b"", b"")
    return {
        "initiator_public": ini.public.hex(),
        "responder_public": res.public.hex(),
        "initiation": msg1.hex(),
        "hash_after_initiation": after1[0].hex(),
        "chaining_key_after_initiation": after1[1].hex(),
        "response": msg2.hex(),
        "hash_after_response": after2[0].hex(),
        "chaining_key_after_response": after2[1].hex(),
        "initiator_send_key": keys.send_key.hex(),
        "initiator_receive_key": keys.receive_key.hex(),
        "initiator_keepalive": keepalive.hex(),
    }


def main() -> None:
    vectors = []
    for name, psk in (("no-psk", bytes(32)), ("psk", HASH(b"wgdisco vector preshared key"))):
        v = inputs(name, psk)
        v.update(run(v))
        vectors.append(v)
    doc = {
        "description": "WireGuard handshake transcripts (whitepaper 5.4); see make_handshake_vectors.py",
        "vectors": vectors,
    }
    (HERE / "handshake.json").write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
