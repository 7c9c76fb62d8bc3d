"""Added ping RTT: wgdisco, wireguard-go, and the floor any Python tunnel stands on.

    sudo .venv/bin/python bench/rtt_floor.py [--rounds 5] [--count 200] [--interval 0.01]

Round by round (A B C ...), each a fresh lab of two namespaces over one veth pair,
``ping -i INTERVAL -c COUNT`` through

* ``wgdisco``      — wgdisco on both ends (as bench/throughput.py),
* ``wireguard-go`` — wireguard-go on both ends,
* ``bare-epoll`` / ``bare-threads`` — bench/bare_tunnel.py on both ends: one read, one
  ChaCha20-Poly1305 call, one write per traversal and nothing else, in Python,

and reports the median added RTT (tunnel average minus the bare veth average) per kind.
The gap between the bare floor and wireguard-go is what Python itself costs on this
machine; the gap between wgdisco and the floor is what the protocol costs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import throughput as T  # noqa: E402

from tests.lab import Lab  # noqa: E402

KINDS = ("wgdisco", "wireguard-go", "bare-epoll", "bare-threads")


def bare_bed(lab: Lab, mode: str) -> tuple[object, str]:
    """Two bare tunnels over one veth pair; returns (host a, the far end's tunnel address)."""
    ha, hb = lab.host("a"), lab.host("b")
    lab.link(ha, hb, "198.51.100.1/24", "198.51.100.2/24")
    tag = lab.prefix[3:9]
    for host, me, other, inner in ((ha, "198.51.100.1", "198.51.100.2", "10.8.0.1/24"),
                                   (hb, "198.51.100.2", "198.51.100.1", "10.8.0.2/24")):
        proc = host.popen([sys.executable, str(REPO / "bench" / "bare_tunnel.py"), "--tun", f"bt{host.name[-1]}{tag}",
                           "--address", inner, "--listen", f"{me}:51900", "--peer", f"{other}:51900",
                           "--mode", mode], name=f"bare-{host.name}")
        proc.wait_for(r"ready", timeout=10)
    ha.ping("10.8.0.2", count=1, wait=2)
    return ha, "10.8.0.2"


def one(kind: str, count: int, interval: float) -> float:
    T.PING_ARGS[:] = ["-i", str(interval), "-c", str(count), "-q"]
    with Lab() as lab:
        if kind.startswith("bare-"):
            host, target = bare_bed(lab, kind.split("-", 1)[1])
        else:
            bed = T.build_bed(lab, T.CONFIGS[kind])
            target, host = bed.b.inner4, bed.a.host
        raw, _ = T.ping_avg(host, T.RAW_PEER)
        tunnel, loss = T.ping_avg(host, target)
        if loss:
            raise RuntimeError(f"{kind}: {loss}% loss through the tunnel")
        return round(tunnel - raw, 4)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--interval", type=float, default=0.01)
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "rtt-floor.json",
                   help="JSON results file (default bench/results/rtt-floor.json)")
    args = p.parse_args(argv)
    kinds = args.kinds.split(",")
    samples: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(1, args.rounds + 1):
        for kind in kinds:
            added = one(kind, args.count, args.interval)
            samples[kind].append(added)
            print(f"round {r} {kind:13s} added {added:.3f} ms", flush=True)
    print(f"\nadded ping RTT, ms (ping -i {args.interval} -c {args.count}), median over {args.rounds} rounds:")
    for kind in kinds:
        print(f"  {kind:13s} {statistics.median(samples[kind]):.3f}  {samples[kind]}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "samples": samples}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
