"""Path probes: two Probers joined in memory with a fake clock."""

from __future__ import annotations

import hashlib
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wgdisco.errors import DecodeError, LocalError
from wgdisco.proto import probe
from wgdisco.proto.classify import PROBE, classify
from wgdisco.proto.crypto import MAC_LEN
from wgdisco.proto.keys import clamp, public_key
from wgdisco.proto.probe import (
    HEADER_SIZE,
    MIN_REQUEST_SIZE,
    ProbeKeys,
    Prober,
    ProbeRequested,
    ProbeResult,
    ProbeTimeout,
    decode_address,
    encode_address,
)

WALL = 1_700_000_000.0
A_ADDR = ("192.0.2.1", 51820)  # where B sees A's packets come from
B_ADDR = ("198.51.100.2", 51821)  # where A sends to reach B


def keypair(name: bytes) -> tuple[bytes, bytes]:
    private = clamp(hashlib.blake2s(name).digest())
    return private, public_key(private)


A_PRIV, A_PUB = keypair(b"a")
B_PRIV, B_PUB = keypair(b"b")
C_PRIV, C_PUB = keypair(b"c")


def counting_rng(seed: int = 0):
    counter = itertools.count(seed)
    return lambda n: hashlib.blake2s(next(counter).to_bytes(8, "little")).digest()[:n]


def pair(**kwargs) -> tuple[Prober, Prober]:
    a = Prober(A_PRIV, A_PUB, [B_PUB], rng=counting_rng(0), wall=WALL, **kwargs)
    b = Prober(B_PRIV, B_PUB, {A_PUB: "any value"}, rng=counting_rng(1000), wall=WALL + 5, **kwargs)
    return a, b


# ----------------------------------------------------------------------- keys


def test_both_sides_derive_the_same_keys_one_per_direction() -> None:
    ab = ProbeKeys(A_PRIV, A_PUB).for_peer(B_PUB)
    ba = ProbeKeys(B_PRIV, B_PUB).for_peer(A_PUB)
    assert ab.send == ba.recv and ab.recv == ba.send
    assert ab.send != ab.recv
    assert ab.hint == probe.key_hint(B_PUB) and ba.hint == probe.key_hint(A_PUB)
    ac = ProbeKeys(A_PRIV, A_PUB).for_peer(C_PUB)
    assert {ac.send, ac.recv}.isdisjoint({ab.send, ab.recv})


def test_key_misuse_is_a_local_error() -> None:
    with pytest.raises(LocalError):
        ProbeKeys(A_PRIV, B_PUB)
    with pytest.raises(LocalError):
        ProbeKeys(A_PRIV, A_PUB).for_peer(A_PUB)
    with pytest.raises(LocalError):  # low-order point: DH is zero (RFC 7748 §6.1)
        ProbeKeys(A_PRIV, A_PUB).for_peer(bytes(32))
    a, _ = pair()
    with pytest.raises(LocalError):
        a.request(C_PUB, B_ADDR, 0.0)
    with pytest.raises(LocalError):
        a.request(B_PUB, B_ADDR, 0.0, size=MIN_REQUEST_SIZE - 1)


def test_a_low_order_peer_is_accepted_and_muted() -> None:
    """The kernel and wireguard-go accept a low-order public key as a peer and send it nothing
    (wireguard-linux netns.sh); the prober takes it without raising and never probes it."""
    low = (1).to_bytes(32, "little")
    a = Prober(A_PRIV, A_PUB, [B_PUB, low], rng=counting_rng(0), wall=WALL)
    assert a.peers == {B_PUB} and a.muted == {low}
    a.add_peer(low)  # idempotent
    with pytest.raises(LocalError):
        a.request(low, B_ADDR, 0.0)
    a.remove_peer(low)
    assert a.muted == frozenset()
    with pytest.raises(LocalError):  # our own key is still a misuse
        a.add_peer(A_PUB)


# ------------------------------------------------------------------ round trip


