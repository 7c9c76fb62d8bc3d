"""Keyed deadlines: one heap of ``(time, seq, key)`` with lazy invalidation (issue 26) (pure).

Each key has at most one live deadline (``_at``). Setting another one pushes a new entry and
leaves the old one in the heap; an entry whose time is no longer its key's is *stale* and is
dropped when it reaches the top. The top is kept live after every change, so ``next()`` is a
pure read, and ``pop_due(now)`` takes the keys whose time has come in O(k log n) for k of them,
never a scan of every key. Stale entries are bounded: past four per live key the heap is rebuilt
(amortised O(1) per change).

Used by the cores whose wake-up work must touch only what is due: ``PathSelector`` (each peer's
wake-up time), ``PathMtu`` (each searched path's round end, re-search and black-hole check) and
``MeshMembership`` (each member's check or expiry).
"""

from __future__ import annotations

import heapq
from typing import Generic, Hashable, TypeVar

__all__ = ["Deadlines"]

K = TypeVar("K", bound=Hashable)

_SLACK = 64  # stale entries always tolerated before a rebuild


class Deadlines(Generic[K]):
    """``key -> time`` with the earliest time at hand and the due keys taken in time order."""

    __slots__ = ("_heap", "_at", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, K]] = []  # live entries and stale ones; the top is live
        self._at: dict[K, float] = {}  # key -> the time of its live entry
        self._seq = 0  # ties in time go in the order they were set (keys need not be ordered)

    def set(self, key: K, when: float | None) -> None:
        """``key`` is due at ``when`` (None: never, as ``discard``)."""
        if when is None:
            self.discard(key)
            return
        if self._at.get(key) == when:
            return
        self._at[key] = when
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, key))
        if len(self._heap) > 4 * len(self._at) + _SLACK:
            self._rebuild()
        else:
            self._prune()

    def discard(self, key: K) -> None:
        if self._at.pop(key, None) is not None:
            self._prune()

    def get(self, key: K) -> float | None:
        return self._at.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._at

    def __len__(self) -> int:
        return len(self._at)

    def next(self) -> float | None:
        """The earliest live deadline (None: no key); changes nothing."""
        heap = self._heap
        return heap[0][0] if heap else None

    def pop_due(self, now: float) -> list[K]:
        """The keys whose time is ``<= now``, earliest first, taken out (set them again to stay)."""
        heap, at, due = self._heap, self._at, []
        while heap and heap[0][0] <= now:
            when, _, key = heapq.heappop(heap)
            if at.get(key) == when:
                del at[key]
                due.append(key)
        self._prune()
        return due

    def _prune(self) -> None:
        """Drop stale entries off the top, so that the top is live."""
        heap, at = self._heap, self._at
        while heap and at.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)

    def _rebuild(self) -> None:
        """Only the live entries, in a new heap (keeping their order of ties)."""
        heap = self._heap
        live = {key: (when, seq) for when, seq, key in heap if self._at.get(key) == when}
        self._heap = [(when, seq, key) for key, (when, seq) in live.items()]
        heapq.heapify(self._heap)
