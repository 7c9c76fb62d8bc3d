"""mac1, mac2 and cookie replies: DoS mitigation (whitepaper §5.3, §5.4.4, §5.4.7).

Names follow wireguard-go device/cookie.go.

- The responder's `CookieChecker` verifies mac1 (keyed with its own public key) on every
  handshake message, and under load also mac2; a message without a valid mac2 then gets
  a cookie reply instead of an answer. Whether the device is under load is not decided here.
- The initiator's `CookieGenerator` (one per peer, keyed with the peer's public key)
  fills mac1, and mac2 while it holds a cookie younger than COOKIE_REFRESH_TIME.

`src` is the sender's source address as opaque bytes (wireguard-go uses IP bytes || port).
Time (`now`, monotonic seconds) and randomness (`rng(n) -> bytes`) are passed in.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from wgdisco.errors import AuthError, LocalError
from wgdisco.proto.crypto import HASH_LEN, MAC, MAC_LEN, XNONCE_LEN, xaead_decrypt, xaead_encrypt
from wgdisco.proto.noise import MessageCookieReply, cookie_key, mac1_key

COOKIE_REFRESH_TIME = 120.0  # seconds (whitepaper §6.1: Cookie-Refresh-Time)

_ZERO_MAC = bytes(MAC_LEN)


def _split_macs(msg: bytes) -> tuple[int, int]:
    """Offsets of mac1 and mac2: the last 32 bytes of a handshake message (whitepaper §5.4.4)."""
    smac2 = len(msg) - MAC_LEN
    return smac2 - MAC_LEN, smac2


def _expired(since: float | None, now: float) -> bool:
    return since is None or now - since > COOKIE_REFRESH_TIME


class CookieChecker:
    """The responder side: checks mac1/mac2 and answers with cookie replies."""

    def __init__(self, public: bytes) -> None:
        self._mac1_key = mac1_key(public)
        self._encryption_key = cookie_key(public)
        self._secret = bytes(HASH_LEN)
        self._secret_set: float | None = None

    def check_mac1(self, msg: bytes) -> bool:
        """mac1 = MAC(HASH(LABEL_MAC1 || Spub_m), msg_alpha) (whitepaper §5.4.4)."""
        if len(msg) < 2 * MAC_LEN:
            return False
        smac1, smac2 = _split_macs(msg)
        mac1 = MAC(self._mac1_key, msg[:smac1])
        return hmac.compare_digest(mac1, msg[smac1:smac2])

    def check_mac2(self, msg: bytes, src: bytes, *, now: float) -> bool:
        """mac2 = MAC(cookie, msg_beta) with the cookie of `src`; False once the secret is stale."""
        if len(msg) < 2 * MAC_LEN or _expired(self._secret_set, now):
            return False
        _, smac2 = _split_macs(msg)
        mac2 = MAC(self._cookie(src), msg[:smac2])
        return hmac.compare_digest(mac2, msg[smac2:])

    def create_reply(
        self,
        msg: bytes,
        receiver_index: int,
        src: bytes,
        *,
        now: float,
        rng: Callable[[int], bytes],
    ) -> bytes:
        """The 64-byte cookie reply to `msg` from `src` (whitepaper §5.4.7).

        The secret is refreshed every COOKIE_REFRESH_TIME; the cookie is encrypted with a
        random 24-byte nonce and the message's mac1 as associated data.
        """
        if len(msg) < 2 * MAC_LEN:
            raise LocalError("a handshake message ends with mac1 and mac2")
        if _expired(self._secret_set, now):
            self._secret = _random(rng, HASH_LEN)
            self._secret_set = now
        smac1, smac2 = _split_macs(msg)
        nonce = _random(rng, XNONCE_LEN)
        sealed = xaead_encrypt(self._encryption_key, nonce, self._cookie(src), msg[smac1:smac2])
        return MessageCookieReply(receiver_index, nonce, sealed).pack()

    def _cookie(self, src: bytes) -> bytes:
        """τ = MAC(Rm, source address) (whitepaper §5.4.7)."""
        return MAC(self._secret, src)


class CookieGenerator:
    """The initiator side, for one peer: fills mac1/mac2 and consumes cookie replies."""

    def __init__(self, public: bytes) -> None:
        self._mac1_key = mac1_key(public)
        self._encryption_key = cookie_key(public)
        self._cookie = _ZERO_MAC
        self._cookie_set: float | None = None
        self._last_mac1: bytes | None = None

    def add_macs(self, msg: bytes | bytearray, *, now: float) -> bytes:
        """`msg` with mac1 set, and mac2 if a fresh cookie is held (else zero) (whitepaper §5.4.4).

        Remembers mac1 to authenticate the cookie reply it may provoke.
        """
        if len(msg) < 2 * MAC_LEN:
            raise LocalError("a handshake message ends with mac1 and mac2")
        smac1, smac2 = _split_macs(msg)
        body = bytes(msg[:smac1])
        mac1 = MAC(self._mac1_key, body)
        self._last_mac1 = mac1
        if _expired(self._cookie_set, now):
            return body + mac1 + _ZERO_MAC
        return body + mac1 + MAC(self._cookie, body, mac1)

    def consume_reply(self, reply: bytes, *, now: float) -> None:
        """Take the cookie from a reply to our last mac1 (whitepaper §5.4.7).

        DecodeError if malformed; AuthError if we sent nothing or it does not decrypt.
        """
        m = MessageCookieReply.unpack(reply)
        if self._last_mac1 is None:
            raise AuthError("cookie reply but no message was sent")
        self._cookie = xaead_decrypt(self._encryption_key, m.nonce, m.cookie, self._last_mac1)
        self._cookie_set = now


def _random(rng: Callable[[int], bytes], n: int) -> bytes:
    data = rng(n)
    if len(data) != n:
        raise LocalError(f"rng returned {len(data)} bytes, {n} asked")
    return data