def test_round_trip_gives_rtt_and_observed_address() -> None:
    a, b = pair()
    req = a.request(B_PUB, B_ADDR, now=10.0)
    assert len(req) == MIN_REQUEST_SIZE and req[0] == probe.REQUEST_TYPE
    reply, event = b.receive(req, A_ADDR, now=10.02)
    assert event == ProbeRequested(A_PUB, A_ADDR)
    assert reply is not None and reply[0] == probe.RESPONSE_TYPE and len(reply) <= len(req)
    result = ProbeResult(B_PUB, B_ADDR, pytest.approx(0.05), A_ADDR)
    assert a.receive(reply, B_ADDR, now=10.05) == (None, result)
    assert a.outstanding == 0 and a.drops == {} and b.drops == {} and b.replies == 1


def test_ipv6_and_mapped_addresses_are_observed() -> None:
    a, b = pair()
    for seen, expect in [
        (("2001:db8::7", 4500, 0, 0), ("2001:db8::7", 4500)),
        (("::ffff:203.0.113.9", 1, 0, 0), ("203.0.113.9", 1)),
        (("fe80::1%eth0", 65535, 0, 2), ("fe80::1", 65535)),
    ]:
        reply, _ = b.receive(a.request(B_PUB, B_ADDR, 0.0), seen, 0.0)
        assert reply is not None and len(reply) <= MIN_REQUEST_SIZE
        assert a.receive(reply, B_ADDR, 0.0).event.observed == expect


def test_padded_request_for_mtu_tests() -> None:
    a, b = pair()
    req = a.request(B_PUB, B_ADDR, 0.0, size=1420)
    assert len(req) == 1420
    reply, _ = b.receive(req, A_ADDR, 0.0)
    assert reply is not None and len(reply) < 100  # the answer stays small
    assert isinstance(a.receive(reply, B_ADDR, 0.1).event, ProbeResult)


def test_address_codec() -> None:
    assert encode_address(("10.0.0.1", 80)) == b"\x01\x00\x50\x0a\x00\x00\x01"
    assert decode_address(b"\x01\x00\x50\x0a\x00\x00\x01") == ("10.0.0.1", 80)
    for bad in [b"", b"\x01\x00", b"\x03" + bytes(6), b"\x02" + bytes(6)]:
        with pytest.raises(DecodeError):
            decode_address(bad)
    for bad in [("nope", 1), ("10.0.0.1", 70000), 5]:
        with pytest.raises((LocalError, ValueError)):
            encode_address(bad)


def test_custom_address_codec() -> None:
    kw = dict(addr_to_bytes=lambda a: a.encode(), addr_from_bytes=lambda b: b.decode())
    a, b = pair(**kw)
    reply, _ = b.receive(a.request(B_PUB, "to-b", 0.0), "from-a", 0.0)
    assert a.receive(reply, "to-b", 0.0).event.observed == "from-a"
    # a codec that cannot encode what it was given: authenticated request seen, no reply
    _, b2 = pair(addr_to_bytes=lambda a: bytes(40))
    assert b2.receive(a.request(B_PUB, "to-b", 0.0), "from-a", 0.0) == (None, ProbeRequested(A_PUB, "from-a"))
    assert b2.drops == {"bad-address": 1}


# ------------------------------------------------------------- authentication


def test_tampering_any_byte_of_a_request_gets_no_reply() -> None:
    a, b = pair()
    req = a.request(B_PUB, B_ADDR, 0.0)
    for i in range(len(req)):
        bad = bytearray(req)
        bad[i] ^= 0x01
        assert b.receive(bytes(bad), A_ADDR, 0.0) == (None, None), i
    assert b.replies == 0 and sum(b.drops.values()) == len(req)
    assert set(b.drops) <= {"bad-magic", "bad-version", "bad-type", "unknown-peer", "bad-mac"}
    assert b.receive(req, A_ADDR, 0.0).reply is not None  # the original still works (no state kept)


