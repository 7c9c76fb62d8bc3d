"""Run a wgdisco tunnel with test-only constructor parameters (inside a lab host).

    python -m wgdisco.lab.run_tunnel CONFIG [--timing JSON] [--load-threshold N]

Same as ``wgdisco up CONFIG``, but the protocol constants can be shortened:
they are passed to the Tunnel/Device constructors, never patched globally.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from typing import Callable

from wgdisco import config
from wgdisco.daemon import Tunnel
from wgdisco.io.systemd import quiet_log_records
from wgdisco.proto.timers import Timing


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("config")
    p.add_argument("--timing", default="{}")
    p.add_argument("--load-threshold", type=int, default=None)
    p.add_argument("--multicast-group-rate", type=float, default=None,
                   help="packets a second per multicast group sent on (a flooding member in the lab)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    quiet_log_records()
    cfg = config.load(args.config)
    extra = {} if args.multicast_group_rate is None else {"multicast_group_rate": args.multicast_group_rate}
    tunnel = Tunnel(cfg, timing=Timing(**json.loads(args.timing)), handshake_load_threshold=args.load_threshold,
                    **extra)
    profile_to = os.environ.get("WGDISCO_CPROFILE")  # lab only: a cProfile of each thread, on exit
    if not profile_to:
        asyncio.run(tunnel.run())
        return 0
    import cProfile
    import threading

    def profiled(fn: Callable[[], object], name: str) -> None:
        prof = cProfile.Profile(time.thread_time)  # CPU, not waits
        prof.enable()
        try:
            fn()
        finally:
            prof.disable()
            prof.dump_stats(f"{profile_to}.{name}")

    real_run = threading.Thread.run  # every thread (the data plane: "dataplane-IFACE"), and the loop
    threading.Thread.run = lambda self: profiled(lambda: real_run(self), self.name)  # type: ignore[method-assign]
    profiled(lambda: asyncio.run(tunnel.run()), "loop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
