"""wgdisco.proto.crypto: published vectors, and independent references built from stdlib."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given
from hypothesis import strategies as st

from wgdisco.errors import AuthError, LocalError
from wgdisco.proto import crypto
from wgdisco.proto.crypto import (
    DH,
    HASH,
    HMAC,
    KDF1,
    KDF2,
    KDF3,
    MAC,
    aead_decrypt,
    aead_encrypt,
    aead_nonce,
    hchacha20,
    is_low_order,
    tai64n,
    xaead_decrypt,
    xaead_encrypt,
)
from wgdisco.proto.keys import clamp, public_key

XCHACHA = json.loads((Path(__file__).resolve().parents[1] / "vectors" / "xchacha.json").read_text())
h = bytes.fromhex


# --- HChaCha20 / XChaCha20-Poly1305: draft-irtf-cfrg-xchacha-03 §2.2.1, §A.3.1 ---


@pytest.mark.parametrize("v", XCHACHA["hchacha20"], ids=lambda v: v["section"])
def test_hchacha20_vector(v: dict) -> None:
    assert hchacha20(h(v["key"]), h(v["nonce"])) == h(v["subkey"])


@pytest.mark.parametrize("v", XCHACHA["xchacha20poly1305"], ids=lambda v: v["section"])
def test_xchacha20poly1305_vector(v: dict) -> None:
    key, nonce, aad, pt = h(v["key"]), h(v["nonce"]), h(v["aad"]), h(v["plaintext"])
    sealed = h(v["ciphertext"]) + h(v["tag"])
    assert xaead_encrypt(key, nonce, pt, aad) == sealed
    assert xaead_decrypt(key, nonce, sealed, aad) == pt


@pytest.mark.parametrize("where", ["ciphertext", "tag", "aad", "nonce"])
def test_xaead_tamper_is_auth_error(where: str) -> None:
    v = XCHACHA["xchacha20poly1305"][0]
    key, nonce, aad = h(v["key"]), bytearray(h(v["nonce"])), bytearray(h(v["aad"]))
    sealed = bytearray(h(v["ciphertext"]) + h(v["tag"]))
    target = {"ciphertext": sealed, "tag": sealed, "aad": aad, "nonce": nonce}[where]
    target[-1 if where == "tag" else 0] ^= 1
    with pytest.raises(AuthError):
        xaead_decrypt(key, bytes(nonce), bytes(sealed), bytes(aad))


def test_xaead_rejects_short_nonce() -> None:
    with pytest.raises(LocalError):
        xaead_encrypt(bytes(32), bytes(12), b"", b"")


# --- HASH, MAC, HMAC, KDF ---


def test_hash_and_mac_are_blake2s() -> None:
    assert HASH(b"ab", b"c") == hashlib.blake2s(b"abc").digest()
    assert MAC(b"k" * 32, b"a", b"bc") == hashlib.blake2s(b"abc", key=b"k" * 32, digest_size=16).digest()


@given(key=st.binary(max_size=130), data=st.binary(max_size=300))
def test_hmac_matches_stdlib(key: bytes, data: bytes) -> None:
    assert HMAC(key, data) == hmac.new(key, data, hashlib.blake2s).digest()


def _hkdf_reference(key: bytes, data: bytes, n: int) -> list[bytes]:
    """RFC 5869 expand with empty info, as whitepaper §5.4 Kdf_n (stdlib only)."""
    prk = hmac.new(key, data, hashlib.blake2s).digest()
    out, t = [], b""
    for i in range(1, n + 1):
        t = hmac.new(prk, t + bytes([i]), hashlib.blake2s).digest()
        out.append(t)
    return out


@given(key=st.binary(max_size=64), data=st.binary(max_size=100))
def test_kdf_matches_hkdf_reference(key: bytes, data: bytes) -> None:
    ref = _hkdf_reference(key, data, 3)
    assert KDF1(key, data) == ref[0]
    assert list(KDF2(key, data)) == ref[:2]
    assert list(KDF3(key, data)) == ref


# wireguard-go device/kdf_test.go
KDF_VECTORS = [
    (
        "746573742d6b6579",
        "746573742d696e707574",
        "6f0e5ad38daba1bea8a0d213688736f19763239305e0f58aba697f9ffc41c633",
        "df1194df20802a4fe594cde27e92991c8cae66c366e8106aaa937a55fa371e8a",
        "fac6e2745a325f5dc5d11a5b165aad08b0ada28e7b4e666b7c077934a4d76c24",
    ),
    (
        "776972656775617264",
        "776972656775617264",
        "491d43bbfdaa8750aaf535e334ecbfe5129967cd64635101c566d4caefda96e8",
        "1e71a379baefd8a79aa4662212fcafe19a23e2b609a3db7d6bcba8f560e3d25f",
        "31e1ae48bddfbe5de38f295e5452b1909a1b4e38e183926af3780b0c1e1f0160",
    ),
    (
        "",
        "",
        "8387b46bf43eccfcf349552a095d8315c4055beb90208fb1be23b894bc2ed5d0",
        "58a0e5f6faefccf4807bff1f05fa8a9217945762040bcec2f4b4a62bdfe0e86e",
        "0ce6ea98ec548f8e281e93e32db65621c45eb18dc6f0a7ad94178610a2f7338e",
    ),
]


@pytest.mark.parametrize("key,data,t0,t1,t2", KDF_VECTORS)
def test_kdf_wireguard_go_vectors(key: str, data: str, t0: str, t1: str, t2: str) -> None:
    assert KDF3(h(key), h(data)) == (h(t0), h(t1), h(t2))
    assert KDF2(h(key), h(data)) == (h(t0), h(t1))
    assert KDF1(h(key), h(data)) == h(t0)


# --- DH: RFC 7748 §6.1 and low-order points ---


def test_dh_rfc7748_vector() -> None:
    alice = h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    bob = h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    assert public_key(alice) == h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    shared = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert DH(alice, public_key(bob)) == shared == DH(bob, public_key(alice))


LOW_ORDER = [
    bytes(32),  # u = 0
    (1).to_bytes(32, "little"),  # u = 1
    h("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),  # order 8
]


@pytest.mark.parametrize("point", LOW_ORDER, ids=["zero", "one", "order8"])
def test_dh_low_order_point_is_auth_error(point: bytes) -> None:
    with pytest.raises(AuthError):
        DH(h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"), point)


# The low-order points of wireguard-linux's netns.sh ("send nothing" section), in wg's base64:
# u = 0, 1, two of order 8, and p-1, p, p+1 (non-canonical encodings, RFC 7748 §5).
NETNS_LOW_ORDER = [
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    "4Ot6fDtBuK4WVuP68Z/EatoJjeucMrH9hmIFFl9JuAA=", "X5yVvKNQjCSx0LFVnIPvWwREXMRYHI6G2CJO3dCfEVc=",
    "7P///////////////////////////////////////38=", "7f///////////////////////////////////////38=",
    "7v///////////////////////////////////////38=",
]


@pytest.mark.parametrize("text", NETNS_LOW_ORDER)
def test_is_low_order_knows_the_netns_sh_points(text: str) -> None:
    point = base64.b64decode(text)
    assert is_low_order(point)
    with pytest.raises(AuthError):  # whatever the private key
        DH(h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"), point)


def test_is_low_order_is_false_for_ordinary_keys() -> None:
    assert not is_low_order(h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"))
    for i in range(50):
        assert not is_low_order(public_key(clamp(hashlib.blake2s(bytes([i])).digest())))


# --- AEAD: whitepaper §5.4 nonce layout ---


def test_aead_nonce_layout() -> None:
    assert aead_nonce(0) == bytes(12)
    assert aead_nonce(1) == bytes(4) + b"\x01" + bytes(7)
    assert aead_nonce(0x0102030405060708) == bytes(4) + bytes([8, 7, 6, 5, 4, 3, 2, 1])
    assert aead_nonce(2**64 - 1) == bytes(4) + b"\xff" * 8


@given(counter=st.integers(0, 2**64 - 1), pt=st.binary(max_size=64), ad=st.binary(max_size=32))
def test_aead_is_chacha20poly1305_with_counter_nonce(counter: int, pt: bytes, ad: bytes) -> None:
    key = HASH(b"aead test key")
    nonce = b"\x00\x00\x00\x00" + struct.pack("<Q", counter)
    sealed = aead_encrypt(key, counter, pt, ad)
    assert sealed == ChaCha20Poly1305(key).encrypt(nonce, pt, ad)
    assert aead_decrypt(key, counter, sealed, ad) == pt


def test_aead_wrong_counter_or_tamper_is_auth_error() -> None:
    key = HASH(b"k")
    sealed = aead_encrypt(key, 7, b"payload", b"ad")
    with pytest.raises(AuthError):
        aead_decrypt(key, 8, sealed, b"ad")
    with pytest.raises(AuthError):
        aead_decrypt(key, 7, sealed[:-1] + bytes([sealed[-1] ^ 1]), b"ad")
    with pytest.raises(AuthError):
        aead_decrypt(key, 7, sealed[:10], b"ad")


def test_encrypt_into_available() -> None:
    # cryptography >= 47 (pyproject) has the in-place variants the data plane may use.
    assert crypto.HAS_ENCRYPT_INTO and crypto.HAS_DECRYPT_INTO


# --- TAI64N: wireguard-go tai64n/tai64n.go ---


def test_tai64n_encoding() -> None:
    # 1700000000 s + 0.5 s; label 2^62 + 10 + s, nanoseconds with the low 24 bits cleared
    assert tai64n(1700000000.5) == struct.pack(">QI", 0x400000000000000A + 1700000000, 500000000 & ~0xFFFFFF)
    assert tai64n(0.0) == h("400000000000000a00000000")


# wireguard-go tai64n_test.go TestMonotonic: whitening hides differences below ~16.8 ms
@pytest.mark.parametrize(
    "delta,after",
    [(10e-9, False), (10e-6, False), (1e-3, False), (10e-3, False), (20e-3, True)],
)
def test_tai64n_whitened(delta: float, after: bool) -> None:
    start = 0.123456789
    assert (tai64n(start + delta) > tai64n(start)) is after


@given(a=st.floats(0, 2**40), b=st.floats(0, 2**40))
def test_tai64n_monotonic(a: float, b: float) -> None:
    lo, hi = sorted((a, b))
    assert tai64n(lo) <= tai64n(hi)
    assert len(tai64n(lo)) == 12


def test_a_substream_is_deterministic_per_seed_and_independent_of_how_it_is_drawn() -> None:
    from wgdisco.errors import LocalError
    from wgdisco.proto.crypto import substream

    a, b = substream(b"seed-1"), substream(b"seed-1")
    assert a(2) + a(40) == b(2) + b(40)  # the same seed, the same draws
    assert substream(b"seed-2")(16) != substream(b"seed-1")(16)
    assert len(substream(bytes(32))(100)) == 100
    for bad in (b"", bytes(33)):
        with pytest.raises(LocalError):
            substream(bad)
