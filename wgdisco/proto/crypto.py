"""WireGuard's cryptographic primitives (whitepaper §5.4, "Protocol & Cryptography").

Names follow the whitepaper: HASH, MAC, HMAC, KDF1..3, DH, AEAD, XAEAD, TAI64N.
Everything here is a pure function of its arguments; decrypt failures raise AuthError.

- HASH: BLAKE2s-256; MAC: keyed BLAKE2s-128 (RFC 7693).
- HMAC: HMAC (RFC 2104) over BLAKE2s-256, block 64 bytes, as wireguard-go's HMAC1/HMAC2.
- KDF_n: HKDF (RFC 5869) with HMAC-BLAKE2s, chaining key as salt (whitepaper §5.4).
- AEAD: ChaCha20-Poly1305 (RFC 8439), nonce = 32 zero bits || 64-bit little-endian counter.
- XAEAD: XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha-03 §2.3), HChaCha20 in pure Python.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import struct
from typing import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from wgdisco.errors import AuthError, LocalError

HASH_LEN = 32
KEY_LEN = 32
MAC_LEN = 16
TAG_LEN = 16  # Poly1305
NONCE_LEN = 12
XNONCE_LEN = 24
TAI64N_LEN = 12

# cryptography >= 47 can seal/open into a caller's buffer: the data plane may use it.
HAS_ENCRYPT_INTO = hasattr(ChaCha20Poly1305, "encrypt_into")
HAS_DECRYPT_INTO = hasattr(ChaCha20Poly1305, "decrypt_into")

_BLOCK = 64  # BLAKE2s block size, the HMAC block (RFC 2104 §2)
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


def HASH(*parts: bytes) -> bytes:
    """BLAKE2s-256 of the concatenated parts (whitepaper §5.4: Hash)."""
    h = hashlib.blake2s(digest_size=HASH_LEN)
    for p in parts:
        h.update(p)
    return h.digest()


def MAC(key: bytes, *parts: bytes) -> bytes:
    """Keyed BLAKE2s with a 16-byte output (whitepaper §5.4: Mac)."""
    h = hashlib.blake2s(digest_size=MAC_LEN, key=key)
    for p in parts:
        h.update(p)
    return h.digest()


def HMAC(key: bytes, *parts: bytes) -> bytes:
    """HMAC-BLAKE2s-256 (RFC 2104; whitepaper §5.4: Hmac)."""
    if len(key) > _BLOCK:
        key = HASH(key)
    key = key.ljust(_BLOCK, b"\x00")
    inner = hashlib.blake2s(key.translate(_IPAD), digest_size=HASH_LEN)
    for p in parts:
        inner.update(p)
    return HASH(key.translate(_OPAD), inner.digest())


def KDF1(key: bytes, data: bytes) -> bytes:
    """τ1 of HKDF(key, data) (whitepaper §5.4: Kdf1)."""
    prk = HMAC(key, data)
    return HMAC(prk, b"\x01")


def KDF2(key: bytes, data: bytes) -> tuple[bytes, bytes]:
    """(τ1, τ2) of HKDF(key, data) (whitepaper §5.4: Kdf2)."""
    prk = HMAC(key, data)
    t0 = HMAC(prk, b"\x01")
    return t0, HMAC(prk, t0, b"\x02")


def KDF3(key: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:
    """(τ1, τ2, τ3) of HKDF(key, data) (whitepaper §5.4: Kdf3)."""
    prk = HMAC(key, data)
    t0 = HMAC(prk, b"\x01")
    t1 = HMAC(prk, t0, b"\x02")
    return t0, t1, HMAC(prk, t1, b"\x03")


def DH(private: bytes, public: bytes) -> bytes:
    """X25519 (RFC 7748 §5); an all-zero result (low-order point) raises AuthError (§6.1)."""
    if len(private) != KEY_LEN or len(public) != KEY_LEN:
        raise LocalError("X25519 keys are 32 bytes")
    try:
        shared = X25519PrivateKey.from_private_bytes(private).exchange(
            X25519PublicKey.from_public_bytes(public)
        )
    except ValueError:  # cryptography refuses the all-zero output itself
        raise AuthError("X25519 shared secret is zero") from None
    if shared == bytes(KEY_LEN):
        raise AuthError("X25519 shared secret is zero")
    return shared


def is_low_order(public: bytes) -> bool:
    """True when X25519 with ``public`` is all zeros whatever our key: a point of small order
    (RFC 7748 §6.1; clamping makes every private scalar a multiple of the cofactor 8, so one
    clamped scalar decides for all)."""
    try:
        DH(_ANY_CLAMPED_SCALAR, public)
    except AuthError:
        return True
    return False


_ANY_CLAMPED_SCALAR = bytes([8]) + bytes(30) + bytes([64])


def aead_nonce(counter: int) -> bytes:
    """The 96-bit ChaCha20-Poly1305 nonce: 4 zero bytes || 64-bit LE counter (whitepaper §5.4)."""
    return struct.pack("<4xQ", counter)


def aead_cipher(key: bytes) -> ChaCha20Poly1305:
    """A ChaCha20-Poly1305 object for a key; keep it (e.g. on a keypair) to avoid re-keying."""
    return ChaCha20Poly1305(key)


def aead_encrypt(key: bytes, counter: int, plaintext: bytes, ad: bytes) -> bytes:
    """AEAD(key, counter, plaintext, ad) of whitepaper §5.4: ciphertext || 16-byte tag."""
    return ChaCha20Poly1305(key).encrypt(aead_nonce(counter), plaintext, ad)


def aead_decrypt(key: bytes, counter: int, ciphertext: bytes, ad: bytes) -> bytes:
    """Inverse of aead_encrypt; AuthError when the tag does not verify."""
    try:
        return ChaCha20Poly1305(key).decrypt(aead_nonce(counter), ciphertext, ad)
    except InvalidTag:
        raise AuthError("AEAD tag mismatch") from None


# --- HChaCha20 / XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha-03) ---

_SIGMA = struct.unpack("<4I", b"expand 32-byte k")
_M32 = 0xFFFFFFFF


def _quarter_round(s: list[int], a: int, b: int, c: int, d: int) -> None:
    """RFC 8439 §2.1."""
    s[a] = (s[a] + s[b]) & _M32
    x = s[d] ^ s[a]
    s[d] = ((x << 16) | (x >> 16)) & _M32
    s[c] = (s[c] + s[d]) & _M32
    x = s[b] ^ s[c]
    s[b] = ((x << 12) | (x >> 20)) & _M32
    s[a] = (s[a] + s[b]) & _M32
    x = s[d] ^ s[a]
    s[d] = ((x << 8) | (x >> 24)) & _M32
    s[c] = (s[c] + s[d]) & _M32
    x = s[b] ^ s[c]
    s[b] = ((x << 7) | (x >> 25)) & _M32


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20 (draft-irtf-cfrg-xchacha-03 §2.2): 20 rounds, rows 0 and 3, no feed-forward."""
    if len(key) != KEY_LEN or len(nonce16) != 16:
        raise LocalError("HChaCha20 takes a 32-byte key and a 16-byte nonce")
    s = [*_SIGMA, *struct.unpack("<8I", key), *struct.unpack("<4I", nonce16)]
    for _ in range(10):
        _quarter_round(s, 0, 4, 8, 12)
        _quarter_round(s, 1, 5, 9, 13)
        _quarter_round(s, 2, 6, 10, 14)
        _quarter_round(s, 3, 7, 11, 15)
        _quarter_round(s, 0, 5, 10, 15)
        _quarter_round(s, 1, 6, 11, 12)
        _quarter_round(s, 2, 7, 8, 13)
        _quarter_round(s, 3, 4, 9, 14)
    return struct.pack("<8I", *s[0:4], *s[12:16])


