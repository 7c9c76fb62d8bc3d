"""The Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s handshake (whitepaper §5.4.2–§5.4.6).

Theory of operation (names from wireguard-go device/noise-protocol.go):

    initiator                                 responder
    create_initiation(hs)  ── 148 bytes ──►   consume_initiation() -> hs
    consume_response()     ◄── 92 bytes ──    create_response(hs)
    begin_symmetric_session(hs)               begin_symmetric_session(hs)

A `Handshake` walks ZEROED → INITIATION_CREATED → RESPONSE_CONSUMED (initiator) or
ZEROED → INITIATION_CONSUMED → RESPONSE_CREATED (responder), then back to ZEROED once
the session keys are derived. Consume functions compute into locals and write the
handshake only when every check passed, so a bad message changes nothing.

mac1/mac2 are not handled here: the caller fills them with cookie.CookieGenerator and
checks them with cookie.CookieChecker before consuming (whitepaper §5.4.4).
Indices are chosen by the caller (the index table), time and ephemerals are passed in.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from wgdisco.errors import AuthError, DecodeError, LocalError
from wgdisco.proto.crypto import (
    DH,
    HASH,
    KDF1,
    KDF2,
    KDF3,
    KEY_LEN,
    MAC_LEN,
    TAG_LEN,
    TAI64N_LEN,
    XNONCE_LEN,
    aead_decrypt,
    aead_encrypt,
    tai64n,
)
from wgdisco.proto.keys import public_key

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"

MESSAGE_INITIATION_TYPE = 1
MESSAGE_RESPONSE_TYPE = 2
MESSAGE_COOKIE_REPLY_TYPE = 3
MESSAGE_TRANSPORT_TYPE = 4

MESSAGE_INITIATION_SIZE = 148
MESSAGE_RESPONSE_SIZE = 92
MESSAGE_COOKIE_REPLY_SIZE = 64
MESSAGE_TRANSPORT_HEADER_SIZE = 16
MESSAGE_TRANSPORT_SIZE = MESSAGE_TRANSPORT_HEADER_SIZE + TAG_LEN  # an empty (keepalive) one
MESSAGE_KEEPALIVE_SIZE = MESSAGE_TRANSPORT_SIZE

HANDSHAKE_INITIATION_RATE = 1 / 50  # seconds; wireguard-go HandshakeInitationRate

# whitepaper §5.4.2: Ci := Hash(Construction), Hi := Hash(Ci || Identifier)
INITIAL_CHAIN_KEY = HASH(CONSTRUCTION)
INITIAL_HASH = HASH(INITIAL_CHAIN_KEY, IDENTIFIER)

_ZERO_KEY = bytes(KEY_LEN)
_ZERO_TIMESTAMP = bytes(TAI64N_LEN)


class HandshakeState(enum.Enum):
    ZEROED = 0
    INITIATION_CREATED = 1
    INITIATION_CONSUMED = 2
    RESPONSE_CREATED = 3
    RESPONSE_CONSUMED = 4


# --- messages (whitepaper §5.4.2–§5.4.7; little-endian, type byte then 3 zero bytes) ---

_INITIATION = struct.Struct("<II32s48s28s16s16s")
_RESPONSE = struct.Struct("<III32s16s16s16s")
_COOKIE_REPLY = struct.Struct("<II24s32s")
_TRANSPORT_HEADER = struct.Struct("<IIQ")


def message_type(data: bytes) -> int:
    """The type (1..4) of a WireGuard message: byte 0, then 3 zero bytes (whitepaper §5.4)."""
    if len(data) < 4 or data[1:4] != b"\x00\x00\x00" or not 1 <= data[0] <= 4:
        raise DecodeError("not a WireGuard message")
    return data[0]


def _check(data: bytes, kind: int, size: int) -> None:
    if len(data) != size:
        raise DecodeError(f"message type {kind} is {size} bytes, got {len(data)}")
    if message_type(data) != kind:
        raise DecodeError(f"expected message type {kind}, got {data[0]}")


@dataclass(frozen=True, slots=True)
class MessageInitiation:
    """whitepaper §5.4.2."""

    sender: int
    ephemeral: bytes  # 32
    static: bytes  # 32 + 16
    timestamp: bytes  # 12 + 16
    mac1: bytes = bytes(MAC_LEN)
    mac2: bytes = bytes(MAC_LEN)

    @classmethod
    def unpack(cls, data: bytes) -> MessageInitiation:
        _check(data, MESSAGE_INITIATION_TYPE, MESSAGE_INITIATION_SIZE)
        return cls(*_INITIATION.unpack(data)[1:])

    def pack(self) -> bytes:
        return _INITIATION.pack(
            MESSAGE_INITIATION_TYPE,
            self.sender,
            self.ephemeral,
            self.static,
            self.timestamp,
            self.mac1,
            self.mac2,
        )


@dataclass(frozen=True, slots=True)
class MessageResponse:
    """whitepaper §5.4.3."""

    sender: int
    receiver: int
    ephemeral: bytes  # 32
    empty: bytes  # 0 + 16
    mac1: bytes = bytes(MAC_LEN)
    mac2: bytes = bytes(MAC_LEN)

    @classmethod
    def unpack(cls, data: bytes) -> MessageResponse:
        _check(data, MESSAGE_RESPONSE_TYPE, MESSAGE_RESPONSE_SIZE)
        return cls(*_RESPONSE.unpack(data)[1:])

    def pack(self) -> bytes:
        return _RESPONSE.pack(
            MESSAGE_RESPONSE_TYPE,
            self.sender,
            self.receiver,
            self.ephemeral,
            self.empty,
            self.mac1,
            self.mac2,
        )


@dataclass(frozen=True, slots=True)
class MessageCookieReply:
    """whitepaper §5.4.7."""

    receiver: int
    nonce: bytes  # 24
    cookie: bytes  # 16 + 16

    @classmethod
    def unpack(cls, data: bytes) -> MessageCookieReply:
        _check(data, MESSAGE_COOKIE_REPLY_TYPE, MESSAGE_COOKIE_REPLY_SIZE)
        return cls(*_COOKIE_REPLY.unpack(data)[1:])

    def pack(self) -> bytes:
        if len(self.nonce) != XNONCE_LEN:
            raise LocalError("a cookie reply nonce is 24 bytes")
        return _COOKIE_REPLY.pack(MESSAGE_COOKIE_REPLY_TYPE, self.receiver, self.nonce, self.cookie)


@dataclass(frozen=True, slots=True)
class MessageTransport:
    """whitepaper §5.4.6; content is the encrypted packet with its 16-byte tag."""

    receiver: int
    counter: int
    content: bytes

    @classmethod
    def unpack(cls, data: bytes) -> MessageTransport:
        if len(data) < MESSAGE_TRANSPORT_SIZE:
            raise DecodeError(f"a transport message is at least {MESSAGE_TRANSPORT_SIZE} bytes")
        if message_type(data) != MESSAGE_TRANSPORT_TYPE:
            raise DecodeError(f"expected message type 4, got {data[0]}")
        _, receiver, counter = _TRANSPORT_HEADER.unpack_from(data)
        return cls(receiver, counter, bytes(data[MESSAGE_TRANSPORT_HEADER_SIZE:]))

    def pack(self) -> bytes:
        return pack_transport_header(self.receiver, self.counter) + self.content


def pack_transport_header(receiver: int, counter: int) -> bytes:
    """The 16-byte header of a transport message (whitepaper §5.4.6)."""
    return _TRANSPORT_HEADER.pack(MESSAGE_TRANSPORT_TYPE, receiver, counter)


# --- identities and per-peer state ---


def mac1_key(public: bytes) -> bytes:
    """HASH(LABEL_MAC1 || public): the key of mac1 for messages to `public` (whitepaper §5.4.4)."""
    return HASH(LABEL_MAC1, public)


def cookie_key(public: bytes) -> bytes:
    """HASH(LABEL_COOKIE || public): the XAEAD key of cookie replies (whitepaper §5.4.7)."""
    return HASH(LABEL_COOKIE, public)


class StaticIdentity:
    """Our static key pair, with the mac1/cookie keys of our own public key."""

    __slots__ = ("private", "public", "mac1_key", "cookie_key")

    def __init__(self, private: bytes) -> None:
        self.private = private
        self.public = public_key(private)
        self.mac1_key = mac1_key(self.public)
        self.cookie_key = cookie_key(self.public)


def _static_static(identity: StaticIdentity, remote_static: bytes) -> bytes:
    """DH(Spriv_i, Spub_r), or zeros when the remote key is a low-order point (as wireguard-go)."""
    try:
        return DH(identity.private, remote_static)
    except AuthError:
        return _ZERO_KEY


class Handshake:
    """Handshake state for one peer (wireguard-go device.Handshake)."""

    def __init__(
        self, identity: StaticIdentity, remote_static: bytes, preshared_key: bytes = _ZERO_KEY
    ) -> None:
        if len(remote_static) != KEY_LEN or len(preshared_key) != KEY_LEN:
            raise LocalError("public and preshared keys are 32 bytes")
        self.remote_static = remote_static
        self.preshared_key = preshared_key
        self.precompute(identity)
        self.remote_mac1_key = mac1_key(remote_static)
        self.remote_cookie_key = cookie_key(remote_static)
        self.state = HandshakeState.ZEROED
        self.hash = _ZERO_KEY
        self.chaining_key = _ZERO_KEY
        self.local_ephemeral = _ZERO_KEY
        self.remote_ephemeral = _ZERO_KEY
        self.local_index = 0
        self.remote_index = 0
        self.last_timestamp = _ZERO_TIMESTAMP  # greatest TAI64N seen (replay, §5.1)
        self.last_initiation_consumed: float | None = None  # `now` of it (flood)

    def precompute(self, identity: StaticIdentity) -> None:
        """Recompute DH(Spriv, Spub_remote), e.g. after our private key changed."""
        self.precomputed_static_static = _static_static(identity, self.remote_static)

    def clear(self) -> None:
        """Forget the ephemeral secrets and transcript (wireguard-go Handshake.Clear)."""
        self.local_ephemeral = _ZERO_KEY
        self.remote_ephemeral = _ZERO_KEY
        self.chaining_key = _ZERO_KEY
        self.hash = _ZERO_KEY
        self.local_index = 0
        self.state = HandshakeState.ZEROED

    def __repr__(self) -> str:
        return f"Handshake(remote={self.remote_static[:4].hex()}…, state={self.state.name})"


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """Transport keys derived at the end of a handshake (whitepaper §5.4.5)."""

    send_key: bytes = field(repr=False)
    receive_key: bytes = field(repr=False)
    is_initiator: bool
    local_index: int
    remote_index: int
    created: float


# --- the handshake (whitepaper §5.4.2–§5.4.5) ---


def _mix_hash(h: bytes, data: bytes) -> bytes:
    return HASH(h, data)


def create_initiation(
    identity: StaticIdentity,
    hs: Handshake,
    *,
    sender_index: int,
    ephemeral_private: bytes,
    wall: float,
) -> bytes:
    """The 148-byte initiation to hs's peer, mac1 and mac2 left zero (whitepaper §5.4.2)."""
    if hs.precomputed_static_static == _ZERO_KEY:
        raise LocalError("peer public key is a low-order point")
    h = _mix_hash(INITIAL_HASH, hs.remote_static)
    ephemeral = public_key(ephemeral_private)
    ck = KDF1(INITIAL_CHAIN_KEY, ephemeral)
    h = _mix_hash(h, ephemeral)
    ck, key = KDF2(ck, DH(ephemeral_private, hs.remote_static))
    static = aead_encrypt(key, 0, identity.public, h)
    h = _mix_hash(h, static)
    ck, key = KDF2(ck, hs.precomputed_static_static)
    timestamp = aead_encrypt(key, 0, tai64n(wall), h)
    h = _mix_hash(h, timestamp)

    hs.hash, hs.chaining_key = h, ck
    hs.local_ephemeral = ephemeral_private
    hs.local_index = sender_index
    hs.state = HandshakeState.INITIATION_CREATED
    return MessageInitiation(sender_index, ephemeral, static, timestamp).pack()


