"""Key encodings: base64 as wg prints it, base32 instance labels, clamping."""

from __future__ import annotations

import os
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wgdisco.errors import DecodeError
from wgdisco.lab import require_tool
from wgdisco.proto import keys


def test_base32_instance_label_vector() -> None:
    # The wgsd layout's example: wg base64 key -> DNS-SD instance label.
    key = keys.key_from_base64("xScVkH3fUGUv4RrJFfmcqm8rs3SEHr41km6+yffAHw4=")
    assert keys.key_to_base32(key) == "yutrled535igkl7bdlerl6m4vjxsxm3uqqpl4nmsn27mt56ad4ha===="
    assert keys.key_from_base32("YUTRLED535IGKL7BDLERL6M4VJXSXM3UQQPL4NMSN27MT56AD4HA====") == key


def test_public_key_vector_from_wg8() -> None:
    # wg(8) man page: this private key belongs to the interface whose peers list
    # the others; its public key is what `wg pubkey` prints for it.
    priv = keys.key_from_base64("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=")
    assert keys.key_to_base64(keys.public_key(priv)) == "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="


@given(st.binary(min_size=32, max_size=32))
def test_round_trips(raw: bytes) -> None:
    assert keys.key_from_base64(keys.key_to_base64(raw)) == raw
    assert keys.key_from_base32(keys.key_to_base32(raw)) == raw
    label = keys.key_to_base32(raw)
    assert label == label.lower() and len(label) == 56 and label.endswith("====")


@given(st.binary(min_size=32, max_size=32))
def test_clamp(raw: bytes) -> None:
    c = keys.clamp(raw)
    assert c[0] & 7 == 0 and c[31] & 128 == 0 and c[31] & 64 == 64
    assert keys.clamp(c) == c


@pytest.mark.parametrize(
    "text",
    ["", "abc", "xScVkH3fUGUv4RrJFfmcqm8rs3SEHr41km6+yffAHw4", "xScVkH3fUGUv4RrJFfmcqm8rs3SEHr41km6+yffAHw!=",
     "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=="],
)
def test_bad_base64(text: str) -> None:
    with pytest.raises(DecodeError):
        keys.key_from_base64(text)


@pytest.mark.parametrize("text", ["", "yutrled", "0" * 56, "yutrled535igkl7bdlerl6m4vjxsxm3uqqpl4nmsn27mt56ad4ha==="])
def test_bad_base32(text: str) -> None:
    with pytest.raises(DecodeError):
        keys.key_from_base32(text)


def test_public_key_matches_wg_pubkey() -> None:
    wg = require_tool("wg")  # a skip without wireguard-tools; a failure under WGDISCO_REQUIRE_NETNS=1
    for _ in range(5):
        priv = keys.generate_private_key(os.urandom(32))
        text = keys.key_to_base64(priv)
        out = subprocess.run([wg, "pubkey"], input=text + "\n", capture_output=True, text=True, check=True)
        assert out.stdout.strip() == keys.key_to_base64(keys.public_key(priv))
