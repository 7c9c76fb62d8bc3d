"""NAT-PMP messages (RFC 6886) on binary vectors laid out as the RFC's figures."""

from __future__ import annotations

import pytest

from wgdisco.errors import DecodeError, LocalError
from wgdisco.proto import natpmp


def test_requests_match_the_rfc_layout() -> None:
    assert natpmp.external_address_request() == bytes.fromhex("0000")  # §3.2: Vers 0, OP 0
    # §3.3: Vers 0, OP 1, Reserved, Internal Port 51820, Suggested External Port 51820, Lifetime 7200
    assert natpmp.map_request(51820, 51820, 7200) == bytes.fromhex("0001 0000 ca6c ca6c 00001c20")
    # §3.4: delete: lifetime 0 and external port 0
    assert natpmp.map_request(51820, 0, 0) == bytes.fromhex("0001 0000 ca6c 0000 00000000")


@pytest.mark.parametrize("args", [(0, 1, 1), (65536, 1, 1), (1, -1, 1), (1, 1, 2**32)])
def test_out_of_range_requests_are_our_bug(args: tuple[int, int, int]) -> None:
    with pytest.raises(LocalError):
        natpmp.map_request(*args)


def test_external_address_response() -> None:
    # §3.2: Vers 0, OP 128, Result 0, epoch 1000, 203.0.113.1
    r = natpmp.parse_response(bytes.fromhex("0080 0000 000003e8 cb007101"))
    assert r == natpmp.ExternalAddressResponse(0, 1000, "203.0.113.1")


def test_map_response() -> None:
    # §3.3: Vers 0, OP 129, Result 0, epoch 5, internal 51820, mapped external 40000, lifetime 3600
    r = natpmp.parse_response(bytes.fromhex("0081 0000 00000005 ca6c 9c40 00000e10"))
    assert r == natpmp.MapResponse(0, 5, 51820, 40000, 3600)


def test_result_codes_are_returned_not_raised() -> None:
    r = natpmp.parse_response(bytes.fromhex("0081 0002 00000005 ca6c 0000 00000000"))
    assert isinstance(r, natpmp.MapResponse) and r.result == natpmp.NOT_AUTHORIZED
    assert natpmp.RESULT_NAMES[r.result] == "not-authorized"


@pytest.mark.parametrize("hexdata", [
    "",  # empty
    "0080",  # too short
    "0080 0000 000003e8 cb0071",  # 11 bytes (§3.5: wrong size is ignored)
    "0080 0000 000003e8 cb007101 00",  # 13 bytes
    "0081 0000 00000005 ca6c 9c40 00000e",  # 15 bytes
    "0181 0000 00000005 ca6c 9c40 00000e10",  # version 1
    "0001 0000 ca6c ca6c 00001c20",  # a request, not a response
    "0082 0000 00000005 ca6c 9c40 00000e10",  # TCP map answer: not ours
])
def test_malformed_responses(hexdata: str) -> None:
    with pytest.raises(DecodeError):
        natpmp.parse_response(bytes.fromhex(hexdata))


def test_unsupported_version_answer_to_pcp() -> None:
    # RFC 6887 §9: a NAT-PMP gateway answers a version-2 request with version 0, result 1
    assert natpmp.unsupported_version_answer(bytes.fromhex("0081 0001 00000005"))
    assert not natpmp.unsupported_version_answer(bytes.fromhex("0081 0000 00000005"))
    assert not natpmp.unsupported_version_answer(bytes.fromhex("0281 0001"))
    assert not natpmp.unsupported_version_answer(b"\x00")
