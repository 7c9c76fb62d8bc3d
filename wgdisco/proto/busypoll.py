"""When the data plane should spin on ``epoll_wait(0)`` instead of sleeping (pure).

Why
---
On this project's machines (2 vCPU guests, docs/performance.md) a thread that
sleeps in ``epoll_wait`` and is woken by a packet pays for the wake-up and then
runs its Python on cold caches: a decryption that takes 3.5 µs in a loop took
20–50 µs right after a 10 ms sleep. A ping through the tunnel pays that at both
ends. After sending a packet the answer often comes back within a few hundred
microseconds (a ping on a LAN, a TCP ACK); polling for that long instead of
sleeping catches it warm. Go's runtime does the same (its idle Ps spin before
parking), which is part of why wireguard-go's round trip is short.

Rules (``BusyPoll``)
--------------------
- Spin only after a wake-up that *sent* data (a reply may be on its way), for at
  most ``window`` (500 µs). The loop yields the CPU between polls
  (``sched_yield``), so a spinning thread delays no other runnable task.
- A spin that sees an event is a hit, one that runs out is a miss. ``score``
  counts recent hits (0..MAX_SCORE): a hit raises it, a miss lowers it. At 0 only
  every ``PROBE_EVERY``-th chance spins, to notice when spinning pays again. A
  peer across the Internet (RTT of milliseconds) therefore costs ~1 miss in 32.
- A budget: at most ``budget`` of each ``period`` is spent spinning (10 %, so
  never more than 0.1 CPU-seconds per second, whatever the traffic looks like).
"""

from __future__ import annotations

WINDOW = 500e-6  # seconds: a LAN round trip through a peer's daemon fits (docs/performance.md)
BUDGET = 0.10  # share of wall time that may be spent spinning
PERIOD = 1.0  # seconds over which the budget is counted
MAX_SCORE = 8
PROBE_EVERY = 32


class BusyPoll:
    """Decides whether to spin after a wake-up; told how each spin went."""

    def __init__(self, window: float = WINDOW, budget: float = BUDGET, period: float = PERIOD) -> None:
        self.window, self.budget, self.period = window, budget, period
        self.score = MAX_SCORE // 2
        self.skipped = 0
        self.period_start = 0.0
        self.spent = 0.0  # seconds spun in the current period
        self.hits = self.misses = 0  # totals, for the metrics
        self.total_spent = 0.0

    def deadline(self, now: float, sent: bool) -> float:
        """Spin until this time, or 0.0 for "sleep in epoll_wait as usual"."""
        if not sent or self.window <= 0:
            return 0.0
        if now - self.period_start >= self.period:
            self.period_start, self.spent = now, 0.0
        if self.spent >= self.budget * self.period:
            return 0.0
        if self.score == 0:
            self.skipped += 1
            if self.skipped < PROBE_EVERY:
                return 0.0
            self.skipped = 0
        return now + self.window

    def result(self, spun: float, hit: bool) -> None:
        """A spin of ``spun`` seconds ended, with an event (hit) or at its deadline."""
        spun = max(spun, 0.0)
        self.spent += spun
        self.total_spent += spun
        if hit:
            self.hits += 1
            if self.score < MAX_SCORE:
                self.score += 1
        else:
            self.misses += 1
            if self.score:
                self.score -= 1
