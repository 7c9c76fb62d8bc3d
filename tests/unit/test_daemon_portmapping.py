"""The daemon's port-mapping wiring (daemon/portmapping.py) without a gateway: its status object
matches docs/status.schema.json, the UPnP worker runs calls in order off the loop, and a mode
of "off" touches nothing."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

from tests.schema_check import check
from wgdisco.daemon.portmapping import PortMapping, _Worker

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "status.schema.json").read_text())


def test_status_matches_the_schema() -> None:
    pm = PortMapping("auto", internal_port=51820, set_mapping=lambda external: None)
    st = pm.status()
    check(st, SCHEMA["properties"]["port_mapping"], "$.port_mapping")
    assert (st["mode"], st["state"], st["external"], st["requests"]) == ("auto", "idle", None, 0)


def test_off_opens_nothing() -> None:
    async def main() -> None:
        pm = PortMapping("off", internal_port=51820, set_mapping=lambda external: None)
        await pm.start()
        assert pm.gateway is None and pm.status()["state"] == "off"
        await pm.close()

    asyncio.run(main())


def test_worker_runs_calls_in_order_on_one_thread() -> None:
    async def main() -> list[object]:
        loop = asyncio.get_running_loop()
        worker = _Worker()
        threads = []

        def job(n: int) -> int:
            threads.append(threading.current_thread().name)
            if n == 2:
                raise ValueError("boom")
            return n

        futures = [worker.submit(loop, job, n) for n in range(4)]
        results = await asyncio.gather(*futures, return_exceptions=True)
        worker.stop()
        assert set(threads) == {"wgdisco-upnp"} and threading.main_thread().name not in threads
        return results

    results = asyncio.run(main())
    assert results[:2] == [0, 1] and isinstance(results[2], ValueError) and results[3] == 3
