"""The one shape of the node's cores (docs/architecture.md "The node hub"), as a small base class.

A core takes its inputs with ``now``, answers ``next_deadline()`` without changing anything,
does its timed work in ``handle_timer(now)``, and hands out what it produced through two queues:
``datagrams_to_send()`` (payload, address) and ``pop_events()`` (typed events). Its counters (for
metrics and the shutdown log) are in ``counters``. Subclasses append to ``_outbox``/``_events``
and call ``_count``.

``run_timers(core, now)`` and ``flush(core, send, on_event)`` are the one drive step every shell
takes around a core (aioquic's ``handle_timer``/``get_timer`` then ``datagrams_to_send``/
``next_event``): the data plane's flush (daemon/tunnel.py), the in-memory simulator
(tests/unit/nodesim.py) and ``wgdisco netcheck`` (tools/netcheck.py) all use ``flush``.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Hashable, Protocol

__all__ = ["Core", "flush", "run_timers"]


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

    def next_event(self) -> Any | None:
        """The next event, or None (``flush`` drains events one by one)."""
        return self._events.popleft() if self._events else None

    def _count(self, what: str, n: int = 1) -> None:
        self.counters[what] = self.counters.get(what, 0) + n


class Timed(Protocol):
    def next_deadline(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...


class Queued(Protocol):
    def datagrams_to_send(self) -> list[tuple[bytes, Hashable]]: ...

    def next_event(self) -> Any | None: ...


def run_timers(core: Timed, now: float) -> float | None:
    """The core's timers if they are due; then its next deadline (None: none)."""
    deadline = core.next_deadline()
    if deadline is not None and deadline <= now:
        core.handle_timer(now)
        deadline = core.next_deadline()
    return deadline


def flush(core: Queued, send: Callable[[list[tuple[bytes, Hashable]]], None],
          on_event: Callable[[Any], None]) -> None:
    """Hand over what ``core`` queued: its datagrams to ``send`` (one list, when there are any),
    then its events to ``on_event`` one by one, those that handling them queues included."""
    out = core.datagrams_to_send()
    if out:
        send(out)
    event = core.next_event()
    while event is not None:
        on_event(event)
        event = core.next_event()
