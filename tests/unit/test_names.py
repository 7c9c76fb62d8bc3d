"""Mesh member names (proto/names.py): the strict check and the deterministic resolution."""

from __future__ import annotations

from wgdisco.proto.names import MAX_NAME, check_name, key_name, name_from_hostname, resolve


def test_check_name_table() -> None:
    for good in ("alice", "n0", "a-b", "x" * MAX_NAME, "0a", b"bob"):
        assert check_name(good) == (good.decode() if isinstance(good, bytes) else good)
    for bad in ("", "-a", "a-", "A", "a b", "a.b", "x" * (MAX_NAME + 1), "123", "wg-abc", "caf\u00e9", "a_b",
                None, b"\xff", b"x" * 64, "a\n", "a\x00"):
        assert check_name(bad) is None, bad


def test_default_name_from_the_host_name() -> None:
    assert name_from_hostname("Build-7.example.org") == "build-7"
    assert name_from_hostname("localhost") == "localhost"
    assert name_from_hostname("bad_host") is None and name_from_hostname("") is None


def test_key_name_is_the_srv_target_label() -> None:
    assert key_name("ABCDEFGHIJKLMNOPQRSTUVWXYZ") == "wg-abcdefghijklmnop"


def test_resolve_gives_a_name_only_to_its_single_claimant() -> None:
    k = [bytes([i]) * 32 for i in range(5)]
    owned, contested = resolve({k[0]: "a", k[1]: "b", k[2]: "b", k[3]: None, k[4]: "c"})
    assert owned == {"a": k[0], "c": k[4]} and contested == {"b"}
    # the order claims arrive in does not matter (every member computes the same)
    assert resolve(dict(reversed(list({k[0]: "a", k[1]: "b", k[2]: "b"}.items())))) == ({"a": k[0]}, {"b"})