def consume_initiation(
    identity: StaticIdentity,
    msg: bytes,
    lookup_peer: Callable[[bytes], Handshake | None],
    *,
    now: float,
) -> Handshake:
    """Check an initiation and load it into the sender's Handshake (whitepaper §5.4.2).

    DecodeError for malformed bytes; AuthError for a failed AEAD, an unknown peer,
    a replayed or older timestamp, or a flood (< HANDSHAKE_INITIATION_RATE apart).
    """
    m = MessageInitiation.unpack(msg)
    h = _mix_hash(INITIAL_HASH, identity.public)
    h = _mix_hash(h, m.ephemeral)
    ck = KDF1(INITIAL_CHAIN_KEY, m.ephemeral)
    ck, key = KDF2(ck, DH(identity.private, m.ephemeral))
    remote_static = aead_decrypt(key, 0, m.static, h)
    h = _mix_hash(h, m.static)

    hs = lookup_peer(remote_static)
    if hs is None:
        raise AuthError("initiation from an unknown peer")
    if hs.precomputed_static_static == _ZERO_KEY:
        raise AuthError("peer public key is a low-order point")
    ck, key = KDF2(ck, hs.precomputed_static_static)
    timestamp = aead_decrypt(key, 0, m.timestamp, h)
    h = _mix_hash(h, m.timestamp)

    # whitepaper §5.1: replay and flood protection
    if timestamp <= hs.last_timestamp:
        raise AuthError("initiation replay: timestamp not newer")
    last = hs.last_initiation_consumed
    if last is not None and now - last <= HANDSHAKE_INITIATION_RATE:
        raise AuthError("initiation flood")

    hs.hash, hs.chaining_key = h, ck
    hs.remote_index = m.sender
    hs.remote_ephemeral = m.ephemeral
    hs.last_timestamp = timestamp
    if last is None or now > last:
        hs.last_initiation_consumed = now
    hs.state = HandshakeState.INITIATION_CONSUMED
    return hs


