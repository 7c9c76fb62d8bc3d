"""Added ping RTT: wgdisco, wireguard-go, and the floor any Python tunnel stands on.

    sudo .venv/bin/python bench/rtt_floor.py [--rounds 10] [--count 100] [--interval 0.01]

One lab of two namespaces over one veth pair carries every kind at once, each its own
tunnel (own interfaces, port and inner /24):

* ``wgdisco``      — wgdisco on both ends (as bench/throughput.py),
* ``wireguard-go`` — wireguard-go on both ends,
* ``bare-epoll`` / ``bare-threads`` — bench/bare_tunnel.py on both ends: one read, one
  ChaCha20-Poly1305 call, one write per traversal and nothing else, in Python.

Each round pings the veth peer and then every tunnel, in a fresh random order,
``ping -i INTERVAL -c COUNT``; a kind's sample is its average minus the veth average of
the same round. Interleaving in one lab matters: across fresh labs the same kind
varied 0.51–0.97 ms (CPU placement, the host's other guests), within one lab its rounds
stay within about 0.1 ms. The gap between the bare floor and wireguard-go is what Python
itself costs on this machine; the gap between wgdisco and the floor is what the protocol
costs.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import throughput as T  # noqa: E402

from wgdisco.lab import Host, Lab  # noqa: E402
from wgdisco.lab.wg import Node, keypair  # noqa: E402

KINDS = ("wgdisco", "wireguard-go", "bare-epoll", "bare-threads")
OUTER_A, OUTER_B = "198.51.100.1", "198.51.100.2"


def start_kind(lab: Lab, ha: Host, hb: Host, i: int, kind: str) -> str:
    """Tunnel number ``i`` of ``kind`` between the two hosts; returns the far end's inner address."""
    tag = lab.prefix[3:9]
    inner_a, inner_b = f"10.{20 + i}.0.1", f"10.{20 + i}.0.2"
    port = 51820 + i
    if kind.startswith("bare-"):
        for host, me, other, inner in ((ha, OUTER_A, OUTER_B, inner_a), (hb, OUTER_B, OUTER_A, inner_b)):
            proc = host.popen([sys.executable, str(REPO / "bench" / "bare_tunnel.py"),
                               "--tun", f"bt{i}{host.name[-1]}{tag}", "--address", f"{inner}/24",
                               "--listen", f"{me}:{port}", "--peer", f"{other}:{port}",
                               "--mode", kind.split("-", 1)[1]], name=f"bare-{i}-{host.name}")
            proc.wait_for(r"ready", timeout=10)
    else:
        a = Node(ha, kind, f"r{i}a{tag}", *keypair(), [f"{inner_a}/24"], listen_port=port)
        b = Node(hb, kind, f"r{i}b{tag}", *keypair(), [f"{inner_b}/24"], listen_port=port)
        a.peers = [b.peer_spec(f"{OUTER_B}:{port}")]
        b.peers = [a.peer_spec(f"{OUTER_A}:{port}")]
        b.start()
        a.start()
    T.wait_for_tunnel(ha, inner_b)
    return inner_b


def run(kinds: list[str], rounds: int, count: int, interval: float) -> dict[str, list[float]]:
    T.PING_ARGS[:] = ["-i", str(interval), "-c", str(count), "-q"]
    samples: dict[str, list[float]] = {k: [] for k in kinds}
    with Lab() as lab:
        ha, hb = lab.host("a"), lab.host("b")
        lab.link(ha, hb, f"{OUTER_A}/24", f"{OUTER_B}/24")
        targets = {kind: start_kind(lab, ha, hb, i, kind) for i, kind in enumerate(kinds)}
        rng = random.Random(0)
        for r in range(1, rounds + 1):
            raw, _ = T.ping_avg(ha, OUTER_B)
            order = list(kinds)
            rng.shuffle(order)
            for kind in order:
                tunnel, loss = T.ping_avg(ha, targets[kind])
                if loss:
                    raise RuntimeError(f"{kind}: {loss}% loss through the tunnel")
                samples[kind].append(round(tunnel - raw, 4))
            print(f"round {r}: veth {raw:.3f} ms; added " +
                  ", ".join(f"{k} {samples[k][-1]:.3f}" for k in kinds), flush=True)
    return samples


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--interval", type=float, default=0.01)
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "rtt-floor.json",
                   help="JSON results file (default bench/results/rtt-floor.json)")
    args = p.parse_args(argv)
    kinds = args.kinds.split(",")
    unknown = set(kinds) - set(KINDS)
    if unknown:
        p.error(f"unknown kinds {sorted(unknown)}; choose from {', '.join(KINDS)}")
    samples = run(kinds, args.rounds, args.count, args.interval)
    print(f"\nadded ping RTT, ms (ping -i {args.interval} -c {args.count}, one lab, "
          f"interleaved), median over {args.rounds} rounds:")
    for kind in kinds:
        print(f"  {kind:13s} {statistics.median(samples[kind]):.3f}  {samples[kind]}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "samples": samples}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
