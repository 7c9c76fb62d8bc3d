"""Handshake rate limiting per source IP (whitepaper §5.3; wireguard-go ratelimiter/).

A token bucket per source: 20 handshake messages a second, bursts of 5.
Only consulted while the device is under load, after mac2 proved the source
address (so a forged source costs the attacker a cookie round trip).
"""

from __future__ import annotations

PACKETS_PER_SECOND = 20
PACKETS_BURSTABLE = 5
GARBAGE_COLLECT_TIME = 1.0  # seconds; entries idle this long are dropped


class RateLimiter:
    __slots__ = ("_cost", "_max_tokens", "_table", "_last_gc")

    def __init__(self, per_second: int = PACKETS_PER_SECOND, burst: int = PACKETS_BURSTABLE) -> None:
        self._cost = 1.0 / per_second
        self._max_tokens = self._cost * burst
        self._table: dict[bytes, list[float]] = {}  # source -> [tokens, last]
        self._last_gc = 0.0

    def allow(self, source: bytes, now: float) -> bool:
        """Take one token for `source` (IP bytes, no port) if it has one."""
        if now - self._last_gc > GARBAGE_COLLECT_TIME:
            self._collect(now)
        entry = self._table.get(source)
        if entry is None:
            self._table[source] = [self._max_tokens - self._cost, now]
            return True
        tokens = min(self._max_tokens, entry[0] + (now - entry[1]))
        entry[1] = now
        if tokens >= self._cost:
            entry[0] = tokens - self._cost
            return True
        entry[0] = tokens
        return False

    def _collect(self, now: float) -> None:
        self._last_gc = now
        stale = [k for k, (_t, last) in self._table.items() if now - last > GARBAGE_COLLECT_TIME]
        for k in stale:
            del self._table[k]

    def __len__(self) -> int:
        return len(self._table)


_WHOLE = 1.0 - 1e-6  # a whole token, up to the rounding of (now - last) * rate at monotonic times


class TokenBucket:
    """One bucket: ``rate`` a second, at most ``burst`` at once (a budget for work, not per source)."""

    __slots__ = ("rate", "burst", "_tokens", "_last")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, float(burst)
        self._tokens = float(burst)
        self._last: float | None = None

    def take(self, now: float) -> bool:
        if self._last is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= _WHOLE:
            self._tokens = max(0.0, self._tokens - 1.0)
            return True
        return False

    def ready_at(self) -> float:
        """When a whole token is there again (-inf: now). ``take`` at that time succeeds: a
        rounding error (0.9999999999 tokens) must not leave the caller's next deadline in the
        past, or a timer loop spins (1,871 such wake-ups in a 10-member simulation)."""
        if self._last is None or self._tokens >= _WHOLE:
            return float("-inf")
        return self._last + (1.0 - self._tokens) / self.rate
