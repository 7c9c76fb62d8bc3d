"""Key encodings, in one place.

- base64 (standard alphabet, with padding): what `wg` prints and wg-quick configs hold.
- lowercase padded RFC 4648 base32: the DNS-SD instance label (wgsd layout).
- X25519 private-key clamping as `wg genkey` does it (RFC 7748 §5).
"""

from __future__ import annotations

import base64
import binascii

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from wgdisco.errors import DecodeError

KEY_LEN = 32


def clamp(secret: bytes) -> bytes:
    """Clamp 32 random bytes into an X25519 private key (RFC 7748 §5), as `wg genkey`."""
    if len(secret) != KEY_LEN:
        raise DecodeError(f"a key is {KEY_LEN} bytes, got {len(secret)}")
    b = bytearray(secret)
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


def generate_private_key(random_bytes: bytes) -> bytes:
    """A private key from 32 bytes of randomness supplied by the caller."""
    return clamp(random_bytes)


def public_key(private: bytes) -> bytes:
    """The X25519 public key of a private key."""
    if len(private) != KEY_LEN:
        raise DecodeError(f"a key is {KEY_LEN} bytes, got {len(private)}")
    pub = X25519PrivateKey.from_private_bytes(private).public_key()
    return pub.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_to_base64(key: bytes) -> str:
    if len(key) != KEY_LEN:
        raise DecodeError(f"a key is {KEY_LEN} bytes, got {len(key)}")
    return base64.b64encode(key).decode("ascii")


def key_from_base64(text: str) -> bytes:
    """Decode a wg base64 key; exactly 44 characters that decode to 32 bytes."""
    text = text.strip()
    if len(text) != 44 or not text.endswith("="):
        raise DecodeError("a key is 44 characters of base64 ending in '='")
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise DecodeError("a key must be valid base64") from None
    if len(key) != KEY_LEN:
        raise DecodeError(f"a key is {KEY_LEN} bytes, got {len(key)}")
    return key


def key_to_base32(key: bytes) -> str:
    """The DNS-SD instance label: lowercase padded RFC 4648 base32 (56 characters)."""
    if len(key) != KEY_LEN:
        raise DecodeError(f"a key is {KEY_LEN} bytes, got {len(key)}")
    return base64.b32encode(key).decode("ascii").lower()


def key_from_base32(label: str) -> bytes:
    """Decode an instance label; case-insensitive (DNS is), padding required."""
    text = label.strip()
    if len(text) != 56:
        raise DecodeError("an instance label is 56 characters of base32")
    try:
        key = base64.b32decode(text.upper())
    except (binascii.Error, ValueError):
        raise DecodeError("an instance label must be valid base32") from None
    return key