def test_tampering_any_byte_of_a_response_is_dropped_and_the_request_stays_open() -> None:
    a, b = pair()
    req = a.request(B_PUB, B_ADDR, 0.0)
    reply, _ = b.receive(req, A_ADDR, 0.0)
    for i in range(len(reply)):
        bad = bytearray(reply)
        bad[i] ^= 0x80
        assert a.receive(bytes(bad), B_ADDR, 0.0) == (None, None), i
    assert a.outstanding == 1
    assert isinstance(a.receive(reply, B_ADDR, 0.0).event, ProbeResult)


def test_truncated_and_garbage_never_raise() -> None:
    a, b = pair()
    req = a.request(B_PUB, B_ADDR, 0.0)
    reply, _ = b.receive(req, A_ADDR, 0.0)
    for msg in (req, reply):
        for n in range(len(msg)):
            assert b.receive(msg[:n], A_ADDR, 0.0) == (None, None)
            assert a.receive(msg[:n], B_ADDR, 0.0) == (None, None)
    assert a.outstanding == 1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([probe.REQUEST_TYPE, probe.RESPONSE_TYPE]))
def test_random_probe_shaped_bytes_are_dropped(tail: bytes, kind: int) -> None:
    a, _ = pair()
    a.request(B_PUB, B_ADDR, 0.0)
    data = bytes([kind]) + probe.MAGIC + bytes([probe.VERSION]) + tail
    assert a.receive(data, B_ADDR, 0.0) == (None, None)
    assert a.outstanding == 1


def test_unknown_peer_gets_no_reply() -> None:
    a, _ = pair()
    c = Prober(C_PRIV, C_PUB, [B_PUB], rng=counting_rng(7), wall=WALL)  # C knows B, A does not know C
    assert a.receive(c.request(B_PUB, A_ADDR, 0.0), ("203.0.113.3", 9), 0.0) == (None, None)
    assert a.drops == {"unknown-peer": 1}
    # a request C meant for B, shown to A: A knows no C; B does, but not with A's key
    a.add_peer(C_PUB)
    a.remove_peer(C_PUB)
    assert a.receive(c.request(B_PUB, A_ADDR, 0.0), ("203.0.113.3", 9), 0.0) == (None, None)


def test_request_to_the_wrong_node_fails_the_mac() -> None:
    # C knows both A and B; its request to B has C's hint, which A also knows, but the key is C-B.
    a, _ = pair()
    a.add_peer(C_PUB)
    c = Prober(C_PRIV, C_PUB, [A_PUB, B_PUB], rng=counting_rng(7), wall=WALL)
    assert a.receive(c.request(B_PUB, B_ADDR, 0.0), ("203.0.113.3", 9), 0.0) == (None, None)
    assert a.drops == {"bad-mac": 1}


def test_removed_peer_is_forgotten() -> None:
    a, b = pair()
    req = a.request(B_PUB, B_ADDR, 0.0)
    reply, _ = b.receive(req, A_ADDR, 0.0)
    a.remove_peer(B_PUB)
    assert a.outstanding == 0 and a.peers == frozenset()
    assert a.receive(reply, B_ADDR, 0.0) == (None, None)
    b.remove_peer(A_PUB)
    assert b.receive(req, A_ADDR, 0.0) == (None, None)
    assert b.drops == {"unknown-peer": 1}


# ---------------------------------------------------------------------- replay


def test_replayed_request_gets_no_second_reply() -> None:
    a, b = pair()
    req = a.request(B_PUB, B_ADDR, 0.0)
    assert b.receive(req, A_ADDR, 0.0).reply is not None
    assert b.receive(req, A_ADDR, 1.0) == (None, None)
    assert b.receive(req, ("203.0.113.66", 1), 2.0) == (None, None)  # from elsewhere too
    assert b.drops == {"replay": 2}


def test_reordered_requests_within_the_window_are_answered() -> None:
    a, b = pair()
    reqs = [a.request(B_PUB, B_ADDR, 0.0) for _ in range(5)]
    for req in reversed(reqs):
        assert b.receive(req, A_ADDR, 0.0).reply is not None
    assert b.drops == {}


def test_a_restarted_sender_is_still_answered() -> None:
    a, b = pair()
    b.receive(a.request(B_PUB, B_ADDR, 0.0), A_ADDR, 0.0)
    again = Prober(A_PRIV, A_PUB, [B_PUB], rng=counting_rng(99), wall=WALL + 1.0)
    assert b.receive(again.request(B_PUB, B_ADDR, 0.0), A_ADDR, 0.0).reply is not None


