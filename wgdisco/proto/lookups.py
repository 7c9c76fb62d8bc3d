"""When to look peers up over unicast DNS-SD (docs/records.md), and, in a mesh, when to browse
the PTR set and which of the keys found there to look up. Pure; ``now`` and ``rng`` passed in.

A peer with a path is looked up every PollInterval, up to 15 % sooner (no lockstep, and never later:
a peer that let its path go idle reads our ``call=`` within one PollInterval, docs/nat-traversal.md
"Idle peers"); one without is looked up
at once, every 0.5 s for the first 2 s (``flat_for``: the two ends of a pair usually start
together, and the later one publishes a second or two after the first; with SOA-gated lookups a
look at an unchanged zone is one small query), then after 1, 2, 4 … s up to PollInterval, and
at once again (the same 2 s of 0.5 s) after our own record
changed (the peer that looked first found nothing; now both have published), when data to it went
unanswered (then after 0.25, 0.5, 1 … s: a peer whose router rebooted noticed at about the same
time and publishes within a few round trips), or when a peer on the regular schedule lost its
path. The mesh's PTR set is browsed on the same growing schedule. The keys a browse found that are not
peers yet are looked up ``browse_lookups`` at a time, a round every ``browse_round`` (1 s), not one
round per browse: a member that joins a mesh of N meets the others over DNS in about N/32 s, not
N/32 PollIntervals (issue 26; 300 members took ~94 s that way), and the nameserver gets at most 32
lookups a second from a member while it catches up. Keys whose record was not a valid one of our
mesh are not looked up again for ``stranger_ttl`` (at most ``rejected_kept`` remembered: strangers
create these); at most ``found_kept`` browsed keys wait for their round (anyone with the zone's
update key can add names to the PTR set).

The core's shape: ``next_deadline()`` (pure, O(1): the top of a heap of lookup times and of the
moments a regular peer's session stops being live), ``handle_timer(now, paths)`` with ``paths``
a mapping of peer -> (has a path, when its session stops being live) that is read only for the
keys that are due, and events out through ``pop_events()``: ``LookupWanted(peers)`` and
``BrowseWanted``.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Container, Iterable, Mapping

from wgdisco.proto.core import Core
from wgdisco.proto.events import BrowseWanted, LookupWanted
from wgdisco.proto.membership import put_newest

__all__ = ["LookupSchedule", "Timing"]

Key = bytes


@dataclass(frozen=True)
class Timing:
    first: float = 0.5  # the first wait of a peer without a path (then doubling)
    flat_for: float = 2.0  # … kept that long after the peer was added or our record changed
    lost_first: float = 0.25  # … of a peer whose data went unanswered: it may have seen its own move
    # (a router reboot) in the same instant and publish within a few round trips (issue 24)
    poll_interval: float = 10.0  # PollInterval ([Discovery])
    stranger_ttl: float = 600.0
    rejected_kept: int = 1024
    browse_lookups: int = 32  # browsed keys looked up per round
    browse_round: float = 1.0  # seconds between those rounds while browsed keys wait
    found_kept: int = 4096  # browsed keys waiting for a round, at most


class LookupSchedule(Core):
    """Per-peer lookup times and the mesh's browse schedule (sans-I/O)."""

    def __init__(self, *, rng: Callable[[int], bytes], timing: Timing = Timing(), mesh: bool = False,
                 enabled: bool = True) -> None:
        super().__init__()
        self.timing = timing
        self.enabled = enabled  # unicast DNS-SD configured (a Domain): without it, nothing is scheduled
        self.mesh = mesh and enabled
        self._rng = rng
        self._at: dict[Key, float] = {}  # peer -> when to look it up next
        self._check: dict[Key, float] = {}  # regular peer -> when its session stops being live
        self._heap: list[tuple[float, Key]] = []  # (time, peer): an entry of _at or _check, or stale
        self._step: dict[Key, float] = {}  # peer without a path -> its current backoff
        self._flat_until: dict[Key, float] = {}  # peer -> until when its backoff stays at ``first``
        self._regular: set[Key] = set()  # peers looked up every PollInterval (they had a path)
        self._browse_at = 0.0
        self._browse_step = timing.first
        self._found: dict[Key, None] = {}  # browsed keys not looked up yet, in the browse's order
        self._found_at: float | None = None  # the next round of them
        self.rejected: OrderedDict[Key, float] = OrderedDict()  # key -> when its DNS record failed

    # --- peers ------------------------------------------------------------------------

    def add_peer(self, public: Key, now: float) -> None:
        self._found.pop(public, None)  # a peer now: on its own schedule
        if self.enabled:
            self._flat_until[public] = now + self.timing.flat_for
            self._schedule(public, now)

    def forget(self, public: Key) -> None:
        for table in (self._at, self._check, self._step, self._flat_until):
            table.pop(public, None)
        self._regular.discard(public)
        self._settle()

    def look_now(self, public: Key, now: float, *, lost: bool = False) -> None:
        """Look ``public`` up at once (then on the growing schedule); ``lost``: its path is in
        doubt (data went unanswered), so it leaves the regular schedule too."""
        if not self.enabled or public not in self._at:
            return
        if lost:
            self._regular.discard(public)
            self._check.pop(public, None)
        self._step.pop(public, None)
        if lost:
            self._step[public] = self.timing.lost_first
        self._schedule(public, now)

    def record_changed(self, without_path: Iterable[Key], now: float) -> None:
        """Our record changed: peers without a path, and the mesh's PTR set, are looked at again."""
        for public in without_path:
            self.look_now(public, now)
            if public in self._at:
                self._flat_until[public] = now + self.timing.flat_for
        self._browse_at, self._browse_step = now, self.timing.first

    def is_regular(self, public: Key) -> bool:
        return public in self._regular

    # --- time -------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        times = [self._heap[0][0]] if self._heap else []
        if self.mesh:
            times.append(self._browse_at)
        if self._found_at is not None:
            times.append(self._found_at)
        return min(times) if times else None

    def handle_timer(self, now: float, paths: Mapping[Key, tuple[bool, float | None]]) -> None:
        """Lookups (and a browse) that are due: ``paths[key]`` is (whether ``key`` has a path we
        trust, the moment its session stops being live or None); read for due keys only."""
        due: list[Key] = []
        heap, poll = self._heap, self.timing.poll_interval
        while heap and heap[0][0] <= now:
            when, public = heapq.heappop(heap)
            if self._at.get(public) == when:
                self._at.pop(public)
            elif self._check.get(public) == when:
                self._check.pop(public)
            else:
                continue  # stale
            if public in due:
                continue
            path, quiet = paths[public]
            if public in self._regular and not path:  # it lost its path: look at once
                self._regular.discard(public)
                self._check.pop(public, None)
                self._at.pop(public, None)
            if public in self._at:
                self._watch(public, path, quiet, now)  # a quiet check: still fine
                continue
            due.append(public)
            if path:
                self._step.pop(public, None)
                self._flat_until.pop(public, None)
                self._regular.add(public)
                jitter = 0.85 + 0.15 * int.from_bytes(self._rng(2), "big") / 65535  # no lockstep, never late
                self._schedule(public, now + poll * jitter)
                self._watch(public, path, quiet, now)
            else:
                step = min(self._step.get(public, self.timing.first), poll)
                if now < self._flat_until.get(public, now):
                    self._step[public] = step  # the first seconds: both ends usually start together
                else:
                    self._flat_until.pop(public, None)
                    self._step[public] = step * 2
                self._schedule(public, now + step)
        self._settle()
        if due:
            self._events.append(LookupWanted(tuple(due)))
        if self._found_at is not None and now >= self._found_at:
            self._next_round(now)
        if self.mesh and now >= self._browse_at:
            self._browse_at = now + min(self._browse_step, poll)
            self._browse_step = min(self._browse_step * 2, poll)
            self._events.append(BrowseWanted())

    def _schedule(self, public: Key, when: float) -> None:
        self._at[public] = when
        heapq.heappush(self._heap, (when, public))
        self._settle()

    def _watch(self, public: Key, path: bool, quiet: float | None, now: float) -> None:
        """A regular peer's session stops being live at ``quiet``: check its path then (a moment
        later when it is at that boundary now)."""
        if path and quiet is not None and quiet <= now:
            quiet = now + 0.01
        if path and quiet is not None and quiet < self._at.get(public, quiet + 1):
            self._check[public] = quiet
            heapq.heappush(self._heap, (quiet, public))

    def _settle(self) -> None:
        """Drop stale entries from the heap's top, so that next_deadline is exact."""
        heap = self._heap
        while heap:
            when, public = heap[0]
            if self._at.get(public) == when or self._check.get(public) == when:
                return
            heapq.heappop(heap)

    # --- the mesh's PTR set ---------------------------------------------------------------

    def reject(self, public: Key, now: float) -> None:
        """``public``'s record was not a valid one of our mesh: not looked up for a while."""
        put_newest(self.rejected, public, now, self.timing.rejected_kept)

    def browse_found(self, found: Iterable[Key], known: Container[Key], now: float) -> None:
        """A browse found ``found``: look up those not ``known`` (us, peers), not one whose record
        recently was not valid; ``browse_lookups`` of them now (LookupWanted), the rest in rounds
        ``browse_round`` apart. The newest browse replaces the keys still waiting."""
        rejected = self.rejected
        while rejected and next(iter(rejected.values())) + self.timing.stranger_ttl <= now:
            rejected.popitem(last=False)
        waiting: dict[Key, None] = {}
        kept = self.timing.found_kept
        for public in found:
            if public in known or public in rejected or public in self._at:
                continue
            if len(waiting) >= kept:
                self._count("mesh-browse-keys-dropped")  # past the cap: the next browse finds them
                break
            waiting[public] = None
        self._found = waiting
        self._next_round(now)

    def _next_round(self, now: float) -> None:
        """Up to ``browse_lookups`` waiting keys that are still neither peers nor rejected."""
        out: list[Key] = []
        waiting, rejected = self._found, self.rejected
        while waiting and len(out) < self.timing.browse_lookups:
            public = next(iter(waiting))
            del waiting[public]
            if public not in self._at and public not in rejected:
                out.append(public)
        if waiting:
            self._count("mesh-browse-lookups-deferred")  # a round left for later
        self._found_at = now + self.timing.browse_round if waiting else None
        if out:
            self._events.append(LookupWanted(tuple(out)))
