"""The one-socket classifier on binary vectors."""

from __future__ import annotations

import pytest
from aioice import stun
from hypothesis import given
from hypothesis import strategies as st

from wgdisco.proto.classify import OTHER, PROBE, STUN, WIREGUARD, classify


@pytest.mark.parametrize(
    "data,kind",
    [
        (bytes([1, 0, 0, 0]) + bytes(144), WIREGUARD),
        (bytes([2, 0, 0, 0]) + bytes(88), WIREGUARD),
        (bytes([3, 0, 0, 0]) + bytes(60), WIREGUARD),
        (bytes([4, 0, 0, 0]) + bytes(28), WIREGUARD),
        (bytes([5, 0, 0, 0]) + bytes(28), OTHER),
        (bytes([0, 0, 0, 0]) + bytes(28), OTHER),
        (bytes([4, 0, 0, 1]) + bytes(28), OTHER),
        (bytes([4, 0, 0]), OTHER),
        (b"", OTHER),
        (b"\x00\x01\x00\x00\x21\x12\xa4\x42" + bytes(12), STUN),  # Binding request, no attributes
        (b"\x01\x01\x00\x00\x21\x12\xa4\x42" + bytes(12), STUN),  # Binding success
        (b"\xc0\x01\x00\x00\x21\x12\xa4\x42" + bytes(12), OTHER),  # top bits set
        (b"\x00\x01\x00\x00\x21\x12\xa4\x43" + bytes(12), OTHER),  # wrong cookie
        (b"\x00\x01\x00\x00\x21\x12\xa4\x42" + bytes(11), OTHER),  # short header
        (b"\xf1wd\x01" + bytes(60), PROBE),  # path probe request (probe.py)
        (b"\xf2wd\x01" + bytes(48), PROBE),  # path probe response
        (b"\xf2wd", PROBE),  # short: still the prober's to drop and count
        (b"\xf3wd\x01" + bytes(60), OTHER),  # no such probe type
        (b"\xf1wD\x01" + bytes(60), OTHER),  # wrong magic
        (b"\xf1w", OTHER),
    ],
)
def test_vectors(data: bytes, kind: int) -> None:
    assert classify(data) == kind


def test_real_stun_message_from_aioice() -> None:
    msg = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    assert classify(bytes(msg)) == STUN


_WIREGUARD_SHAPED = st.builds(
    lambda t, rest: bytes([t, 0, 0, 0]) + rest, st.integers(1, 4), st.binary(max_size=200)
)
_STUN_SHAPED = st.builds(
    lambda b0, b1_3, rest: bytes([b0]) + b1_3 + b"\x21\x12\xa4\x42" + rest,
    st.integers(0, 0x3F), st.binary(min_size=3, max_size=3), st.binary(min_size=12, max_size=200),
)
_PROBE_SHAPED = st.builds(
    lambda t, rest: bytes([t]) + b"wd" + rest, st.sampled_from([0xF1, 0xF2]), st.binary(max_size=200)
)


@given(_WIREGUARD_SHAPED)
def test_wireguard_shaped_is_never_a_probe(data: bytes) -> None:
    assert classify(data) == WIREGUARD


@given(_STUN_SHAPED)
def test_stun_shaped_is_never_a_probe(data: bytes) -> None:
    # STUN type 0x01xx/0x02xx.. with a zero length byte can look like WireGuard, which wins
    wireguard_like = 1 <= data[0] <= 4 and data[1:4] == bytes(3)
    assert classify(data) == (WIREGUARD if wireguard_like else STUN)


@given(_PROBE_SHAPED)
def test_probe_shaped_is_never_wireguard_or_stun(data: bytes) -> None:
    assert classify(data) == PROBE


@given(st.binary(max_size=64))
def test_a_probe_needs_its_type_and_magic(data: bytes) -> None:
    is_probe = len(data) >= 3 and data[0] in (0xF1, 0xF2) and data[1:3] == b"wd"
    assert (classify(data) == PROBE) == is_probe
