"""proto/core.py: the cores' one shape and the one drive step the shells share (run_timers, flush)."""

from __future__ import annotations

import inspect
from typing import Any

from wgdisco.proto import core
from wgdisco.proto.core import Core, flush, run_timers


class Ticker(Core):
    """Sends a datagram at each deadline; an event's handling may queue another event."""

    def __init__(self, times: list[float]) -> None:
        super().__init__()
        self.times = times
        self.ran: list[float] = []

    def next_deadline(self) -> float | None:
        return self.times[0] if self.times else None

    def handle_timer(self, now: float) -> None:
        self.ran.append(now)
        while self.times and self.times[0] <= now:
            self.times.pop(0)
            self._outbox.append((b"tick", ("192.0.2.1", 1)))
            self._events.append(("tick", now))


def test_run_timers_runs_only_what_is_due_and_returns_the_next_deadline() -> None:
    t = Ticker([1.0, 2.0])
    assert run_timers(t, 0.5) == 1.0 and t.ran == []
    assert run_timers(t, 1.0) == 2.0 and t.ran == [1.0]
    assert run_timers(t, 5.0) is None and t.ran == [1.0, 5.0]


def test_flush_hands_over_datagrams_then_events_and_those_their_handling_queues() -> None:
    t = Ticker([1.0])
    run_timers(t, 1.0)
    sent: list[list[Any]] = []
    seen: list[Any] = []

    def on_event(event: Any) -> None:
        seen.append(event)
        if event[0] == "tick":
            t._events.append(("follow-up", event[1]))  # queued while handling: handed over too

    flush(t, sent.append, on_event)
    assert sent == [[(b"tick", ("192.0.2.1", 1))]] and seen == [("tick", 1.0), ("follow-up", 1.0)]
    flush(t, sent.append, on_event)  # nothing queued: send is not called with an empty list
    assert len(sent) == 1 and len(seen) == 2


def test_the_shells_share_the_one_drive_step() -> None:
    """The data plane's flush (daemon/tunnel.py), the simulator and netcheck hand a core's output
    over through core.flush, not each with a loop of its own."""
    from tests.unit import nodesim
    from wgdisco.daemon import tunnel
    from wgdisco.tools import netcheck

    assert "core.flush(" in inspect.getsource(tunnel.Tunnel.flush)
    assert "flush(" in inspect.getsource(nodesim.SimNode.pump)
    source = inspect.getsource(netcheck)
    assert source.count("select.select(") == 1 and "run_timers(core, now)" in source and "flush(core," in source
    assert core.__all__ == ["Core", "flush", "run_timers"]
