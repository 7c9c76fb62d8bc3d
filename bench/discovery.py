"""Time from starting two wgdisco nodes (each knowing only the other's key, no Endpoint) to the
first ping through their tunnel. Median of N runs.

    sudo .venv/bin/python bench/discovery.py [--scenario lan|nat|portmap] [--runs 10] [--out FILE]
    sudo .venv/bin/python bench/discovery.py --scenario portmap --mode pcp|natpmp|upnp|auto
    sudo .venv/bin/python bench/discovery.py --scenario nat --wan off|home|mobile [--runs 10]
    sudo .venv/bin/python bench/discovery.py --scenario nat --stagger 1.5 [--runs 10]

``lan``: one bridge, two hosts, ``[Discovery] mDNS = on``: found by mDNS.
``nat``: two sites behind two easy nftables NATs, a WAN with stund and Knot: found through
unicast DNS-SD, reflexive addresses from STUN, holes punched with probes (tests/netns/test_nat_lab.py's
topology). ``portmap``: site a behind a hard NAT (endpoint-dependent mapping) whose router runs
miniupnpd, site b behind an easy NAT; a maps its port with ``[Discovery] PortMapping = --mode``
(``auto``: the key is not set, the default) and b reaches the mapped address
(tests/netns/test_portmap_lab.py's topology). ``--wan`` (``nat`` only): the NAT matrix's easy x easy
cell (wgdisco/lab/natcells.py: the same two easy NATs, stund and Knot, PersistentKeepalive = 25)
with every site's line to the internet impaired by wgdisco/lab/wan.py's profile (``home``: 20 ms
± 5 ms each way and 1 % loss on each line; ``mobile``: 60 ms ± 20 ms, 3 % loss, 1 % reordering;
``off``: the same lab unimpaired). Each run is a fresh lab; the clock starts before the first daemon is launched; pings go
every 100 ms (1 s timeout each) until one comes back. ``--stagger S``: b is started S seconds
after a is up (a home lab's machines do not boot in the same second; a loaded machine starts the
second daemon late too): the figure is then from b's start.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wgdisco.lab import Lab  # noqa: E402
from wgdisco.lab.wg import Node, keypair  # noqa: E402


UP_TIMES: list[float] = []  # the same runs' seconds from both daemons up (after b.start returned)
STAGGER = 0.0  # seconds between a up and b's start (--stagger)


def first_ping_after_start(a, b) -> float:  # type: ignore[no-untyped-def]
    """Start a, then b; seconds until a's first ping to b through the tunnel gets an answer
    (the time from both daemons up goes to UP_TIMES)."""
    start = time.monotonic()
    a.start()
    if STAGGER:
        time.sleep(STAGGER)
        start = time.monotonic()  # from b's start: the later one is what a user waits for
    b.start()
    up = time.monotonic()
    while a.host.run(["ping", "-c1", "-W1", b.inner4], check=False).returncode != 0:
        if time.monotonic() - start > 30:
            raise RuntimeError("no ping within 30 s")
        time.sleep(0.1)
    UP_TIMES.append(time.monotonic() - up)
    return time.monotonic() - start


def one_nat_run() -> float:
    from tests.netns.test_nat_lab import two_sites

    with Lab() as lab:
        _net, a, b = two_sites(lab)
        return first_ping_after_start(a, b)


def one_cell_run(wan: str) -> float:
    from wgdisco.lab.natcells import pair
    from wgdisco.lab.wan import profile

    with Lab() as lab:
        _net, a, b = pair(lab, "easy", "easy", profile(wan))
        return first_ping_after_start(a, b)


def one_portmap_run(mode: str, natpmp: bool = True) -> float:
    from tests.netns.test_portmap_lab import mapped_hard_and_easy

    with Lab() as lab:
        a, b, _router = mapped_hard_and_easy(lab, None if mode == "auto" else mode, natpmp=natpmp)
        return first_ping_after_start(a, b)


def one_run() -> float:
    with Lab() as lab:
        lan = lab.lan("lan")
        ha, hb = lab.host("a"), lab.host("b")
        lab.attach(ha, lan, "10.1.0.1/24", "fd00:1::1/64")
        lab.attach(hb, lan, "10.1.0.2/24", "fd00:1::2/64")
        tag = lab.prefix[3:9]
        a = Node(ha, "wgdisco", f"wa{tag}", *keypair(), ["10.9.0.1/24"], discovery={"mDNS": "on"})
        b = Node(hb, "wgdisco", f"wb{tag}", *keypair(), ["10.9.0.2/24"], discovery={"mDNS": "on"})
        a.peers, b.peers = [b.peer_spec()], [a.peer_spec()]
        start = time.monotonic()
        b.start()
        a.start()
        while ha.run(["ping", "-c1", "-W1", b.inner4], check=False).returncode != 0:
            if time.monotonic() - start > 30:
                raise RuntimeError("no ping within 30 s")
            time.sleep(0.1)
        return time.monotonic() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenario", choices=("lan", "nat", "portmap"), default="lan")
    p.add_argument("--mode", choices=("pcp", "natpmp", "upnp", "auto"), default="auto",
                   help="portmap: the PortMapping setting of the hard side (auto: the default)")
    p.add_argument("--upnp-only", action="store_true", help="portmap: the gateway speaks UPnP IGD only (no PCP, NAT-PMP)")
    p.add_argument("--wan", choices=("off", "home", "mobile", "none"),
                   help="nat: the matrix's easy x easy cell, every site's line impaired (wgdisco/lab/wan.py)")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--stagger", type=float, default=0.0,
                   help="nat, portmap: start b this many seconds after a is up (the figure counts from b's start)")
    p.add_argument("--out", default="bench/results/discovery.json")
    args = p.parse_args()
    global STAGGER
    STAGGER = args.stagger
    if args.wan is not None and args.scenario != "nat":
        p.error("--wan goes with --scenario nat")
    samples = []
    for i in range(args.runs):
        if args.wan is not None:
            seconds = one_cell_run(args.wan)
        elif args.scenario == "portmap":
            seconds = one_portmap_run(args.mode, natpmp=not args.upnp_only)
        else:
            seconds = one_run() if args.scenario == "lan" else one_nat_run()
        samples.append(seconds)
        print(f"[{i + 1}/{args.runs}] first ping after {seconds:.2f} s"
              + (f" ({UP_TIMES[-1]:.2f} s after both daemons were up)" if len(UP_TIMES) == len(samples) else ""),
              flush=True)
    result = {"scenario": args.scenario, "wan": args.wan, "stagger_s": args.stagger, **({"mode": args.mode, "upnp_only": args.upnp_only} if args.scenario == "portmap" else {}), "runs": args.runs, "samples_s": samples, "median_s": statistics.median(samples),
              "min_s": min(samples), "max_s": max(samples)}
    if len(UP_TIMES) == len(samples):
        result.update(after_up_s=UP_TIMES, after_up_median_s=statistics.median(UP_TIMES), after_up_max_s=max(UP_TIMES))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"median {result['median_s']:.2f} s (min {result['min_s']:.2f}, max {result['max_s']:.2f}) over {args.runs} runs")
    if "after_up_s" in result:
        print(f"after both daemons were up: median {result['after_up_median_s']:.2f} s, "
              f"min {min(UP_TIMES):.2f}, max {result['after_up_max_s']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