def test_response_is_accepted_once_and_only_for_its_request() -> None:
    a, b = pair()
    req = a.request(B_PUB, B_ADDR, 0.0)
    reply, _ = b.receive(req, A_ADDR, 0.0)
    assert isinstance(a.receive(reply, B_ADDR, 0.1).event, ProbeResult)
    assert a.receive(reply, B_ADDR, 0.2) == (None, None)
    assert a.drops == {"unexpected-response": 1}
    # an answer from a prober that never got our request: its id is not outstanding
    a2, _ = pair()
    assert a2.receive(reply, B_ADDR, 0.0) == (None, None)
    assert a2.drops == {"unexpected-response": 1}


def test_response_from_another_address_is_not_accepted() -> None:
    a, b = pair()
    reply, _ = b.receive(a.request(B_PUB, B_ADDR, 0.0), A_ADDR, 0.0)
    assert a.receive(reply, ("203.0.113.77", 51821), 0.1) == (None, None)
    assert a.drops == {"addr-mismatch": 1}
    assert isinstance(a.receive(reply, B_ADDR, 0.1).event, ProbeResult)


def test_responses_are_not_reflected() -> None:
    # A's own request shown back to A, and B's response shown to B: neither is accepted.
    a, b = pair()
    req = a.request(B_PUB, B_ADDR, 0.0)
    assert a.receive(req, B_ADDR, 0.0) == (None, None)
    reply, _ = b.receive(req, A_ADDR, 0.0)
    assert b.receive(reply, A_ADDR, 0.0) == (None, None)


# ------------------------------------------------------------------- timeouts


def test_unanswered_requests_time_out_in_order() -> None:
    a, _ = pair(timeout=2.0)
    assert a.get_timer() is None
    a.request(B_PUB, ("x", 1), 0.0)
    a.request(B_PUB, ("y", 2), 1.0)
    assert a.get_timer() == 2.0
    assert a.handle_timer(1.9) == []
    assert a.handle_timer(2.0) == [ProbeTimeout(B_PUB, ("x", 1))]
    assert a.get_timer() == 3.0
    assert a.handle_timer(5.0) == [ProbeTimeout(B_PUB, ("y", 2))]
    assert a.get_timer() is None and a.outstanding == 0


def test_an_answer_after_the_timeout_still_proves_the_path_within_the_late_window() -> None:
    """A starved responder answers late: the timeout is reported (the selector counts a miss), and
    the late answer is still a result (once), until LATE_WINDOW after the timeout; then it is
    unexpected. The late ids are bounded like the outstanding ones."""
    a, b = pair(timeout=3.0)
    req = a.request(B_PUB, B_ADDR, 0.0)
    reply, _ = b.receive(req, A_ADDR, 4.0)
    assert a.handle_timer(3.0) == [ProbeTimeout(B_PUB, B_ADDR)]
    got = a.receive(reply, B_ADDR, 4.5).event
    assert isinstance(got, ProbeResult) and got.rtt == 4.5 and a.late_answers == 1
    assert a.receive(reply, B_ADDR, 4.6) == (None, None)  # once
    old = a.request(B_PUB, B_ADDR, 10.0)
    old_reply, _ = b.receive(old, A_ADDR, 10.0)
    a.handle_timer(13.0)
    a.handle_timer(13.0 + probe.LATE_WINDOW)
    assert a.receive(old_reply, B_ADDR, 13.0 + probe.LATE_WINDOW) == (None, None)
    assert a.drops == {"unexpected-response": 2} and a.late_answers == 1
    small, _ = pair(max_outstanding=2)
    for i in range(5):
        small.request(B_PUB, ("h", i), 0.0)
    small.handle_timer(10.0)
    assert small.outstanding == 0 and small.late_kept <= 2  # bounded: the newest kept


