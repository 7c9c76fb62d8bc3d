"""Where an idle mesh member's wake-ups go, in memory (issue 22): N members on one simulated LAN
(wgdisco/sim/network.py, the fake clock), run until every pair has a live path, then profile
member 0's ``run_timers`` + ``next_deadline`` over ``--idle`` simulated seconds of no traffic.

    .venv/bin/python bench/idle_profile.py --nodes 40 --idle 60

Prints the wake-ups of member 0, the calls into each core per wake-up, and the top functions
by cumulative time (cProfile). No network, no root; a deterministic simulation, so the counts
(not the seconds) are comparable across commits.
"""

from __future__ import annotations

import argparse
import cProfile
import inspect
import pstats
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wgdisco.sim.network import Net, SimNode  # noqa: E402
from wgdisco.proto.mesh import Mesh  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=40)
    ap.add_argument("--idle", type=float, default=60.0)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    mesh = Mesh(b"", master=bytes(32))  # a fixed master secret: no scrypt
    net = Net()
    net.source = "mdns"
    kw = {"unicast": False} if "unicast" in inspect.signature(SimNode).parameters else {}  # mDNS only
    nodes = [net.node(f"m{i}", (f"10.1.{i // 200}.{i % 200 + 2}", 51820), None, mesh=mesh, lan_prefix="10.1.0.0/16",
                      **kw) for i in range(args.nodes)]
    for n in nodes:
        n.start()
    took = net.run_until(lambda: all(len(n.node.peers) == args.nodes - 1 and all(
        n.node.has_path(p, net.now) for p in n.node.peers) for n in nodes), limit=120)
    print(f"{args.nodes} members: every pair has a path {took:.1f} s (simulated) after the start")
    net.run(30)  # settle
    a = nodes[0].node
    wakes = 0
    real_handle_timer = a.handle_timer

    def counted(now: float) -> None:
        nonlocal wakes
        wakes += 1
        real_handle_timer(now)

    a.handle_timer = counted  # type: ignore[method-assign]
    sent_before = net.delivered
    prof = cProfile.Profile()
    end = net.now + args.idle
    prof.enable()
    while net.now < end:
        t = net.next_time()
        net.now = end if t is None or t > end else max(t, net.now)
        net.step(end)
    prof.disable()
    print(f"idle {args.idle:g} s: {net.delivered - sent_before} datagrams delivered on the LAN "
          f"({(net.delivered - sent_before) / args.idle:.0f}/s, all members); member 0 woke {wakes} times")
    stats = pstats.Stats(prof)
    stats.sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