def _xchacha_split(key: bytes, nonce: bytes) -> tuple[ChaCha20Poly1305, bytes]:
    """Subkey cipher and 96-bit nonce (draft-irtf-cfrg-xchacha-03 §2.3)."""
    if len(nonce) != XNONCE_LEN:
        raise LocalError("XChaCha20-Poly1305 takes a 24-byte nonce")
    return ChaCha20Poly1305(hchacha20(key, nonce[:16])), b"\x00" * 4 + nonce[16:]


def xaead_encrypt(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """XAEAD(key, nonce, plaintext, ad) of whitepaper §5.4: ciphertext || 16-byte tag."""
    cipher, n12 = _xchacha_split(key, nonce)
    return cipher.encrypt(n12, plaintext, ad)


def xaead_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    """Inverse of xaead_encrypt; AuthError when the tag does not verify."""
    cipher, n12 = _xchacha_split(key, nonce)
    try:
        return cipher.decrypt(n12, ciphertext, ad)
    except InvalidTag:
        raise AuthError("XAEAD tag mismatch") from None


# --- TAI64N (whitepaper §5.1, §5.4.2; wireguard-go tai64n/tai64n.go) ---

TAI64_BASE = 0x400000000000000A  # 2^62 + 10 (TAI - UTC at 1970)
TAI64N_WHITENER_MASK = 0x1000000 - 1  # low 24 bits of the nanoseconds are cleared


def tai64n(wall: float) -> bytes:
    """12-byte TAI64N label of Unix time `wall`, nanoseconds whitened as wireguard-go does.

    Clearing the low 24 bits (≈16.8 ms) hides the precise clock from an observer.
    """
    secs = math.floor(wall)
    nano = min(int((wall - secs) * 1e9), 999_999_999) & ~TAI64N_WHITENER_MASK
    return struct.pack(">QI", TAI64_BASE + secs, nano)


def substream(seed: bytes) -> Callable[[int], bytes]:
    """A deterministic byte stream from ``seed`` (up to 32 bytes; keyed BLAKE2s of a counter): a
    core's own source of jitter, so that how much one core draws shifts no other core's
    randomness (proto/node.py gives the lookup schedule one). Not for secrets or nonces."""
    if not 0 < len(seed) <= 32:
        raise LocalError("a substream seed is 1 to 32 bytes")
    counter = itertools.count()

    def draw(n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.blake2s(struct.pack("<Q", next(counter)), key=seed).digest()
        return out[:n]

    return draw
