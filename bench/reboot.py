"""A NAT router reboots under a session: how long until the tunnel carries traffic again (issue 24).

    sudo .venv/bin/python bench/reboot.py [--runs 10] [--wan off|home|mobile] [--moved a,b]
                                          [--out bench/results/reboot-<wan>.json]

Each run is a fresh lab: the NAT matrix's easy x easy cell (wgdisco/lab/natcells.py: two easy
nftables NATs, stund and Knot, documented defaults, PersistentKeepalive = 25), every site's line
impaired with ``--wan`` (wgdisco/lab/wan.py). Once a's first ping came back, a pings b through the
tunnel every 100 ms (``ping -D``) and, 1 s later, the router of the ``--moved`` side "reboots"
(natcells.reboot: a new WAN address, 203.0.113.2x, and its conntrack table flushed). The time is
from the reboot to the first reply of a ping sent after it. ``a``: the pinging side moved; ``b``:
the pinged side moved. Afterwards the other side's endpoint must be the new address (a check,
reported).

Run it under the quiet lock (other agents run lab tests on this 2-core machine):

    flock /tmp/wgdisco-quiet.lock .venv/bin/python bench/reboot.py --runs 10 --wan home
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wgdisco.lab import Lab  # noqa: E402
from wgdisco.lab.natcells import first_ping, pair, reboot, recovery  # noqa: E402
from wgdisco.lab.wan import PROFILES, profile  # noqa: E402
from bench.natmatrix import commit  # noqa: E402  (one way to name the checkout)


def status(node) -> dict:  # type: ignore[no-untyped-def]
    return json.loads(node.host.run([sys.executable, "-m", "wgdisco", "status", node.iface, "--json"]).stdout)


def one_run(moved: str, wan: str, timeout: float) -> dict:
    with Lab() as lab:
        _net, a, b = pair(lab, "easy", "easy", profile(wan))
        a.start()
        b.start()
        if first_ping(a, b.inner4, timeout=30) is None:
            return {"ok": False, "seconds": None, "error": "no first ping"}
        pinger = a.host.popen(["ping", "-D", "-n", "-i", "0.1", "-W", "1", b.inner4], name="session")
        time.sleep(1.0)  # a session in steady state
        index = 1 if moved == "a" else 2
        old, new = f"203.0.113.{index}", f"203.0.113.{index + 20}"
        at = time.time()
        reboot(lab.nodes[f"r{moved}"], f"{old}/24", f"{new}/24")
        took = recovery(pinger, at, timeout)
        pinger.stop()
        other = b if moved == "a" else a
        endpoint = status(other)["peers"][0]["endpoint"]
        return {"ok": took is not None, "seconds": round(took, 3) if took is not None else None,
                "other_endpoint": endpoint, "followed": endpoint == f"{new}:51820"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--wan", choices=("off", *PROFILES), default="off")
    ap.add_argument("--moved", default="a,b", help="whose router reboots: a (the pinging side), b, or both")
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    out = args.out or ROOT / "bench" / "results" / f"reboot-{args.wan}.json"
    result: dict = {"commit": commit(), "wan": args.wan, "runs": args.runs}
    for moved in [m.strip() for m in args.moved.split(",") if m.strip()]:
        runs = []
        for i in range(args.runs):
            r = one_run(moved, args.wan, args.timeout)
            runs.append(r)
            print(f"{moved}'s router rebooted, run {i + 1}/{args.runs}: "
                  + (f"{r['seconds']:.2f} s" if r["ok"] else f"no recovery ({r.get('error', 'timeout')})")
                  + ("" if r.get("followed", True) else f", other side's endpoint {r.get('other_endpoint')}"),
                  flush=True)
        ok = [r["seconds"] for r in runs if r["ok"]]
        summary = {"runs": runs, "recovered": len(ok),
                   "median_s": statistics.median(ok) if ok else None, "max_s": max(ok) if ok else None,
                   "min_s": min(ok) if ok else None}
        result[moved] = summary
        if ok:
            print(f"{moved} moved: recovered {len(ok)}/{len(runs)}, median {summary['median_s']:.2f} s "
                  f"(min {summary['min_s']:.2f}, max {summary['max_s']:.2f})", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
