"""TSIG keys for RFC 2136 updates (RFC 8945), parsed without dnspython so that config.py
imports no shell: ``hmac-sha256:<keyname>:<base64 secret>``, the form ``nsupdate -y`` takes.
io/dnssd.py turns a ``TsigKey`` into dnspython's key when it signs."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from wgdisco.errors import LocalError

ALGORITHMS = ("hmac-sha1", "hmac-sha224", "hmac-sha256", "hmac-sha384", "hmac-sha512")  # RFC 8945 §6
MAX_NAME = 255  # octets on the wire (RFC 1035 §2.3.4)
MAX_LABEL = 63


@dataclass(frozen=True)
class TsigKey:
    """A TSIG key: absolute name (``"wgdisco."``), secret bytes, algorithm name."""

    name: str
    secret: bytes
    algorithm: str = "hmac-sha256"

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise LocalError(f"TSIG algorithm {self.algorithm!r} is not one of {', '.join(ALGORITHMS)}")
        if not self.name.endswith("."):
            object.__setattr__(self, "name", self.name + ".")

    def __repr__(self) -> str:  # never print the secret
        return f"TsigKey(name={self.name!r}, algorithm={self.algorithm!r})"


def check_name(name: str) -> str:
    """An absolute DNS name (trailing dot added); ValueError saying what is wrong."""
    text = name if name.endswith(".") else name + "."
    if text == ".":
        return text
    labels = text[:-1].split(".")
    for label in labels:
        if not label:
            raise ValueError("an empty label")
        if len(label.encode("utf-8", "surrogateescape")) > MAX_LABEL:
            raise ValueError(f"a label longer than {MAX_LABEL} octets")
    if sum(1 + len(label.encode("utf-8", "surrogateescape")) for label in labels) + 1 > MAX_NAME:
        raise ValueError(f"longer than {MAX_NAME} octets")
    return text


def parse_update_key(text: str) -> TsigKey:
    """``hmac-sha256:<keyname>:<base64 secret>`` -> TsigKey.

    Raises ValueError with a message saying what is wrong (never echoing the secret).
    """
    parts = text.strip().split(":")
    if len(parts) != 3:
        raise ValueError("an update key is 'hmac-sha256:<keyname>:<base64 secret>' (three fields separated by ':')")
    algorithm, name, secret_text = (p.strip() for p in parts)
    algorithm = algorithm.lower()
    if algorithm not in ALGORITHMS:
        raise ValueError(f"update key algorithm {algorithm!r} is not one of {', '.join(ALGORITHMS)}")
    if not name:
        raise ValueError("update key name is empty")
    try:
        key_name = check_name(name)
    except ValueError as e:
        raise ValueError(f"update key name {name!r} is not a valid DNS name: {e}") from None
    try:
        secret = base64.b64decode(secret_text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the secret of update key {key_name!r} is not valid base64") from None
    if not secret:
        raise ValueError(f"the secret of update key {key_name!r} is empty")
    return TsigKey(key_name, secret, algorithm)
