"""Mesh names on this host: the node core's names plan (MeshNamesChanged) written to the hosts
file block (io/hosts.py), coalesced, off the event loop; the block removed at shutdown.
docs/mesh.md "Names"."""

from __future__ import annotations

import asyncio
import logging

from wgdisco.errors import LocalError
from wgdisco.io.hosts import HostsFile
from wgdisco.proto.node import MeshNamesChanged

log = logging.getLogger("wgdisco")

COALESCE = 0.2  # seconds: a burst of admissions is one write


class HostsSync:
    def __init__(self, iface: str, path: str | None = None) -> None:
        self.file = HostsFile(iface, path)
        self.latest: MeshNamesChanged | None = None
        self.task: asyncio.Task[None] | None = None
        self.failed = False  # one warning per outage
        self.contested: set[str] = set()

    def update(self, plan: MeshNamesChanged) -> None:
        """A new plan (on the loop): written within COALESCE seconds."""
        for name in sorted(set(plan.contested) - self.contested):
            log.warning("mesh: two or more members claim the name %r: it resolves to none of them "
                        "(each keeps its wg-… key name; see wgdisco status)", name)
        self.contested = set(plan.contested)
        self.latest = plan
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._write(), name="hosts")

    async def _write(self) -> None:
        await asyncio.sleep(COALESCE)
        while self.latest is not None:
            plan, self.latest = self.latest, None
            try:
                await asyncio.to_thread(self.file.write, plan.hosts)
            except LocalError as e:
                if not self.failed:
                    log.warning("mesh names: cannot write %s: %s", self.file.path, e)
                self.failed = True
                continue
            if self.failed:
                log.info("mesh names: %s written again", self.file.path)
            self.failed = False

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None
        try:
            await asyncio.to_thread(self.file.remove)
        except LocalError as e:
            log.warning("mesh names: cannot remove our block from %s: %s", self.file.path, e)
