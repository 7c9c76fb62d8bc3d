"""Mesh member names: which names are acceptable, and which member each name resolves to.

Pure: no I/O, no clock. docs/mesh.md "Names".

A member claims a name in its record (``name=``, covered by the mesh MAC, proto/mesh.py). A
record's name is untrusted input: it is accepted only if ``check_name`` passes it, a strict
host name (RFC 1123 §2.1 letters-digits-hyphen, one label, RFC 1035 §2.3.4 at most 63
characters, lowercase, not all digits so it can never read as an address), and never a name
that starts with ``wg-``: those are the key-derived names every member also has
(``key_name``, the first 16 characters of the base32 public key, as the SRV target), which no
record can claim.

``resolve`` decides, alike on every member that knows the same claims, which member each
name points to: a name claimed by exactly one member is that member's; a name claimed by two
or more members is **nobody's** (contested: each is still reachable by its key name, and the
daemon logs the conflict). So a member can never take a name another member already uses,
whatever its key; at worst it makes the name unusable, visibly. A lower-key-wins rule would let
a member grind keys until it wins a name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["MAX_NAME", "KEY_NAME_PREFIX", "check_name", "key_name", "name_from_hostname", "resolve"]

MAX_NAME = 63  # one DNS label (RFC 1035 §2.3.4)
KEY_NAME_PREFIX = "wg-"
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def check_name(text: str | bytes | None) -> str | None:
    """``text`` as a member name, or None when it is not one (see the module's rules)."""
    if text is None:
        return None
    if isinstance(text, bytes):
        if len(text) > MAX_NAME:
            return None
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            return None
    if len(text) > MAX_NAME or not _LABEL.fullmatch(text) or text.isdigit():
        return None
    if text.startswith(KEY_NAME_PREFIX):
        return None
    return text


def name_from_hostname(hostname: str) -> str | None:
    """The default name: the host name's first label, lowercased, if that is a valid name."""
    return check_name(hostname.split(".", 1)[0].strip().lower())


def key_name(instance_label: str) -> str:
    """The name every member has whatever it claims: ``wg-`` + 16 characters of its base32 key."""
    return KEY_NAME_PREFIX + instance_label[:16].lower()


def resolve(claims: Mapping[bytes, str | None]) -> tuple[dict[str, bytes], set[str]]:
    """(name -> key for names claimed by exactly one key, the contested names)."""
    owners: dict[str, list[bytes]] = {}
    for public, name in claims.items():
        if name is not None:
            owners.setdefault(name, []).append(public)
    names = {name: keys[0] for name, keys in owners.items() if len(keys) == 1}
    contested = {name for name, keys in owners.items() if len(keys) > 1}
    return names, contested
