"""One task at a time, and nothing asked while it runs is lost.

A network change (io/netmon.py, one callback per burst) starts work that awaits a thread or the
network: the sticky-source check (daemon/sticky.py) and the re-gathering of NAT traversal
(daemon/tunnel.py). A burst that arrives while that work runs must not be dropped: the running
pass may have read the routes or addresses before the change (on a loaded machine a pass takes
seconds), so the work runs once more after it, with every kind asked for meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

log = logging.getLogger(__name__)


class Rerun:
    """``ask(kinds)`` runs ``work(sorted kinds)`` in a task; asked again while it runs, it runs
    once more when it ends, with the kinds asked meanwhile (however many asks: one more pass)."""

    def __init__(self, work: Callable[[list[str]], Awaitable[None]], what: str) -> None:
        self._work = work
        self._what = what
        self._wanted: set[str] | None = None  # kinds asked for since the running pass began
        self._task: asyncio.Task[None] | None = None

    def ask(self, kinds: Iterable[str] = ()) -> None:
        self._wanted = (self._wanted or set()) | set(kinds)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while self._wanted is not None:
            kinds, self._wanted = sorted(self._wanted), None
            try:
                await self._work(kinds)
            except asyncio.CancelledError:
                raise
            except Exception:  # a pass that failed does not stop the next one
                log.exception("%s failed", self._what)

    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def cancel(self) -> None:
        self._wanted = None
        if self._task is not None:
            self._task.cancel()
