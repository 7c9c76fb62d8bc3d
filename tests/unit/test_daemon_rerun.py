"""daemon/rerun.py: one pass at a time; what is asked while a pass runs runs once more after it."""

from __future__ import annotations

import asyncio

from wgdisco.daemon.rerun import Rerun


def test_an_ask_while_a_pass_runs_is_one_more_pass_with_every_kind_asked() -> None:
    passes: list[list[str]] = []
    gate = asyncio.Event()

    async def work(kinds: list[str]) -> None:
        passes.append(kinds)
        if len(passes) == 1:
            await gate.wait()  # the first pass is slow (a thread on a loaded machine)

    async def main() -> None:
        r = Rerun(work, "test")
        r.ask(["link"])
        await asyncio.sleep(0)
        assert passes == [["link"]] and r.running()
        r.ask(["route"])  # while it runs: not dropped ...
        r.ask(["addr", "route"])
        gate.set()
        for _ in range(5):
            await asyncio.sleep(0)
        assert passes == [["link"], ["addr", "route"]]  # ... one more pass with both
        assert not r.running()
        r.ask(["route"])  # idle: a pass at once
        await asyncio.sleep(0)
        assert passes[-1] == ["route"]

    asyncio.run(main())


def test_a_failed_pass_does_not_stop_the_next_and_cancel_ends_it() -> None:
    passes: list[list[str]] = []

    async def work(kinds: list[str]) -> None:
        passes.append(kinds)
        if kinds == ["bad"]:
            raise OSError("the route lookup failed")
        await asyncio.sleep(10)

    async def main() -> None:
        r = Rerun(work, "test")
        r.ask(["bad"])
        await asyncio.sleep(0)
        r.ask(["route"])
        await asyncio.sleep(0.01)
        assert passes == [["bad"], ["route"]] and r.running()
        r.ask(["link"])
        r.cancel()
        await asyncio.sleep(0.01)
        assert not r.running() and passes == [["bad"], ["route"]]

    asyncio.run(main())
