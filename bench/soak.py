"""Soak: one daemon watched for a long time while the world around it churns (as root).

    .venv/bin/python bench/soak.py [--minutes 60] [--sample 30] [--env-a NAME=VALUE ...]

Three wgdisco nodes on one LAN with mDNS (the defaults), each the others' peer. Node a is watched
and never restarted; around it: node c restarts every 60 s (new process, same key: goodbye, new
record), node b changes its listen port every 45 s (`wg set`: record churn), a's LAN address set
changes every 90 s (a second address comes and goes: network-change handling, mDNS re-binding),
and a pings b and c once a second. Every --sample seconds a's RSS and CPU are printed; at the end a
JSON summary (RSS first/last/max, CPU per interval, pings lost). Nothing may grow without bound.
--env-a gives node a extra environment, e.g. WGDISCO_TRACEMALLOC=/tmp/snaps (docs/troubleshooting.md).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wgdisco.lab import Lab  # noqa: E402
from wgdisco.lab.wg import Node, keypair  # noqa: E402


def rss_kb(node: Node) -> int:
    assert node.proc is not None
    return int(open(f"/proc/{node.proc.pid}/status").read().split("VmRSS:")[1].split()[0])


def cpu_s(node: Node) -> float:
    assert node.proc is not None
    fields = open(f"/proc/{node.proc.pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--sample", type=float, default=30.0)
    ap.add_argument("--env-a", action="append", default=[], metavar="NAME=VALUE",
                    help="extra environment for node a (repeatable), e.g. WGDISCO_TRACEMALLOC=/tmp/snaps")
    args = ap.parse_args()
    rng = random.Random(1)
    with Lab() as lab:
        lan = lab.lan("lan")
        hosts = {n: lab.host(n) for n in "abc"}
        for i, (n, h) in enumerate(hosts.items(), start=1):
            lab.attach(h, lan, f"10.1.0.{i}/24", f"fd00:1::{i}/64", ifname="eth0")
        tag = lab.prefix[3:9]
        nodes = {n: Node(h, "wgdisco", f"s{n}{tag}", *keypair(), [f"10.9.0.{i}/24"], discovery={"mDNS": "on"})
                 for i, (n, h) in enumerate(hosts.items(), start=1)}
        for n, node in nodes.items():
            node.peers = [other.peer_spec() for m, other in nodes.items() if m != n]
        nodes["a"].env = dict(kv.split("=", 1) for kv in args.env_a)
        for node in nodes.values():
            node.start()
        a, b, c = nodes["a"], nodes["b"], nodes["c"]
        time.sleep(5)
        start = time.monotonic()
        end = start + args.minutes * 60
        samples = []
        next_sample, next_restart, next_port, next_addr, next_ping = start, start + 60, start + 45, start + 90, start
        cpu_prev, t_prev = cpu_s(a), start
        pings = lost = 0
        extra = False
        while (now := time.monotonic()) < end:
            if now >= next_ping:
                next_ping += 1.0
                for target in (b, c):
                    pings += 1
                    if a.host.run(["ping", "-c1", "-W1", target.inner4], check=False).returncode != 0:
                        lost += 1
            if now >= next_restart:
                next_restart += 60
                c.stop()
                c.start(up_timeout=120)  # churn around a: a restart slowed by a busy machine is not a's failure
            if now >= next_port:
                next_port += 45
                b.host.run(["wg", "set", b.iface, "listen-port", str(rng.randrange(40000, 60000))])
            if now >= next_addr:
                next_addr += 90
                op = "del" if extra else "add"
                a.host.ip("addr", op, "10.1.0.101/24", "dev", "eth0")
                extra = not extra
            if now >= next_sample:
                next_sample += args.sample
                cpu_now = cpu_s(a)
                sample = {"t": round(now - start), "rss_kb": rss_kb(a),
                          "cpu_pct": round(100 * (cpu_now - cpu_prev) / max(now - t_prev, 1e-9), 1),
                          "pings": pings, "lost": lost}
                cpu_prev, t_prev = cpu_now, now
                samples.append(sample)
                print(json.dumps(sample), flush=True)
            time.sleep(0.05)
        rss = [s["rss_kb"] for s in samples]
        summary = {"minutes": args.minutes, "rss_first_kb": rss[0], "rss_last_kb": rss[-1], "rss_max_kb": max(rss),
                   "cpu_pct_median": sorted(s["cpu_pct"] for s in samples[1:])[len(samples[1:]) // 2] if len(samples) > 1 else None,
                   "pings": pings, "lost": lost, "a_log_tracebacks": a.proc.stderr().count("Traceback")}  # type: ignore[union-attr]
        print(json.dumps(summary), flush=True)
        for node in nodes.values():
            node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
