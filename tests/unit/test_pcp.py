"""PCP messages (RFC 6887) on binary vectors laid out as the RFC's figures (§7.1, §7.2, §11.1)."""

from __future__ import annotations

import pytest

from wgdisco.errors import DecodeError, LocalError
from wgdisco.proto import pcp

NONCE = bytes(range(1, 13))
HEADER = "02 01 0000 00001c20 00000000000000000000ffff0a010002"  # MAP, lifetime 7200, client 10.1.0.2
MAP_DATA = "0102030405060708090a0b0c 11 000000 ca6c ca6c 00000000000000000000ffff00000000"


def test_map_request_matches_the_rfc_layout() -> None:
    data = pcp.map_request(NONCE, "10.1.0.2", 51820, 51820, 7200)
    assert data == bytes.fromhex(HEADER + MAP_DATA)
    assert len(data) == pcp.HEADER_LEN + pcp.MAP_LEN == 60


def test_delete_is_lifetime_zero_with_the_same_nonce() -> None:
    data = pcp.map_request(NONCE, "10.1.0.2", 51820, 40000, 0)
    assert data[4:8] == b"\0\0\0\0" and data[24:36] == NONCE and data[42:44] == (40000).to_bytes(2, "big")


def test_ipv6_client_and_announce() -> None:
    data = pcp.announce_request("fd00:1::2")
    assert data == bytes.fromhex("02 00 0000 00000000 fd000001000000000000000000000002")


@pytest.mark.parametrize("kw", [{"nonce": b"short"}, {"internal_port": 0}, {"external_port": 70000}, {"lifetime": -1}])
def test_bad_requests_are_our_bug(kw: dict[str, object]) -> None:
    args = {"nonce": NONCE, "client_ip": "10.1.0.2", "internal_port": 51820, "external_port": 0, "lifetime": 1}
    args.update(kw)
    with pytest.raises(LocalError):
        pcp.map_request(**args)  # type: ignore[arg-type]


def response(result: int = 0, lifetime: int = 3600, ext: str = "cb007101", port: str = "9c40", nonce: bytes = NONCE) -> bytes:
    header = f"02 81 00 {result:02x} {lifetime:08x} 0000002a 000000000000000000000000"
    body = nonce.hex() + f"11 000000 ca6c {port} 00000000000000000000ffff{ext}"
    return bytes.fromhex(header + body)


def test_map_response() -> None:
    r = pcp.parse_response(response())
    assert r == pcp.Response(pcp.OP_MAP, 0, 3600, 42, NONCE, 17, 51820, 40000, "203.0.113.1")


def test_map_response_with_an_option_is_accepted() -> None:
    r = pcp.parse_response(response() + bytes.fromhex("01 00 0000"))  # a THIRD_PARTY-like option, skipped
    assert r.external_port == 40000


def test_error_response_without_opcode_data() -> None:
    r = pcp.parse_response(bytes.fromhex("02 81 00 01 00000000 00000001 000000000000000000000000"))
    assert (r.result, r.nonce) == (pcp.UNSUPP_VERSION, b"")
    assert pcp.RESULT_NAMES[2] == "not-authorized"


@pytest.mark.parametrize("data", [
    b"", response()[:23], response()[:59], response() + b"\0",  # sizes (§7: multiple of 4)
    response() + bytes(1044),  # over 1100 bytes
    bytes([1]) + response()[1:],  # version 1
    bytes.fromhex(HEADER + MAP_DATA),  # a request (R bit clear)
])
def test_malformed_responses(data: bytes) -> None:
    with pytest.raises(DecodeError):
        pcp.parse_response(data)


def test_announce_response() -> None:
    r = pcp.parse_response(bytes.fromhex("02 80 00 00 00000000 00000007 000000000000000000000000"))
    assert (r.opcode, r.result, r.epoch) == (pcp.OP_ANNOUNCE, 0, 7)
