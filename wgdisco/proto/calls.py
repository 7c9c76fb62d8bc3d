"""Calls: asking a peer to open its side again, through the rendezvous (issue 26; docs/records.md
``call=``, docs/nat-traversal.md "Idle peers").

An idle peer's NATed path is let go (proto/paths.py: no keepalives once it is no longer in use),
so its NAT forgets our mapping and drops what we send. Our first packet to it cannot open its
side: only its own packet to us can. So we *call*: our record names the peer (a short hint of its
key) for ``CALL_TIME``, and the peer, on reading our record (its next lookup, at most one
PollInterval away; at once over mDNS), probes all our candidates at once (``PathSelector.on_call``)
while we probe it: the punch meets in the middle, as when the path was first made.

A hint is the first 4 bytes of the probe hint (``probe.key_hint``) in hex: it names a key that
records publish anyway, and 2^32 values keep collisions rare in a mesh of thousands (a collision
costs one needless probe round). At most ``MAX_CALLS`` peers are named (the newest calls); a
record naming us is answered at most once per ``ANSWER_INTERVAL``, so a record re-read every poll
(or replayed) costs a few probes, no more. Pure: ``now`` passed in.
"""

from __future__ import annotations

from wgdisco.proto.core import Core
from wgdisco.proto.probe import key_hint

__all__ = ["Calls", "call_hint", "CALL_TIME", "MAX_CALLS", "ANSWER_INTERVAL"]

CALL_TIME = 30.0  # a call stays in our record this long (> PollInterval's 11 s with jitter, twice)
MAX_CALLS = 8  # peers named at once (8 × 9 bytes of TXT)
ANSWER_INTERVAL = 5.0  # a peer's call is answered at most this often

Key = bytes


def call_hint(public: Key) -> str:
    """The 8 hex digits that name ``public`` in a record's ``call=``."""
    return key_hint(public)[:4].hex()


class Calls(Core):
    def __init__(self, own_public: Key) -> None:
        super().__init__()
        self.own_hint = call_hint(own_public)
        self._until: dict[Key, float] = {}  # peer -> when its call leaves our record (insertion = age)
        self._answered: dict[Key, float] = {}  # peer -> when we last answered its call

    def set_own_key(self, public: Key) -> None:
        self.own_hint = call_hint(public)

    def call(self, public: Key, now: float) -> bool:
        """Name ``public`` in our record for CALL_TIME; True if the record must change."""
        new = public not in self._until
        self._until.pop(public, None)
        self._until[public] = now + CALL_TIME
        if new:
            self._count("calls")
            while len(self._until) > MAX_CALLS:
                del self._until[next(iter(self._until))]
        return new

    def hints(self) -> list[str]:
        """Our record's ``call=`` items, sorted (a record changes only when the set does)."""
        return sorted(call_hint(k) for k in self._until)

    def forget(self, public: Key) -> bool:
        self._answered.pop(public, None)
        return self._until.pop(public, None) is not None

    def answers(self, public: Key, call: object, now: float) -> bool:
        """Does ``public``'s record (TXT ``call`` value, bytes) call us, and is it our turn to
        answer? Malformed values are no call."""
        if not isinstance(call, bytes) or len(call) > 255:
            return False
        if self.own_hint.encode() not in call.split(b","):
            return False
        if now - self._answered.get(public, -ANSWER_INTERVAL) < ANSWER_INTERVAL:
            return False
        self._answered[public] = now
        self._count("calls-answered")
        return True

    def next_deadline(self) -> float | None:
        return min(self._until.values()) if self._until else None

    def handle_timer(self, now: float) -> bool:
        """Calls whose time is over leave our record; True if the record must change."""
        gone = [k for k, until in self._until.items() if until <= now]
        for k in gone:
            del self._until[k]
        stale = [k for k, at in self._answered.items() if now - at >= ANSWER_INTERVAL]
        for k in stale:
            del self._answered[k]
        return bool(gone)
