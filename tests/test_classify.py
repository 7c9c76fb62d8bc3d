"""The one-socket classifier on binary vectors."""

from __future__ import annotations

import pytest
from aioice import stun

from wgdisco.proto.classify import OTHER, STUN, WIREGUARD, classify


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
    ],
)
def test_vectors(data: bytes, kind: int) -> None:
    assert classify(data) == kind


def test_real_stun_message_from_aioice() -> None:
    msg = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    assert classify(bytes(msg)) == STUN
