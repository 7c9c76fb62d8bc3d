"""Unicast DNS-SD browse of a big mesh against the lab's Knot (issue 26), with real parts (as root).

    .venv/bin/python bench/dns_browse.py [--members 16 100 500 1500 5000] [--runs 3] [--out FILE]

Per ``--members`` value: a fresh lab (Knot on one link, a client host on another, a router
between them that counts what crosses it), the zone written before Knot starts with that many
members, each record set as ``DnssdPublisher.publish`` leaves it (plain PTR, shard PTR, SRV, TXT
from ``records.build_txt``, A; ``wgdisco.lab.knot.member_zone``). Then, per run, a fresh
``DnssdClient`` with the daemon's settings (``browse_timeout`` = ``discovery.BROWSE_TIMEOUT``) in
the client host:

- ``cold``: its first browse (what a member does at start-up, or every poll before issue 26);
- ``unchanged``: the next browse, nothing changed in the zone (what a poll costs when idle);
- ``changed``: one member published (a real RFC 2136 UPDATE), then a browse (what a poll costs
  after any change anywhere in the zone).

Reported per browse: wall time, the client's CPU time, how it read (plain / shards / unchanged), queries the client
sent, UDP datagrams and TCP connections that reached Knot, bytes Knot sent back, and the largest
answer. The client runs in a child process inside the namespace (``--child``), so the figures
hold no lab overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.natmatrix import commit  # noqa: E402  (one way to name the checkout)
from wgdisco.lab import Lab  # noqa: E402
from wgdisco.lab.knot import member_zone, start_knot  # noqa: E402
from wgdisco.proto import keys, records  # noqa: E402

DOMAIN = "wg.example.net."
KNOT = "198.51.100.53"
COUNTERS = f"""table inet dnscount {{
    chain count {{
        type filter hook forward priority 0;
        ip daddr {KNOT} udp dport 53 counter
        ip daddr {KNOT} tcp dport 53 tcp flags & (syn | ack) == syn counter
        ip saddr {KNOT} udp sport 53 counter
        ip saddr {KNOT} tcp sport 53 counter
    }}
}}
"""


def member(i: int) -> records.ServiceRecord:
    import ipaddress

    pub = keys.public_key(keys.clamp(hashlib.sha256(i.to_bytes(4, "big")).digest()))
    return records.ServiceRecord(public_key=pub, port=51820, target=records.instance_name(pub, DOMAIN),
                                 addresses=[ipaddress.ip_address(f"203.0.113.{1 + i % 250}")],
                                 allowed=[ipaddress.ip_network("10.0.0.1/32")], candidates=[])


# ----------------------------------------------------------------------------- the child


async def child(update_key: str, seed: int) -> dict:
    from wgdisco.daemon.discovery import BROWSE_TIMEOUT
    from wgdisco.io.dnssd import DnssdClient, DnssdPublisher, parse_update_key

    client = DnssdClient((KNOT, 53), DOMAIN, browse_timeout=BROWSE_TIMEOUT)
    out = {}

    async def browse(what: str) -> None:
        started, cpu = time.monotonic(), time.process_time()
        labels = await client.browse()
        took, cpu = time.monotonic() - started, time.process_time() - cpu
        cost = client.last_browse
        out[what] = {"s": took, "cpu": cpu, "found": len(labels), "how": cost.how, "queries": cost.queries,
                     "largest": cost.largest}
        print(what, flush=True)
        sys.stdin.readline()  # the parent reads the router's counters

    await browse("cold")
    await browse("unchanged")
    rec = member(seed)
    publisher = DnssdPublisher((KNOT, 53), DOMAIN, DOMAIN, parse_update_key(update_key))
    await publisher.publish(rec.instance_label, rec.port, rec.target, rec.addresses, records.build_txt(rec), 60)
    print("published", flush=True)
    sys.stdin.readline()
    await browse("changed")
    return out


# ----------------------------------------------------------------------------- the parent


def counters(router) -> list[int]:
    out = router.run(["nft", "list", "table", "inet", "dnscount"]).stdout
    parts = out.split("packets ")[1:]
    return [int(p.split()[0]) for p in parts[:2]] + [int(p.split("bytes ")[1].split()[0]) for p in parts[2:4]]


def one_size(n: int, runs: int) -> list[dict]:
    with Lab() as lab:
        r, ns, cl = lab.router("r"), lab.host("ns"), lab.host("cl")
        lab.link(r, ns, "198.51.100.1/24", f"{KNOT}/24")
        lab.link(r, cl, "203.0.113.129/25", "203.0.113.130/25")
        ns.add_route("default", via="198.51.100.1")
        cl.add_route("default", via="203.0.113.129")
        started = time.monotonic()
        knot = start_knot(ns, [KNOT], extra_records=member_zone([member(i) for i in range(n)], DOMAIN))
        print(f"  {n} members: Knot up in {time.monotonic() - started:.1f} s", flush=True)
        r.run(["nft", "-f", "-"], input=COUNTERS)
        results = []
        for run in range(runs):
            proc = subprocess.Popen(["ip", "netns", "exec", cl.ns, sys.executable, __file__, "--child",
                                     knot.update_key, str(10_000_000 + run)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert proc.stdin and proc.stdout
            seen: dict[str, list[int]] = {}
            last = counters(r)
            for _ in range(4):
                what = proc.stdout.readline().strip()
                now = counters(r)
                seen[what] = [b - a for a, b in zip(last, now)]
                last = now  # before the child goes on
                proc.stdin.write("\n")
                proc.stdin.flush()
            result = json.loads(proc.stdout.read())
            proc.wait(30)
            for what, row in result.items():
                udp, tcp, udp_bytes, tcp_bytes = seen[what]
                row.update({"udp_at_knot": udp, "tcp_at_knot": tcp, "bytes_from_knot": udp_bytes + tcp_bytes})
            results.append(result)
        return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, nargs="+", default=[16, 100, 500, 1500, 5000])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "dns_browse.json"))
    ap.add_argument("--child", nargs=2, metavar=("UPDATE_KEY", "SEED"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(child(args.child[0], int(args.child[1])))), flush=True)
        return
    print(f"dns_browse at {commit()}", flush=True)
    table = {}
    for n in args.members:
        table[n] = one_size(n, args.runs)
    print("\n| members | browse | how | time (median) | client CPU (median) | queries | UDP / TCP at Knot | bytes from Knot "
          "| largest answer |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, runs in table.items():
        for what in ("cold", "unchanged", "changed"):
            rows = [r[what] for r in runs]
            med = statistics.median(r["s"] for r in rows)
            cpu = statistics.median(r["cpu"] for r in rows)
            r0 = rows[0]
            print(f"| {n:,} | {what} | {r0['how']} | {med:.3f} s | {cpu:.3f} s | {r0['queries']} | {r0['udp_at_knot']} / "
                  f"{r0['tcp_at_knot']} | {r0['bytes_from_knot']:,} | {r0['largest']:,} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"commit": commit(), "results": {str(k): v for k, v in table.items()}},
                                         indent=1))


if __name__ == "__main__":
    main()