def create_response(
    identity: StaticIdentity,
    hs: Handshake,
    *,
    sender_index: int,
    ephemeral_private: bytes,
) -> bytes:
    """The 92-byte response to a consumed initiation, macs left zero (whitepaper §5.4.3)."""
    if hs.state is not HandshakeState.INITIATION_CONSUMED:
        raise LocalError("handshake initiation must be consumed first")
    ephemeral = public_key(ephemeral_private)
    h = _mix_hash(hs.hash, ephemeral)
    ck = KDF1(hs.chaining_key, ephemeral)
    ck = KDF1(ck, DH(ephemeral_private, hs.remote_ephemeral))
    ck = KDF1(ck, DH(ephemeral_private, hs.remote_static))
    ck, tau, key = KDF3(ck, hs.preshared_key)
    h = _mix_hash(h, tau)
    empty = aead_encrypt(key, 0, b"", h)
    h = _mix_hash(h, empty)

    hs.hash, hs.chaining_key = h, ck
    hs.local_ephemeral = ephemeral_private
    hs.local_index = sender_index
    hs.state = HandshakeState.RESPONSE_CREATED
    return MessageResponse(sender_index, hs.remote_index, ephemeral, empty).pack()


def consume_response(
    identity: StaticIdentity,
    msg: bytes,
    lookup_by_index: Callable[[int], Handshake | None],
) -> Handshake:
    """Check a response to our initiation and complete the handshake (whitepaper §5.4.3).

    DecodeError for malformed bytes; AuthError for an unknown index, a handshake not
    waiting for a response, a low-order ephemeral, or a failed AEAD.
    """
    m = MessageResponse.unpack(msg)
    hs = lookup_by_index(m.receiver)
    if hs is None:
        raise AuthError("response to an unknown index")
    if hs.state is not HandshakeState.INITIATION_CREATED:
        raise AuthError("response without a pending initiation")
    h = _mix_hash(hs.hash, m.ephemeral)
    ck = KDF1(hs.chaining_key, m.ephemeral)
    ck = KDF1(ck, DH(hs.local_ephemeral, m.ephemeral))
    ck = KDF1(ck, DH(identity.private, m.ephemeral))
    ck, tau, key = KDF3(ck, hs.preshared_key)
    h = _mix_hash(h, tau)
    aead_decrypt(key, 0, m.empty, h)
    h = _mix_hash(h, m.empty)

    hs.hash, hs.chaining_key = h, ck
    hs.remote_index = m.sender
    hs.state = HandshakeState.RESPONSE_CONSUMED
    return hs


def begin_symmetric_session(hs: Handshake, *, now: float) -> SessionKeys:
    """Derive the transport keys and zero the handshake secrets (whitepaper §5.4.5)."""
    if hs.state is HandshakeState.RESPONSE_CONSUMED:
        send, receive = KDF2(hs.chaining_key, b"")
        is_initiator = True
    elif hs.state is HandshakeState.RESPONSE_CREATED:
        receive, send = KDF2(hs.chaining_key, b"")
        is_initiator = False
    else:
        raise LocalError(f"invalid state for keypair derivation: {hs.state.name}")
    keys = SessionKeys(send, receive, is_initiator, hs.local_index, hs.remote_index, now)
    hs.chaining_key = _ZERO_KEY
    hs.hash = _ZERO_KEY
    hs.local_ephemeral = _ZERO_KEY
    hs.local_index = 0  # the index now belongs to the keypair (wireguard-go SwapIndexForKeypair)
    hs.state = HandshakeState.ZEROED
    return keys
