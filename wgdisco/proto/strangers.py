"""The latest record of keys that are not (yet) peers, so that a peer added later (``wg set``,
the mesh) is found at once: mDNS announces a record once, not again when we start caring about
it. Strangers create these, so they are few (``cap``) and expire (``ttl``; ARCHITECTURE.md "Trust
model"). Pure: ``now`` passed in."""

from __future__ import annotations

from collections import OrderedDict

from wgdisco.proto import records
from wgdisco.proto.membership import put_newest

__all__ = ["Strangers"]


class Strangers:
    def __init__(self, *, cap: int, ttl: float) -> None:
        self.cap, self.ttl = cap, ttl
        self._seen: OrderedDict[bytes, tuple[float, records.Sighting, str]] = OrderedDict()  # oldest first

    def __len__(self) -> int:
        return len(self._seen)

    def put(self, sighting: records.Sighting, source: str, now: float) -> None:
        put_newest(self._seen, sighting.public_key, (now, sighting, source), self.cap)

    def take(self, public: bytes, now: float) -> tuple[records.Sighting, str] | None:
        """``public``'s record if one is kept and fresh (it is forgotten either way)."""
        seen = self._seen.pop(public, None)
        return None if seen is None or now - seen[0] >= self.ttl else (seen[1], seen[2])

    def discard(self, public: bytes) -> None:
        self._seen.pop(public, None)

    def next_deadline(self) -> float | None:
        return next(iter(self._seen.values()))[0] + self.ttl if self._seen else None

    def handle_timer(self, now: float) -> None:
        seen = self._seen
        while seen and next(iter(seen.values()))[0] + self.ttl <= now:
            seen.popitem(last=False)
