"""The one shape of the node's cores (docs/architecture.md "The node hub"), as a small base class.

A core takes its inputs with ``now``, answers ``next_deadline()`` without changing anything,
does its timed work in ``handle_timer(now)``, and hands out what it produced through two queues:
``datagrams_to_send()`` (payload, address) and ``pop_events()`` (typed events). Its counters (for
metrics and the shutdown log) are in ``counters``. Subclasses append to ``_outbox``/``_events``
and call ``_count``.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Hashable

__all__ = ["Core"]


class Core:
    def __init__(self) -> None:
        self._outbox: list[tuple[bytes, Hashable]] = []
        self._events: deque[Any] = deque()
        self.counters: dict[str, int] = {}

    def datagrams_to_send(self) -> list[tuple[bytes, Hashable]]:
        out, self._outbox = self._outbox, []
        return out

    def pop_events(self) -> list[Any]:
        out = list(self._events)
        self._events.clear()
        return out

    def _count(self, what: str, n: int = 1) -> None:
        self.counters[what] = self.counters.get(what, 0) + n