def test_outstanding_is_bounded() -> None:
    a, _ = pair(max_outstanding=3)
    for i in range(5):
        a.request(B_PUB, ("h", i), float(i))
    assert a.outstanding == 3
    assert a.get_timer() == 4.0  # two were given up at t=3 and t=4
    assert a.handle_timer(4.0) == [ProbeTimeout(B_PUB, ("h", 0)), ProbeTimeout(B_PUB, ("h", 1))]
    assert a.get_timer() == 2.0 + probe.PROBE_TIMEOUT


# ------------------------------------------------------------ no amplification


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(min_value=HEADER_SIZE + MAC_LEN, max_value=1500),
    v6=st.booleans(),
    port=st.integers(min_value=0, max_value=65535),
)
def test_response_is_never_larger_than_request(size: int, v6: bool, port: int) -> None:
    a, b = pair()
    req = a.request(B_PUB, B_ADDR, 0.0, size=max(size, MIN_REQUEST_SIZE))
    if size < MIN_REQUEST_SIZE:  # a short request (built by hand) is dropped before any check
        req = req[: size - MAC_LEN] + req[-MAC_LEN:]
    seen = ("2001:db8::1", port, 0, 0) if v6 else ("192.0.2.9", port)
    reply, _ = b.receive(req, seen, 0.0)
    if size < MIN_REQUEST_SIZE:
        assert reply is None
    else:
        assert reply is not None and len(reply) <= len(req)


def test_a_reply_that_would_be_larger_is_not_sent() -> None:
    # a codec with long addresses: 28 + 1 + 32 + 16 = 77 > 64
    a, b = pair(addr_to_bytes=lambda addr: bytes(32))
    req = a.request(B_PUB, B_ADDR, 0.0)
    assert b.receive(req, A_ADDR, 0.0) == (None, ProbeRequested(A_PUB, A_ADDR))
    assert b.drops == {"reply-too-large": 1}
    assert b.receive(a.request(B_PUB, B_ADDR, 0.0, size=80), A_ADDR, 0.0).reply is not None


# ------------------------------------------------------------------ rate limit


def test_replies_are_rate_limited_per_peer() -> None:
    a, b = pair(per_second=10, burst=5)
    c = Prober(C_PRIV, C_PUB, [B_PUB], rng=counting_rng(5), wall=WALL)
    b.add_peer(C_PUB)
    answered = [b.receive(a.request(B_PUB, B_ADDR, 0.0), A_ADDR, 0.0).reply is not None for _ in range(8)]
    assert answered == [True] * 5 + [False] * 3
    assert b.drops == {"rate-limited": 3}
    # another peer has its own bucket
    assert b.receive(c.request(B_PUB, B_ADDR, 0.0), ("203.0.113.3", 9), 0.0).reply is not None
    # tokens come back: 10 a second
    assert b.receive(a.request(B_PUB, B_ADDR, 0.1), A_ADDR, 0.1).reply is not None
    assert b.receive(a.request(B_PUB, B_ADDR, 0.1), A_ADDR, 0.1).reply is None
    # a rate-limited request is still reported as seen (it was authentic)
    assert b.receive(a.request(B_PUB, B_ADDR, 0.1), A_ADDR, 0.1).event == ProbeRequested(A_PUB, A_ADDR)


def test_forged_requests_do_not_spend_a_peers_tokens() -> None:
    a, b = pair(per_second=10, burst=2)
    for _ in range(50):
        forged = bytearray(a.request(B_PUB, B_ADDR, 0.0))
        forged[-1] ^= 1
        b.receive(bytes(forged), A_ADDR, 0.0)
    assert b.drops == {"bad-mac": 50}
    assert b.receive(a.request(B_PUB, B_ADDR, 0.0), A_ADDR, 0.0).reply is not None


# -------------------------------------------------------------------- classify


def test_classify_says_probe_for_both_messages() -> None:
    a, b = pair()
    req = a.request(B_PUB, B_ADDR, 0.0)
    reply, _ = b.receive(req, A_ADDR, 0.0)
    assert classify(req) == PROBE and classify(reply) == PROBE
    assert classify(memoryview(req)) == PROBE
