"""Added ping RTT of wgdisco's two data paths and of wireguard-go 0.0.20231211, rounds alternating.

    sudo .venv/bin/python bench/ping_added.py [--rounds 3] [--count 200]

Each round builds one fresh lab per configuration (as bench/throughput.py: two namespaces, one veth
pair, a tunnel pair), pings the peer's veth address and then its tunnel address from ``a`` with
``ping -i 0.01 -c COUNT``, and prints tunnel avg - veth avg in ms: wgdisco with the compiled data
path (``WGDISCO_DATAPATH=c``), with the pure-Python one (``python``), and Debian 13's wireguard-go
(bench/anchor.py). The medians over the rounds close the output. Hold the quiet lock around it.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import anchor  # noqa: E402
from wgdisco.lab import Lab  # noqa: E402
from wgdisco.lab.wg import pair  # noqa: E402

RTT = re.compile(r"= [\d.]+/([\d.]+)/")


def added(kind: str, count: int, binary: str = "wireguard-go", env: dict[str, str] | None = None) -> float:
    with Lab() as lab:
        a, b = pair(lab, kind, kind, endpoint_on="both", binary=binary, env=env)
        a.host.ping(b.inner4, count=2, wait=3)
        avg = []
        for target in ("198.51.100.2", b.inner4):
            out = a.host.run(["ping", "-q", "-n", "-i", "0.01", "-c", str(count), target], check=False,
                             timeout=count * 0.05 + 30).stdout
            m = RTT.search(out)
            if m is None:
                raise RuntimeError(f"ping {target}: {out.strip()}")
            avg.append(float(m.group(1)))
        return avg[1] - avg[0]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--count", type=int, default=200)
    args = p.parse_args()
    new = str(anchor.fetch())
    configs = {
        "wgdisco-c": lambda: added("wgdisco", args.count, env={"WGDISCO_DATAPATH": "c"}),
        "wgdisco-python": lambda: added("wgdisco", args.count, env={"WGDISCO_DATAPATH": "python"}),
        "wireguard-go-0.0.20231211": lambda: added("wireguard-go", args.count, binary=new),
    }
    results: dict[str, list[float]] = {k: [] for k in configs}
    for r in range(1, args.rounds + 1):
        for name, run in configs.items():
            results[name].append(run())
        print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in results.items()), flush=True)
    print("median added RTT, ms: " + ", ".join(f"{k} {statistics.median(v):.3f}" for k, v in results.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
