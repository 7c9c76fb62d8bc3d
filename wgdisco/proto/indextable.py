"""Receiver-index table, as wireguard-go device/indextable.go.

Each handshake we start or answer gets a fresh random 32-bit index (whitepaper §5.4.2-5.4.3:
I_i, I_r := rho^4); the peer echoes it as the receiver index of its response and of every
transport message, so a received packet finds its handshake or keypair with one dict lookup.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wgdisco.errors import LocalError

__all__ = ["IndexTable"]

# wireguard-go loops until it finds a free index; a real rng collides with probability
# live/2**32 per draw, so this many collisions in a row means the rng is broken.
_MAX_DRAWS = 64


class IndexTable:
    """index (uint32) -> value (a handshake or keypair holder). Values are never None."""

    __slots__ = ("_table",)

    def __init__(self) -> None:
        self._table: dict[int, Any] = {}

    def new_index(self, value: Any, rng: Callable[[int], bytes]) -> int:
        """Store ``value`` under a random index not currently live, and return the index."""
        if value is None:
            raise LocalError("an index table value cannot be None")
        table = self._table
        for _ in range(_MAX_DRAWS):
            raw = rng(4)
            if len(raw) != 4:
                raise LocalError(f"rng(4) returned {len(raw)} bytes")
            index = int.from_bytes(raw, "little")  # endianness is arbitrary, as in wireguard-go
            if index not in table:
                table[index] = value
                return index
        raise LocalError(f"rng gave {_MAX_DRAWS} live indices in a row")

    def lookup(self, index: int) -> Any:
        """The value stored under ``index``, or None."""
        return self._table.get(index)

    def swap(self, index: int, value: Any) -> bool:
        """Replace the value of a live index (handshake -> keypair); False if it is not live."""
        if value is None:
            raise LocalError("an index table value cannot be None")
        table = self._table
        if index not in table:
            return False
        table[index] = value
        return True

    def delete(self, index: int) -> None:
        """Forget ``index``; a no-op if it is not live."""
        self._table.pop(index, None)

    def __len__(self) -> int:
        return len(self._table)

    def __contains__(self, index: object) -> bool:
        return index in self._table
