"""The path MTU black hole, wgdisco against the reference (issue 25): who completes a TCP transfer?

    sudo .venv/bin/python bench/pmtu_blackhole.py [--mb 40] [--limit 30] [--binary wireguard-go]

The lab of tests/netns/test_pmtu_lab.py (wgdisco/lab/narrow.py): A — router — B, the link between
the router and B at MTU 1400, the router's ICMP "too big" dropped, tunnels at their default MTU
(1420). For each underlay (IPv6; IPv4 whose fragments are dropped before B; IPv4 whose router
fragments and whose fragments pass) and each kind (wgdisco on both ends, wireguard-go on both
ends), a ``--mb`` MB TCP transfer each way through the tunnel (lab/tcpxfer.py), given ``--limit``
seconds: it prints the time or "stalled". wgdisco's rows are the lab test's; wireguard-go's are
the reference, kept out of the test suite for the minute its stalls cost (docs/troubleshooting.md
"Path MTU"). Root and network namespaces; nothing leaves the machine. ``--binary``: another
wireguard-go (bench/anchor.py prints the path of Debian 13's).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from wgdisco.lab import Lab  # noqa: E402
from wgdisco.lab.narrow import NarrowPath, transfer  # noqa: E402

CASES = [  # (name, outer IPv6, drop IPv4 fragments)
    ("ipv6", True, False),
    ("ipv4-fragments-dropped", False, True),
    ("ipv4-fragments-pass", False, False),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=40)
    ap.add_argument("--limit", type=float, default=30.0)
    ap.add_argument("--binary", default="wireguard-go")
    args = ap.parse_args()
    version = subprocess.run([args.binary, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[0]
    print(f"{args.mb} MB each way, link MTU 1400, ICMP too big filtered; {version}")
    with Lab() as lab:
        net = NarrowPath(lab)
        for name, outer6, nofrag in CASES:
            net.set_mtu(1400, drop_fragments=nofrag)
            for kind in ("wgdisco", "wireguard-go"):
                a, b = net.pair(outer6=outer6, kind=kind, binary=args.binary)
                t0 = time.monotonic()
                try:
                    r = transfer(a, b, args.mb * 2**20, timeout=args.limit)
                    ok = r["up_ok"] and r["down_ok"]
                    what = f"{time.monotonic() - t0:.1f} s, longest stall {r['max_gap_s']} s" if ok else "corrupt"
                except Exception as e:  # noqa: BLE001 - a stall is the result, whatever form it takes
                    what = f"stalled (no completion in {args.limit:.0f} s: {type(e).__name__})"
                print(f"{name:24} {kind:13} {what}", flush=True)
                a.stop()
                b.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
