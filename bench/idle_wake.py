"""Reaching an idle peer again (issue 26), with real parts (as root).

    .venv/bin/python bench/idle_wake.py [--idle 100 900] [--runs 1] [--out FILE]

Two wgdisco nodes behind nftables NAT routers (the NAT matrix's "easy" cell: stund, Knot, the
documented defaults, no PersistentKeepalive) whose conntrack forgets UDP flows after 30 s
(``nf_conntrack_udp_timeout`` and ``_stream`` = 30). Per run and per ``--idle`` value: a pings
b once (the path is made), nothing is sent for ``idle`` seconds, then the side given by the run's
turn (a, then b, alternating) pings the other once a second; the time until the first answer is
reported, and the datagrams the routers forwarded between the two (not DNS, not STUN) while idle.

After 100 s the peer is still *in use* (data within 3 min): one keepalive probe per 25 s keeps
both NATs' flows, the first ping should get through at once. After 15 minutes the flows are gone;
the first ping's packets die at the far NAT until the far side reads our record's ``call=`` at its
next lookup (PollInterval, 10 s) and probes us: the bound is PollInterval + 2 s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wgdisco.lab import Lab  # noqa: E402
from wgdisco.lab.natcells import first_ping, forwarded, idle_pair  # noqa: E402

def one(idle: float, first: str) -> dict:
    with Lab() as lab:
        a, b, routers = idle_pair(lab)
        a.start()
        b.start()
        made = first_ping(a, "10.9.0.2", 30)
        before = [forwarded(r) for r in routers]
        time.sleep(idle)
        during = [forwarded(r) - n for r, n in zip(routers, before)]
        before_ping = {n.iface[:2]: _peer_state(n) for n in (a, b)}
        src, dst = (a, "10.9.0.2") if first == "a" else (b, "10.9.0.1")
        took = first_ping(src, dst, 60)
        for n in (a, b):
            n.stop()
        tracebacks = sum("Traceback" in n.proc.stderr() for n in (a, b))  # type: ignore[union-attr]
        row = {"idle": idle, "from": first, "first_path": made, "first_ping_after_idle": took,
               "forwarded_while_idle": during, "tracebacks": tracebacks, "before_ping": before_ping}
        if took is None:  # what happened: the last log lines of both
            row["logs"] = {n.iface[:2]: n.proc.stderr()[-4000:] for n in (a, b)}  # type: ignore[union-attr]
        return row


def _peer_state(node) -> dict:  # type: ignore[no-untyped-def]
    from tests.observe import status
    st = status(node)
    p = st["peers"][0]
    return {"path": p["path"], "reason": p.get("reason"), "endpoint": p.get("endpoint"),
            "candidates": [(c.get("address"), c.get("state")) for c in p["candidates"]],
            "counters": {k: v for k, v in st.get("counters", {}).items() if "call" in k or "idle" in k}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--idle", type=float, nargs="+", default=[100.0, 900.0])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rows = []
    for idle in args.idle:
        for i in range(args.runs):
            row = one(idle, "a" if i % 2 == 0 else "b")
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
