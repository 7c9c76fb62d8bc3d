"""wgdisco.proto.noise: in-memory handshakes, stored transcripts, tampering, replay, flood."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wgdisco.errors import AuthError, DecodeError, LocalError
from wgdisco.proto.cookie import CookieChecker, CookieGenerator
from wgdisco.proto.crypto import HASH, aead_decrypt, aead_encrypt
from wgdisco.proto.keys import clamp, public_key
from wgdisco.proto.noise import (
    HANDSHAKE_INITIATION_RATE,
    INITIAL_CHAIN_KEY,
    INITIAL_HASH,
    MESSAGE_COOKIE_REPLY_SIZE,
    MESSAGE_INITIATION_SIZE,
    MESSAGE_RESPONSE_SIZE,
    Handshake,
    HandshakeState,
    MessageCookieReply,
    MessageInitiation,
    MessageResponse,
    MessageTransport,
    StaticIdentity,
    begin_symmetric_session,
    consume_initiation,
    consume_response,
    create_initiation,
    create_response,
    message_type,
    pack_transport_header,
)

VECTORS = json.loads((Path(__file__).resolve().parents[1] / "vectors" / "handshake.json").read_text())["vectors"]
WALL = 1_700_000_000.0
PSK = HASH(b"test psk")


def key(label: str) -> bytes:
    return clamp(HASH(label.encode()))


@dataclass
class Pair:
    """An initiator and a responder that know each other, and their per-peer state."""

    ini: StaticIdentity
    res: StaticIdentity
    hs_i: Handshake  # the initiator's view of the responder
    hs_r: Handshake  # the responder's view of the initiator

    def peer_of_res(self, pk: bytes) -> Handshake | None:
        return self.hs_r if pk == self.ini.public else None

    def index_of_ini(self, index: int) -> Handshake | None:
        return self.hs_i if index == self.hs_i.local_index else None

    def initiation(self, *, wall: float = WALL, eph: str = "ei") -> bytes:
        msg = create_initiation(self.ini, self.hs_i, sender_index=1, ephemeral_private=key(eph), wall=wall)
        return CookieGenerator(self.res.public).add_macs(msg, now=0.0)

    def response(self) -> bytes:
        msg = create_response(self.res, self.hs_r, sender_index=2, ephemeral_private=key("er"))
        return CookieGenerator(self.ini.public).add_macs(msg, now=0.0)


def pair(psk_i: bytes = bytes(32), psk_r: bytes | None = None) -> Pair:
    ini, res = StaticIdentity(key("initiator")), StaticIdentity(key("responder"))
    psk_r = psk_i if psk_r is None else psk_r
    return Pair(ini, res, Handshake(ini, res.public, psk_i), Handshake(res, ini.public, psk_r))


def same_transcript(p: Pair) -> bool:
    return p.hs_i.hash == p.hs_r.hash and p.hs_i.chaining_key == p.hs_r.chaining_key


# --- constants and precomputation ---


def test_initial_chain_key_and_hash() -> None:
    # whitepaper §5.4.2; the values wireguard-go and the kernel compute at start-up
    assert INITIAL_CHAIN_KEY.hex() == "60e26daef327efc02ec335e2a025d2d016eb4206f87277f52d38d1988b78cd36"
    assert INITIAL_HASH.hex() == "2211b361081ac566691243db458ad5322d9c6c662293e8b70ee19c65ba079ef3"


def test_identity_and_handshake_precompute_mac_keys() -> None:
    p = pair()
    assert p.res.mac1_key == HASH(b"mac1----", p.res.public)
    assert p.res.cookie_key == HASH(b"cookie--", p.res.public)
    assert (p.hs_i.remote_mac1_key, p.hs_i.remote_cookie_key) == (p.res.mac1_key, p.res.cookie_key)
    assert p.hs_i.precomputed_static_static == p.hs_r.precomputed_static_static != bytes(32)


def test_clear_forgets_handshake() -> None:
    p = pair()
    p.initiation()
    p.hs_i.clear()
    assert p.hs_i.state is HandshakeState.ZEROED and p.hs_i.local_index == 0
    assert p.hs_i.hash == p.hs_i.chaining_key == p.hs_i.local_ephemeral == bytes(32)


# --- the happy path (whitepaper §5.4.2–§5.4.5) ---


@pytest.mark.parametrize("psk", [bytes(32), PSK], ids=["no-psk", "psk"])
def test_handshake_in_memory(psk: bytes) -> None:
    p = pair(psk)
    msg1 = p.initiation()
    assert len(msg1) == MESSAGE_INITIATION_SIZE and p.hs_i.state is HandshakeState.INITIATION_CREATED
    assert consume_initiation(p.res, msg1, p.peer_of_res, now=0.0) is p.hs_r
    assert p.hs_r.state is HandshakeState.INITIATION_CONSUMED and same_transcript(p)
    assert p.hs_r.remote_index == 1 and p.hs_r.remote_ephemeral == msg1[8:40]

    msg2 = p.response()
    assert len(msg2) == MESSAGE_RESPONSE_SIZE and p.hs_r.state is HandshakeState.RESPONSE_CREATED
    assert consume_response(p.ini, msg2, p.index_of_ini) is p.hs_i
    assert p.hs_i.state is HandshakeState.RESPONSE_CONSUMED and same_transcript(p)

    ki = begin_symmetric_session(p.hs_i, now=5.0)
    kr = begin_symmetric_session(p.hs_r, now=6.0)
    assert (ki.send_key, ki.receive_key) == (kr.receive_key, kr.send_key)
    assert ki.send_key != ki.receive_key
    assert (ki.is_initiator, kr.is_initiator) == (True, False)
    assert (ki.local_index, ki.remote_index, kr.local_index, kr.remote_index) == (1, 2, 2, 1)
    assert (ki.created, kr.created) == (5.0, 6.0)
    sealed = aead_encrypt(ki.send_key, 0, b"hello", b"")
    assert aead_decrypt(kr.receive_key, 0, sealed, b"") == b"hello"


def test_session_zeroes_handshake_secrets() -> None:
    p = pair()
    consume_initiation(p.res, p.initiation(), p.peer_of_res, now=0.0)
    consume_response(p.ini, p.response(), p.index_of_ini)
    for hs in (p.hs_i, p.hs_r):
        begin_symmetric_session(hs, now=0.0)
        assert hs.state is HandshakeState.ZEROED
        assert hs.chaining_key == hs.hash == hs.local_ephemeral == bytes(32)
        assert hs.local_index == 0


def test_psk_mismatch_fails_at_response() -> None:
    p = pair(PSK, bytes(32))
    consume_initiation(p.res, p.initiation(), p.peer_of_res, now=0.0)
    with pytest.raises(AuthError):
        consume_response(p.ini, p.response(), p.index_of_ini)
    assert p.hs_i.state is HandshakeState.INITIATION_CREATED


def test_psk_variants_give_different_keys() -> None:
    keys = []
    for psk in (bytes(32), PSK):
        p = pair(psk)
        consume_initiation(p.res, p.initiation(), p.peer_of_res, now=0.0)
        consume_response(p.ini, p.response(), p.index_of_ini)
        keys.append(begin_symmetric_session(p.hs_i, now=0.0).send_key)
    assert keys[0] != keys[1]


def test_rehandshake_after_session() -> None:
    p = pair()
    consume_initiation(p.res, p.initiation(wall=WALL), p.peer_of_res, now=0.0)
    consume_response(p.ini, p.response(), p.index_of_ini)
    begin_symmetric_session(p.hs_i, now=0.0)
    begin_symmetric_session(p.hs_r, now=0.0)
    consume_initiation(p.res, p.initiation(wall=WALL + 120, eph="ei2"), p.peer_of_res, now=120.0)
    assert same_transcript(p)


# --- stored transcripts (tests/vectors/handshake.json; cross-checked with wireguard-go) ---


@pytest.mark.parametrize("v", VECTORS, ids=lambda v: v["name"])
def test_vectors_byte_exact(v: dict) -> None:
    h = bytes.fromhex
    ini, res = StaticIdentity(h(v["initiator_private"])), StaticIdentity(h(v["responder_private"]))
    assert (ini.public.hex(), res.public.hex()) == (v["initiator_public"], v["responder_public"])
    hs_i = Handshake(ini, res.public, h(v["preshared_key"]))
    hs_r = Handshake(res, ini.public, h(v["preshared_key"]))

    msg1 = create_initiation(
        ini, hs_i, sender_index=v["initiator_index"],
        ephemeral_private=h(v["initiator_ephemeral"]), wall=v["wall"],
    )
    assert CookieGenerator(res.public).add_macs(msg1, now=0.0).hex() == v["initiation"]
    assert CookieChecker(res.public).check_mac1(h(v["initiation"]))
    consume_initiation(res, h(v["initiation"]), lambda pk: hs_r, now=0.0)
    assert (hs_r.hash.hex(), hs_r.chaining_key.hex()) == (
        v["hash_after_initiation"], v["chaining_key_after_initiation"],
    )

    msg2 = create_response(
        res, hs_r, sender_index=v["responder_index"], ephemeral_private=h(v["responder_ephemeral"]),
    )
    assert CookieGenerator(ini.public).add_macs(msg2, now=0.0).hex() == v["response"]
    consume_response(ini, h(v["response"]), lambda idx: hs_i)
    assert (hs_i.hash.hex(), hs_i.chaining_key.hex()) == (
        v["hash_after_response"], v["chaining_key_after_response"],
    )

    ki, kr = begin_symmetric_session(hs_i, now=0.0), begin_symmetric_session(hs_r, now=0.0)
    assert (ki.send_key.hex(), ki.receive_key.hex()) == (v["initiator_send_key"], v["initiator_receive_key"])
    keepalive = h(v["initiator_keepalive"])
    assert pack_transport_header(ki.remote_index, 0) + aead_encrypt(ki.send_key, 0, b"", b"") == keepalive
    m = MessageTransport.unpack(keepalive)
    assert m.receiver == kr.local_index and aead_decrypt(kr.receive_key, m.counter, m.content, b"") == b""


# --- tampering: every region of both messages ---

FAILS = (AuthError, DecodeError)


def consume1(p: Pair, msg: bytes) -> bool:
    """True if the responder accepts msg as it would: mac1 first, then the handshake."""
    if not CookieChecker(p.res.public).check_mac1(msg):
        return False
    consume_initiation(p.res, msg, p.peer_of_res, now=0.0)
    return True


def flipped(msg: bytes, i: int, x: int) -> bytes:
    b = bytearray(msg)
    b[i] ^= x
    return bytes(b)


@given(i=st.integers(0, MESSAGE_INITIATION_SIZE - 17), x=st.integers(1, 255))
def test_tampered_initiation_rejected(i: int, x: int) -> None:
    # Everything but mac2 is covered by mac1; the Noise fields also by the AEADs.
    p = pair()
    bad = flipped(p.initiation(), i, x)
    assert not CookieChecker(p.res.public).check_mac1(bad)
    if 4 <= i < 8 or i >= MESSAGE_INITIATION_SIZE - 32:  # sender index, mac1: only mac1 covers
        return
    with pytest.raises(FAILS):
        consume_initiation(p.res, bad, p.peer_of_res, now=0.0)
    assert p.hs_r.state is HandshakeState.ZEROED and p.hs_r.last_timestamp == bytes(12)


@given(i=st.integers(0, MESSAGE_RESPONSE_SIZE - 17), x=st.integers(1, 255))
def test_tampered_response_rejected(i: int, x: int) -> None:
    p = pair(PSK)
    consume_initiation(p.res, p.initiation(), p.peer_of_res, now=0.0)
    bad = flipped(p.response(), i, x)
    assert not CookieChecker(p.ini.public).check_mac1(bad)
    if 4 <= i < 8 or i >= MESSAGE_RESPONSE_SIZE - 32:  # sender index, mac1: only mac1 covers
        return
    with pytest.raises(FAILS):
        consume_response(p.ini, bad, p.index_of_ini)
    assert p.hs_i.state is HandshakeState.INITIATION_CREATED


@given(data=st.binary(max_size=200))
def test_garbage_initiation_only_decode_or_auth_error(data: bytes) -> None:
    p = pair()
    with pytest.raises(FAILS):
        consume_initiation(p.res, data, p.peer_of_res, now=0.0)


@given(body=st.binary(min_size=MESSAGE_INITIATION_SIZE - 4, max_size=MESSAGE_INITIATION_SIZE - 4))
def test_well_framed_random_initiation_is_auth_error(body: bytes) -> None:
    p = pair()
    with pytest.raises(AuthError):
        consume_initiation(p.res, b"\x01\x00\x00\x00" + body, p.peer_of_res, now=0.0)


@given(data=st.binary(max_size=200))
def test_garbage_response_only_decode_or_auth_error(data: bytes) -> None:
    p = pair()
    p.initiation()
    with pytest.raises(FAILS):
        consume_response(p.ini, data, lambda idx: p.hs_i)


@pytest.mark.parametrize("cut", [0, 1, 4, 100, 147])
def test_truncated_or_extended_initiation_is_decode_error(cut: int) -> None:
    p = pair()
    msg = p.initiation()
    for bad in (msg[:cut], msg + b"\x00"):
        with pytest.raises(DecodeError):
            consume_initiation(p.res, bad, p.peer_of_res, now=0.0)


def test_low_order_ephemeral_is_auth_error() -> None:
    p = pair()
    m = MessageInitiation.unpack(p.initiation())
    bad = MessageInitiation(m.sender, bytes(32), m.static, m.timestamp).pack()
    with pytest.raises(AuthError):
        consume_initiation(p.res, bad, p.peer_of_res, now=0.0)


# --- replay, flood, unknown peers (whitepaper §5.1, §5.4.2; wireguard-go) ---


def test_replayed_initiation_rejected() -> None:
    p = pair()
    msg = p.initiation()
    consume_initiation(p.res, msg, p.peer_of_res, now=0.0)
    with pytest.raises(AuthError, match="replay"):
        consume_initiation(p.res, msg, p.peer_of_res, now=10.0)


def test_older_timestamp_rejected_newer_accepted() -> None:
    p = pair()
    consume_initiation(p.res, p.initiation(wall=WALL), p.peer_of_res, now=0.0)
    with pytest.raises(AuthError, match="replay"):
        consume_initiation(p.res, p.initiation(wall=WALL - 1, eph="e2"), p.peer_of_res, now=10.0)
    consume_initiation(p.res, p.initiation(wall=WALL + 1, eph="e3"), p.peer_of_res, now=20.0)
    assert p.hs_r.remote_ephemeral == public_key(key("e3"))


def test_timestamp_within_whitening_is_a_replay() -> None:
    # 10 ms apart: the same whitened TAI64N, so the second is refused.
    p = pair()
    consume_initiation(p.res, p.initiation(wall=WALL), p.peer_of_res, now=0.0)
    with pytest.raises(AuthError, match="replay"):
        consume_initiation(p.res, p.initiation(wall=WALL + 0.01, eph="e2"), p.peer_of_res, now=1.0)


@pytest.mark.parametrize(
    "gap,flood",
    [(0.0, True), (0.01, True), (HANDSHAKE_INITIATION_RATE, True), (0.021, False), (5.0, False)],
)
def test_initiation_flood(gap: float, flood: bool) -> None:
    p = pair()
    consume_initiation(p.res, p.initiation(wall=WALL), p.peer_of_res, now=100.0)
    second = p.initiation(wall=WALL + 1, eph="e2")
    if flood:
        with pytest.raises(AuthError, match="flood"):
            consume_initiation(p.res, second, p.peer_of_res, now=100.0 + gap)
    else:
        consume_initiation(p.res, second, p.peer_of_res, now=100.0 + gap)


def test_rejected_initiation_changes_nothing() -> None:
    p = pair()
    consume_initiation(p.res, p.initiation(wall=WALL), p.peer_of_res, now=0.0)
    before = vars(p.hs_r).copy()
    with pytest.raises(AuthError):
        consume_initiation(p.res, p.initiation(wall=WALL + 1, eph="e2"), p.peer_of_res, now=0.001)
    assert vars(p.hs_r) == before


def test_unknown_peer_rejected() -> None:
    p = pair()
    with pytest.raises(AuthError, match="unknown peer"):
        consume_initiation(p.res, p.initiation(), lambda pk: None, now=0.0)


def test_initiation_to_someone_else_rejected() -> None:
    p = pair()
    other = StaticIdentity(key("someone else"))
    with pytest.raises(AuthError):
        consume_initiation(other, p.initiation(), lambda pk: p.hs_r, now=0.0)


def test_response_to_unknown_index_or_twice_rejected() -> None:
    p = pair()
    consume_initiation(p.res, p.initiation(), p.peer_of_res, now=0.0)
    msg2 = p.response()
    with pytest.raises(AuthError, match="unknown index"):
        consume_response(p.ini, msg2, lambda idx: None)
    consume_response(p.ini, msg2, p.index_of_ini)
    with pytest.raises(AuthError, match="pending"):
        consume_response(p.ini, msg2, p.index_of_ini)


# --- API misuse is LocalError ---


def test_create_response_needs_consumed_initiation() -> None:
    p = pair()
    with pytest.raises(LocalError):
        p.response()


def test_session_needs_finished_handshake() -> None:
    p = pair()
    p.initiation()
    with pytest.raises(LocalError):
        begin_symmetric_session(p.hs_i, now=0.0)


def test_low_order_peer_key() -> None:
    ini = StaticIdentity(key("initiator"))
    hs = Handshake(ini, bytes(32))
    assert hs.precomputed_static_static == bytes(32)
    with pytest.raises(LocalError):
        create_initiation(ini, hs, sender_index=1, ephemeral_private=key("e"), wall=WALL)


def test_precompute_after_key_change() -> None:
    p = pair()
    p.res = StaticIdentity(key("responder 2"))  # the responder's private key changed
    p.hs_r.precompute(p.res)
    p.hs_i = Handshake(p.ini, p.res.public)
    consume_initiation(p.res, p.initiation(), p.peer_of_res, now=0.0)
    assert same_transcript(p)


# --- message framing ---


@pytest.mark.parametrize(
    "data,kind",
    [(b"\x01\x00\x00\x00", 1), (b"\x02\x00\x00\x00xx", 2), (b"\x03\x00\x00\x00", 3),
     (b"\x04\x00\x00\x00", 4)],
)
def test_message_type(data: bytes, kind: int) -> None:
    assert message_type(data) == kind


@pytest.mark.parametrize(
    "data", [b"", b"\x01\x00\x00", b"\x00\x00\x00\x00", b"\x05\x00\x00\x00", b"\x01\x00\x01\x00"]
)
def test_message_type_rejects(data: bytes) -> None:
    with pytest.raises(DecodeError):
        message_type(data)


def test_message_round_trips() -> None:
    m1 = MessageInitiation(7, b"e" * 32, b"s" * 48, b"t" * 28, b"1" * 16, b"2" * 16)
    m2 = MessageResponse(8, 9, b"e" * 32, b"x" * 16, b"1" * 16, b"2" * 16)
    m3 = MessageCookieReply(10, b"n" * 24, b"c" * 32)
    m4 = MessageTransport(11, 2**64 - 1, b"p" * 16)
    for m, size in ((m1, 148), (m2, 92), (m3, MESSAGE_COOKIE_REPLY_SIZE), (m4, 32)):
        data = m.pack()
        assert len(data) == size and type(m).unpack(data) == m
    assert m1.pack()[:8] == struct.pack("<II", 1, 7)
    assert m2.pack()[:12] == struct.pack("<III", 2, 8, 9)
    assert m4.pack()[:16] == struct.pack("<IIQ", 4, 11, 2**64 - 1)


@pytest.mark.parametrize("cls", [MessageInitiation, MessageResponse, MessageCookieReply])
def test_fixed_size_messages_are_strict(cls: type) -> None:
    good = {MessageInitiation: 148, MessageResponse: 92, MessageCookieReply: 64}[cls]
    kind = {MessageInitiation: 1, MessageResponse: 2, MessageCookieReply: 3}[cls]
    frame = bytes([kind, 0, 0, 0])
    cls.unpack(frame + bytes(good - 4))
    wrong_type = bytes([kind % 4 + 1, 0, 0, 0]) + bytes(good - 4)
    for bad in (frame + bytes(good - 5), frame + bytes(good - 3), wrong_type):
        with pytest.raises(DecodeError):
            cls.unpack(bad)


def test_transport_minimum_size() -> None:
    with pytest.raises(DecodeError):
        MessageTransport.unpack(pack_transport_header(1, 0) + bytes(15))
    assert MessageTransport.unpack(pack_transport_header(1, 0) + bytes(16)).content == bytes(16)
