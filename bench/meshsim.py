"""A mesh of N members on the in-memory internet (issue 26): the daemon's node cores
(proto/node.py) on a fake clock, behind a mix of simulated NATs, with mDNS on each site's LAN and
one unicast DNS-SD nameserver (wgdisco/sim/: network.py, rendezvous.py, mesh.py).

    .venv/bin/python bench/meshsim.py --members 100 [--traffic 10] [--json FILE]

Phases, all in simulated time: every member starts at once (``--ramp`` spreads them); the time
until every pair that can meet has a path both ways ("full mesh"; two hard NATs on different
sites cannot, the NAT matrix's hard ↔ hard row, and are counted apart), at most ``--limit`` s;
then ``--settle`` s (default 200: past the 180 s "in use" window of the convergence's own
traffic), then ``--idle`` s of no traffic measured (default 300), then, with ``--traffic P``,
``--traffic-time`` s in which a new random pair every 60/P s pings each other once a second for
``--traffic-duration`` s.

Reported: the simulated time to full mesh; datagrams each member sends per minute, idle and
under traffic, by kind (path probes, handshakes and keepalives; STUN; data), and the idle
average per member per second (issue 26's target: ≤ 1); the nameserver's queries per second
(PTR, SRV, TXT, and TCP retries of answers over 1232 bytes), its UPDATEs per second, the
largest answer of each type, and queries that could not be answered (over 65,535 bytes);
memory per member (the process's peak RSS growth over the run, divided by N; ``--tracemalloc``
for Python's own count, which slows the run about twofold); wall seconds per simulated minute in
each phase. ``--profile S`` runs cProfile over S more simulated idle seconds and prints the top
functions (``--profile-out FILE`` keeps the stats). A deterministic simulation: counts repeat
exactly for the same arguments and commit; wall times depend on the machine.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wgdisco.sim.mesh import DEFAULT_MIX, KINDS, Config, MeshSim, Window  # noqa: E402
from wgdisco.sim.rendezvous import MAX_MESSAGE  # noqa: E402

NOT_QUERIES = ("updates", "failed", "lookups-unchanged")  # counted beside the queries, not queries


def parse_mix(text: str) -> dict[str, float]:
    mix = {}
    for part in text.split(","):
        kind, _, share = part.partition("=")
        if kind not in KINDS:
            raise SystemExit(f"--mix: unknown kind {kind!r} (known: {', '.join(KINDS)})")
        mix[kind] = float(share)
    return mix


def commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty=+dirty"],
                             capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        out = "unknown"
    return out


def rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def timed_window(sim: MeshSim, seconds: float) -> tuple[Window, float]:
    """The window, and the CPU seconds this process spent in it (on a shared machine the wall
    time also counts what other processes took)."""
    cpu = time.process_time()
    w = sim.window(seconds, time.monotonic)
    return w, time.process_time() - cpu


def window_report(w: Window, cpu: float, members: int) -> dict:
    minutes = w.seconds / 60
    per = w.per_member_minute(members)
    queries = sum(v for k, v in w.dns.items() if k not in NOT_QUERIES)
    return {
        "seconds": w.seconds,
        "wall_s": round(w.wall, 2),
        "wall_per_sim_minute_s": round(w.wall / minutes, 2),
        "cpu_s": round(cpu, 2),
        "cpu_per_sim_minute_s": round(cpu / minutes, 2),
        "datagrams_per_member_minute": {k: round(v, 2) for k, v in per.items()},
        "datagrams_per_member_second": round(sum(per.values()) / 60, 3),
        "dns_queries_per_s": round(queries / w.seconds, 1),
        "dns_queries": w.dns,
        "dns_updates_per_s": round(w.dns.get("updates", 0) / w.seconds, 2),
        "mdns_messages_per_s": round(w.mdns / w.seconds, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, default=100)
    ap.add_argument("--mix", type=parse_mix, default=dict(DEFAULT_MIX),
                    help="site kinds and their shares, e.g. easy=0.15,restricted=0.45,hard=0.1,none=0.3 (default)")
    ap.add_argument("--lan-share", type=float, default=0.3, help="share of members on multi-member LANs (0.3)")
    ap.add_argument("--lan-size", type=int, default=5)
    ap.add_argument("--udp-timeout", type=float, default=30.0, help="NATs forget a UDP flow after this (30 s)")
    ap.add_argument("--max-message", type=int, default=MAX_MESSAGE,
                    help="the largest DNS answer the nameserver can give (65535: one message)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ramp", type=float, default=0.0, help="start the members evenly over this many s")
    ap.add_argument("--limit", type=float, default=600.0, help="give up on a full mesh after this many s")
    ap.add_argument("--settle", type=float, default=200.0)
    ap.add_argument("--idle", type=float, default=300.0)
    ap.add_argument("--traffic", type=float, default=0.0, help="new random pairs a minute (0: no traffic phase)")
    ap.add_argument("--traffic-time", type=float, default=120.0)
    ap.add_argument("--traffic-duration", type=float, default=30.0, help="each pair pings once a second this long")
    ap.add_argument("--wall-limit", type=float, default=0.0,
                    help="stop the convergence after this many wall seconds (0: none) and report how far it got")
    ap.add_argument("--profile-converge", action="store_true", help="cProfile the convergence phase")
    ap.add_argument("--profile", type=float, default=0.0, help="cProfile this many more idle simulated seconds")
    ap.add_argument("--profile-out", default=None)
    ap.add_argument("--tracemalloc", action="store_true")
    ap.add_argument("--json", default=None, help="write the results here too ('-': stdout only as JSON)")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    args = ap.parse_args()

    def say(text: str) -> None:
        if not args.quiet:
            print(text, file=sys.stderr, flush=True)

    at_commit = commit()  # the code that runs (the tree may change during a long run)
    if args.tracemalloc:
        tracemalloc.start()
    rss0, t0 = rss_kib(), time.monotonic()
    config = Config(members=args.members, mix=args.mix, lan_share=args.lan_share, lan_size=args.lan_size,
                    udp_timeout=args.udp_timeout, max_message=args.max_message, seed=args.seed)
    sim = MeshSim(config)
    kinds = {k: sim.kind.count(k) for k in KINDS}
    expected = sim.expected_pairs()
    n = args.members
    never = n * (n - 1) // 2 - expected
    say(f"{n} members on {len(set(sim.site))} sites {kinds}; {expected} pairs can meet, {never} cannot (hard ↔ hard)")
    sim.start(args.ramp)
    t1, cpu1 = time.monotonic(), time.process_time()
    last = [0.0]

    def progress(t: float, left: int) -> None:
        if time.monotonic() - last[0] >= 10:
            last[0] = time.monotonic()
            say(f"  {t:6.1f} s simulated: {left} directed pairs without a path (wall {time.monotonic() - t1:.0f} s)")

    before = sim.counts()
    prof = cProfile.Profile() if args.profile_converge else None
    if prof is not None:
        prof.enable()
    stop = (lambda: time.monotonic() - t1 > args.wall_limit) if args.wall_limit > 0 else (lambda: False)
    full = sim.run_to_full_mesh(args.limit + args.ramp, progress=progress, stop=stop)
    if prof is not None:
        prof.disable()
    converge_wall, converge_cpu = time.monotonic() - t1, time.process_time() - cpu1
    stopped = full is None and stop()
    converge_sim = sim.net.now - 1000.0
    during = sim.counts()
    dns_converge = {k: during["dns"].get(k, 0) - before["dns"].get(k, 0) for k in during["dns"]}
    say(f"full mesh: {'%.1f s' % full if full is not None else 'not within %g s' % args.limit}"
        f" (wall {converge_wall:.0f} s)")
    missing = 0 if full is not None else sim.missing()
    rss_converged = rss_kib()
    traced = tracemalloc.get_traced_memory()[0] if args.tracemalloc else None
    top_allocations = None
    if args.tracemalloc:  # where the memory is, by line (the per-peer state of the cores, mostly)
        stats = tracemalloc.take_snapshot().statistics("lineno")[:15]
        top_allocations = [{"where": f"{s.traceback[0].filename.replace(str(ROOT) + '/', '')}:{s.traceback[0].lineno}",
                            "kib_per_member": round(s.size / 1024 / n, 1), "blocks": s.count} for s in stats]
    profile_text = None
    if prof is not None:
        profile_text = profile_report(prof, args.profile_out)
    if stopped:  # out of wall time: what is known so far, no idle or traffic phase
        args.settle = args.idle = args.traffic = args.profile = 0.0

    sim.run(args.settle)
    idle, idle_cpu = timed_window(sim, args.idle) if args.idle > 0 else (None, 0.0)
    say(f"idle {args.idle:g} s: wall {idle.wall if idle else 0:.0f} s")
    traffic, traffic_cpu = None, 0.0
    if args.traffic > 0:
        sim.traffic(args.traffic, args.traffic_time, args.traffic_duration)
        traffic, traffic_cpu = timed_window(sim, args.traffic_time)
        say(f"traffic {args.traffic_time:g} s: wall {traffic.wall:.0f} s")
    if args.profile > 0:
        prof = cProfile.Profile()
        prof.enable()
        sim.run(args.profile)
        prof.disable()
        profile_text = profile_report(prof, args.profile_out)

    ns = sim.nameserver
    result = {
        "commit": at_commit,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "args": {k: v for k, v in vars(args).items() if k not in ("json", "quiet")},
        "members": n,
        "sites": len(set(sim.site)),
        "kinds": kinds,
        "pairs_that_can_meet": expected,
        "pairs_that_cannot": never,
        "full_mesh_s": None if full is None else round(full, 1),
        "directed_pairs_missing_at_limit": missing,
        "converge": {"simulated_s": round(converge_sim, 1), "wall_s": round(converge_wall, 1),
                     "cpu_s": round(converge_cpu, 1),
                     "dns_queries_per_s": round(sum(v for k, v in dns_converge.items()
                                                    if k not in NOT_QUERIES) / max(converge_sim, 1e-9), 1),
                     "dns_queries": dns_converge},
        "stopped_at_wall_limit": stopped,
        "idle": None if idle is None else window_report(idle, idle_cpu, n),
        "traffic": None if traffic is None else window_report(traffic, traffic_cpu, n),
        "dns_largest_answer_bytes": ns.largest,
        "dns_unanswerable": ns.failed,
        "ptr_set_members": len(ns.zone),
        "memory_per_member_kib": round((rss_converged - rss0) / n, 1),
        "tracemalloc_per_member_kib": None if traced is None else round(traced / 1024 / n, 1),
        "tracemalloc_top": top_allocations,
        "wall_total_s": round(time.monotonic() - t0, 1),
        "cpu_total_s": round(time.process_time(), 1),
    }
    if args.json == "-":
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if profile_text:
        print(profile_text, file=sys.stderr)


def profile_report(prof: cProfile.Profile, out_file: str | None) -> str:
    if out_file:
        prof.dump_stats(out_file)
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(40)
    return out.getvalue()


def print_table(r: dict) -> None:
    def row(name: str, value: object) -> None:
        print(f"  {name:<46} {value}")

    print(f"meshsim: {r['members']} members, {r['sites']} sites {r['kinds']}, commit {r['commit']}")
    row("pairs that can meet / cannot (hard ↔ hard)", f"{r['pairs_that_can_meet']} / {r['pairs_that_cannot']}")
    full = r["full_mesh_s"]
    row("full mesh after the last start (simulated)",
        f"{full} s" if full is not None else f"not reached in {r['converge']['simulated_s']} s: "
        f"{r['directed_pairs_missing_at_limit']} directed pairs missing"
        + (" (stopped at the wall-time limit)" if r["stopped_at_wall_limit"] else ""))
    c = r["converge"]
    row("  wall (CPU) time for it", f"{c['wall_s']} s ({c['cpu_s']} s); DNS {c['dns_queries_per_s']} queries/s")
    for phase in ("idle", "traffic"):
        w = r[phase]
        if w is None:
            continue
        per = w["datagrams_per_member_minute"]
        row(f"{phase} ({w['seconds']:g} s): datagrams/member/minute",
            f"{sum(per.values()):.1f}: " + ", ".join(f"{k} {v}" for k, v in per.items()))
        row("  per member per second", w["datagrams_per_member_second"])
        row("  nameserver queries/s (UPDATEs/s)", f"{w['dns_queries_per_s']} ({w['dns_updates_per_s']})")
        row("  mDNS messages/s", w["mdns_messages_per_s"])
        row("  wall (CPU) s per simulated minute", f"{w['wall_per_sim_minute_s']} ({w['cpu_per_sim_minute_s']})")
    row("largest DNS answer (bytes)", ", ".join(f"{k} {v:,}" for k, v in sorted(r["dns_largest_answer_bytes"].items())))
    row("DNS answers too large for one message", r["dns_unanswerable"])
    row("memory per member (RSS growth / N)", f"{r['memory_per_member_kib']} KiB")
    if r["tracemalloc_per_member_kib"] is not None:
        row("memory per member (tracemalloc / N)", f"{r['tracemalloc_per_member_kib']} KiB; by line:")
        for a in r["tracemalloc_top"]:
            print(f"      {a['kib_per_member']:8.1f} KiB  {a['where']}")
    row("wall (CPU) time in all", f"{r['wall_total_s']} s ({r['cpu_total_s']} s)")


if __name__ == "__main__":
    main()
