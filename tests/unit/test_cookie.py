"""wgdisco.proto.cookie: mac1, mac2, cookie replies (whitepaper §5.4.4, §5.4.7), fake clock."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest

from wgdisco.errors import AuthError, DecodeError, LocalError
from wgdisco.proto.cookie import COOKIE_REFRESH_TIME, CookieChecker, CookieGenerator
from wgdisco.proto.crypto import HASH, MAC
from wgdisco.proto.keys import clamp, public_key
from wgdisco.proto.noise import (
    MESSAGE_COOKIE_REPLY_SIZE,
    Handshake,
    MessageCookieReply,
    StaticIdentity,
    consume_initiation,
    create_initiation,
)

PUB = public_key(clamp(HASH(b"cookie responder")))
SRC = bytes([192, 168, 13, 37, 10, 10])  # ip || port, opaque
OTHER_SRCS = [bytes([192, 168, 13, 37, 40, 1]), bytes([192, 168, 13, 38, 10, 10])]


def fake_rng(seed: bytes = b"") -> Callable[[int], bytes]:
    """Deterministic, never repeating: HASH(seed || counter) stream."""
    counter = 0

    def rng(n: int) -> bytes:
        nonlocal counter
        out = b""
        while len(out) < n:
            counter += 1
            out += HASH(seed, counter.to_bytes(8, "little"))
        return out[:n]

    return rng


# message bodies of several lengths, as wireguard-go device/cookie_test.go uses
MESSAGES = [bytes(range(i, i + n)) for i, n in ((0, 128), (7, 64), (9, 32), (3, 148), (5, 92))]


@pytest.fixture
def pair() -> tuple[CookieChecker, CookieGenerator]:
    return CookieChecker(PUB), CookieGenerator(PUB)


def got_cookie(checker: CookieChecker, generator: CookieGenerator, now: float, seed: bytes = b"") -> None:
    msg = generator.add_macs(MESSAGES[0], now=now)
    reply = checker.create_reply(msg, 1377, SRC, now=now, rng=fake_rng(seed))
    generator.consume_reply(reply, now=now)


# --- mac1 ---


@pytest.mark.parametrize("body", MESSAGES, ids=lambda m: str(len(m)))
def test_mac1_verifies_and_no_mac2_without_cookie(pair, body: bytes) -> None:
    checker, generator = pair
    msg = generator.add_macs(body, now=0.0)
    assert len(msg) == len(body) and msg[:-32] == body[:-32]
    assert checker.check_mac1(msg)
    assert msg[-16:] == bytes(16)
    assert not checker.check_mac2(msg, SRC, now=0.0)


def test_mac1_is_keyed_blake2s_of_label_and_public_key(pair) -> None:
    _, generator = pair
    msg = generator.add_macs(MESSAGES[3], now=0.0)
    assert msg[-32:-16] == MAC(HASH(b"mac1----", PUB), msg[:-32])


def test_mac1_wrong_key_or_tamper(pair) -> None:
    checker, generator = pair
    msg = generator.add_macs(MESSAGES[3], now=0.0)
    assert not CookieChecker(public_key(clamp(HASH(b"other")))).check_mac1(msg)
    for i in (0, 50, len(msg) - 17):
        bad = bytearray(msg)
        bad[i] ^= 0x20
        assert not checker.check_mac1(bytes(bad))
    assert not checker.check_mac1(msg[:31])


def test_add_macs_accepts_bytearray_and_ignores_old_macs(pair) -> None:
    _, generator = pair
    dirty = bytearray(MESSAGES[3][:-32] + b"\xff" * 32)
    assert generator.add_macs(dirty, now=0.0) == generator.add_macs(MESSAGES[3], now=0.0)
    with pytest.raises(LocalError):
        generator.add_macs(b"short", now=0.0)


# --- cookie reply and mac2 ---


def test_cookie_reply_round_trip_and_mac2(pair) -> None:
    checker, generator = pair
    got_cookie(checker, generator, now=10.0)
    for body in MESSAGES:
        msg = generator.add_macs(body, now=11.0)
        assert checker.check_mac1(msg) and checker.check_mac2(msg, SRC, now=11.0)
        for src in OTHER_SRCS:
            assert not checker.check_mac2(msg, src, now=11.0)
        bad = bytearray(msg)
        bad[5] ^= 0x20
        assert not checker.check_mac1(bytes(bad)) and not checker.check_mac2(bytes(bad), SRC, now=11.0)


def test_cookie_reply_layout() -> None:
    checker = CookieChecker(PUB)
    msg = CookieGenerator(PUB).add_macs(MESSAGES[3], now=0.0)
    rng = fake_rng(b"x")
    reply = checker.create_reply(msg, 0xDEADBEEF, SRC, now=0.0, rng=rng)
    assert len(reply) == MESSAGE_COOKIE_REPLY_SIZE
    assert reply[:8] == struct.pack("<II", 3, 0xDEADBEEF)
    expected = fake_rng(b"x")
    expected(32)  # the secret is drawn first
    assert MessageCookieReply.unpack(reply).nonce == expected(24)


def test_fresh_nonce_per_reply(pair) -> None:
    checker, generator = pair
    msg = generator.add_macs(MESSAGES[3], now=0.0)
    rng = fake_rng()
    r1 = checker.create_reply(msg, 1, SRC, now=0.0, rng=rng)
    r2 = checker.create_reply(msg, 1, SRC, now=0.0, rng=rng)
    assert r1[8:32] != r2[8:32]


def test_mac2_on_a_real_initiation() -> None:
    ini, res = StaticIdentity(clamp(HASH(b"i"))), StaticIdentity(clamp(HASH(b"r")))
    hs_i, hs_r = Handshake(ini, res.public), Handshake(res, ini.public)
    checker, generator = CookieChecker(res.public), CookieGenerator(res.public)
    def initiation(eph: bytes, wall: float, now: float) -> bytes:
        msg = create_initiation(ini, hs_i, sender_index=1, ephemeral_private=clamp(HASH(eph)), wall=wall)
        return generator.add_macs(msg, now=now)

    first = initiation(b"e1", 1e9, 0.0)
    assert checker.check_mac1(first) and not checker.check_mac2(first, SRC, now=0.0)
    generator.consume_reply(checker.create_reply(first, 1, SRC, now=0.0, rng=fake_rng()), now=0.0)
    again = initiation(b"e2", 1e9 + 1, 1.0)
    assert checker.check_mac1(again) and checker.check_mac2(again, SRC, now=1.0)
    assert consume_initiation(res, again, lambda pk: hs_r, now=1.0) is hs_r


# --- time: cookie expiry and secret rotation (whitepaper §6.1 Cookie-Refresh-Time) ---


def test_generator_cookie_expires_after_120s(pair) -> None:
    checker, generator = pair
    got_cookie(checker, generator, now=0.0)
    assert generator.add_macs(MESSAGES[0], now=COOKIE_REFRESH_TIME)[-16:] != bytes(16)
    assert generator.add_macs(MESSAGES[0], now=COOKIE_REFRESH_TIME + 0.001)[-16:] == bytes(16)


def test_checker_secret_expires_after_120s(pair) -> None:
    checker, generator = pair
    got_cookie(checker, generator, now=0.0)
    msg = generator.add_macs(MESSAGES[0], now=100.0)
    assert checker.check_mac2(msg, SRC, now=COOKIE_REFRESH_TIME)
    assert not checker.check_mac2(msg, SRC, now=COOKIE_REFRESH_TIME + 0.001)


def test_secret_rotates_and_old_cookies_die(pair) -> None:
    checker, generator = pair
    got_cookie(checker, generator, now=0.0)
    old = generator.add_macs(MESSAGES[0], now=1.0)
    # within the refresh time a new reply reuses the secret: the old cookie still works
    checker.create_reply(old, 1, SRC, now=60.0, rng=fake_rng(b"second"))
    assert checker.check_mac2(old, SRC, now=60.0)
    # after it, the next reply draws a new secret: the old cookie is refused, the new one works
    got_cookie(checker, generator, now=200.0, seed=b"third")
    assert not checker.check_mac2(old, SRC, now=200.0)
    assert checker.check_mac2(generator.add_macs(MESSAGES[0], now=200.0), SRC, now=200.0)


# --- replies that must be refused ---


def test_reply_to_a_different_mac1_rejected(pair) -> None:
    checker, generator = pair
    sent = generator.add_macs(MESSAGES[0], now=0.0)
    other = CookieGenerator(PUB).add_macs(MESSAGES[1], now=0.0)
    assert sent[-32:-16] != other[-32:-16]
    with pytest.raises(AuthError):
        generator.consume_reply(checker.create_reply(other, 1, SRC, now=0.0, rng=fake_rng()), now=0.0)
    assert generator.add_macs(MESSAGES[0], now=0.0)[-16:] == bytes(16)  # no cookie taken


def test_reply_for_an_older_message_rejected(pair) -> None:
    checker, generator = pair
    first = generator.add_macs(MESSAGES[0], now=0.0)
    generator.add_macs(MESSAGES[1], now=0.0)  # mac1 moved on
    with pytest.raises(AuthError):
        generator.consume_reply(checker.create_reply(first, 1, SRC, now=0.0, rng=fake_rng()), now=0.0)


def test_reply_without_a_sent_message_rejected(pair) -> None:
    checker, generator = pair
    msg = CookieGenerator(PUB).add_macs(MESSAGES[0], now=0.0)
    with pytest.raises(AuthError):
        generator.consume_reply(checker.create_reply(msg, 1, SRC, now=0.0, rng=fake_rng()), now=0.0)


def test_reply_from_another_responder_key_rejected() -> None:
    generator = CookieGenerator(PUB)
    msg = generator.add_macs(MESSAGES[0], now=0.0)
    stranger = CookieChecker(public_key(clamp(HASH(b"stranger"))))
    with pytest.raises(AuthError):
        generator.consume_reply(stranger.create_reply(msg, 1, SRC, now=0.0, rng=fake_rng()), now=0.0)


@pytest.mark.parametrize("i", [8, 20, 31, 40, 63])
def test_tampered_reply_rejected(pair, i: int) -> None:
    checker, generator = pair
    msg = generator.add_macs(MESSAGES[0], now=0.0)
    reply = bytearray(checker.create_reply(msg, 1, SRC, now=0.0, rng=fake_rng()))
    reply[i] ^= 1
    with pytest.raises(AuthError):
        generator.consume_reply(bytes(reply), now=0.0)


@pytest.mark.parametrize(
    "reply", [b"", bytes(63), b"\x03\x00\x00\x00" + bytes(61), b"\x02\x00\x00\x00" + bytes(60)]
)
def test_malformed_reply_is_decode_error(pair, reply: bytes) -> None:
    _, generator = pair
    generator.add_macs(MESSAGES[0], now=0.0)
    with pytest.raises(DecodeError):
        generator.consume_reply(reply, now=0.0)


def test_short_rng_is_local_error(pair) -> None:
    checker, generator = pair
    msg = generator.add_macs(MESSAGES[0], now=0.0)
    with pytest.raises(LocalError):
        checker.create_reply(msg, 1, SRC, now=0.0, rng=lambda n: bytes(n - 1))
