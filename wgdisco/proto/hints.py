"""From DNS-SD sightings to endpoints worth a handshake (pure, fake-clock testable).

Theory of operation
-------------------
Records are hints (ARCHITECTURE.md, "Trust model"). A sighting of a configured
peer's key brings candidate endpoints; ``HintTrier`` decides which one to try
when. A try is "set the endpoint, send a handshake initiation": only a
completed handshake proves a candidate (the NAT traversal work replaces this
with authenticated probes).

- A peer with a live session (an authenticated packet within ``live_time``,
  15 s) is never touched: a record cannot move a working tunnel.
- Otherwise its candidates are tried in order, one every ``try_interval``;
  after a full round without a handshake, the next round waits twice as long
  as the last (up to ``max_backoff``). A new sighting with different
  candidates starts over at once.
- ``succeeded`` (the daemon saw a handshake) ends the schedule for that peer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Hashable

from wgdisco.proto.timers import LIVE_TIME

TRY_INTERVAL = 1.0
MAX_BACKOFF = 60.0  # seconds; also the ceiling of every DNS retry backoff (discovery.py)

Key = bytes  # a peer's public key
Addr = Hashable


@dataclass
class _Schedule:
    candidates: list[Addr]
    source: str
    index: int = 0
    next_try: float = 0.0
    backoff: float = TRY_INTERVAL
    tries: int = 0


@dataclass
class Try:
    peer: Key
    endpoint: Addr
    source: str  # "mdns", "dns"


@dataclass
class HintTrier:
    live_time: float = LIVE_TIME
    try_interval: float = TRY_INTERVAL
    max_backoff: float = MAX_BACKOFF
    schedules: dict[Key, _Schedule] = field(default_factory=dict)
    ignored_live: int = 0  # sightings not acted on because the peer was live

    def sighting(self, peer: Key, candidates: list[Addr], source: str, now: float, *, live: bool) -> None:
        """A record for ``peer`` was seen. ``live``: the peer has a live session right now."""
        if live:
            self.ignored_live += 1
            self.schedules.pop(peer, None)
            return
        if not candidates:
            return
        current = self.schedules.get(peer)
        if current is not None and current.candidates == candidates:
            return  # the same hint again: keep the schedule (and its backoff)
        self.schedules[peer] = _Schedule(list(candidates), source, next_try=now, backoff=self.try_interval)

    def succeeded(self, peer: Key) -> None:
        self.schedules.pop(peer, None)

    def forget(self, peer: Key) -> None:
        self.schedules.pop(peer, None)

    def due(self, now: float, is_live: Callable[[Key], bool]) -> list[Try]:
        """The endpoints to try now; each peer at most one."""
        tries: list[Try] = []
        for peer, s in list(self.schedules.items()):
            if s.next_try > now:
                continue
            if is_live(peer):
                del self.schedules[peer]
                continue
            tries.append(Try(peer, s.candidates[s.index], s.source))
            s.tries += 1
            s.index += 1
            if s.index < len(s.candidates):
                s.next_try = now + self.try_interval
            else:  # a full round without success: back off, then go round again
                s.index = 0
                s.backoff = min(s.backoff * 2, self.max_backoff)
                s.next_try = now + s.backoff
        return tries

    def next_time(self) -> float | None:
        return min((s.next_try for s in self.schedules.values()), default=None)
