"""When to look peers up over unicast DNS-SD (docs/records.md), and, in a mesh, when to browse
the PTR set and which of the keys found there to look up. Pure; ``now`` and ``rng`` passed in.

A peer with a path is looked up every PollInterval (±10 %, no lockstep); one without is looked up
at once, then after 0.5, 1, 2, 4 … s up to PollInterval, and at once again after our own record
changed (the peer that looked first found nothing; now both have published) or when data to it
went unanswered. The mesh's PTR set is browsed on the same growing schedule. Keys whose record was
not a valid one of our mesh are not looked up again for ``stranger_ttl`` (at most
``rejected_kept`` remembered: strangers create these).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Container, Iterable, Mapping

from wgdisco.proto.membership import put_newest

__all__ = ["LookupSchedule", "Timing"]

Key = bytes


@dataclass(frozen=True)
class Timing:
    first: float = 0.5  # the first wait of a peer without a path (then doubling)
    poll_interval: float = 10.0  # PollInterval ([Discovery])
    stranger_ttl: float = 600.0
    rejected_kept: int = 1024
    browse_lookups: int = 32  # keys a browse may look up per round


class LookupSchedule:
    """Per-peer lookup times and the mesh's browse schedule."""

    def __init__(self, *, rng: Callable[[int], bytes], timing: Timing = Timing(), mesh: bool = False) -> None:
        self.timing = timing
        self.mesh = mesh
        self._rng = rng
        self._at: dict[Key, float] = {}  # peer -> when to look it up next (absent: now)
        self._step: dict[Key, float] = {}  # peer without a path -> its current backoff
        self._regular: set[Key] = set()  # peers looked up every PollInterval (they had a path)
        self._browse_at = 0.0
        self._browse_step = timing.first
        self.rejected: OrderedDict[Key, float] = OrderedDict()  # key -> when its DNS record failed
        self.deferred = 0  # browse lookups left for a later round (over browse_lookups)

    def due(self, now: float, paths: Mapping[Key, bool]) -> list[Key]:
        """Of ``paths`` (every peer -> whether it has a path), those to look up now; each is then
        scheduled again."""
        due = []
        poll = self.timing.poll_interval
        for public, path in paths.items():
            if public in self._regular and not path:  # it lost its path: look at once
                self._regular.discard(public)
                self._at[public] = now
            if self._at.get(public, now) > now:
                continue
            due.append(public)
            if path:
                self._step.pop(public, None)
                self._regular.add(public)
                jitter = 0.9 + 0.2 * int.from_bytes(self._rng(2), "big") / 65535  # no lockstep
                self._at[public] = now + poll * jitter
            else:
                step = min(self._step.get(public, self.timing.first), poll)
                self._step[public] = step * 2
                self._at[public] = now + step
        return due

    def look_now(self, public: Key, now: float, *, lost: bool = False) -> None:
        """Look ``public`` up at once (then on the growing schedule); ``lost``: its path is in
        doubt (data went unanswered), so it leaves the regular schedule too."""
        if lost:
            self._regular.discard(public)
        self._at[public] = now
        self._step.pop(public, None)

    def record_changed(self, without_path: Iterable[Key], now: float) -> None:
        """Our record changed: peers without a path, and the mesh's PTR set, are looked at again."""
        for public in without_path:
            self.look_now(public, now)
        self._browse_at, self._browse_step = now, self.timing.first

    def is_regular(self, public: Key) -> bool:
        return public in self._regular

    def scheduled(self, public: Key, now: float) -> float:
        return self._at.get(public, now)

    def forget(self, public: Key) -> None:
        self._at.pop(public, None)
        self._step.pop(public, None)
        self._regular.discard(public)

    # --- the mesh's PTR set ---------------------------------------------------------------

    def browse_due(self, now: float) -> bool:
        """Browse the PTR set now? (Then scheduled again.)"""
        if not self.mesh or now < self._browse_at:
            return False
        poll = self.timing.poll_interval
        self._browse_at = now + min(self._browse_step, poll)
        self._browse_step = min(self._browse_step * 2, poll)
        return True

    def next_browse(self, now: float) -> float | None:
        return max(self._browse_at, now) if self.mesh else None

    def reject(self, public: Key, now: float) -> None:
        """``public``'s record was not a valid one of our mesh: not looked up for a while."""
        put_newest(self.rejected, public, now, self.timing.rejected_kept)

    def browse_lookups(self, found: Iterable[Key], known: Container[Key], now: float) -> list[Key]:
        """Of the keys a browse found, those to look up: not ``known`` (us, peers), not one whose
        record recently was not valid; at most ``browse_lookups``."""
        rejected = self.rejected
        while rejected and next(iter(rejected.values())) + self.timing.stranger_ttl <= now:
            rejected.popitem(last=False)
        out: list[Key] = []
        for public in found:
            if public in known or public in rejected or public in out:
                continue
            if len(out) >= self.timing.browse_lookups:
                self.deferred += 1
                break
            out.append(public)
        return out
