"""The NAT matrix: every pair of lab cells (wgdisco/lab/natcells.py), N runs each, the time from
starting both daemons to the first ping through the tunnel, and what the path was based on.

    sudo .venv/bin/python bench/natmatrix.py [--runs 10] [--cells easy,hard,...] [--pairs hard:easy,...]
                                             [--timeout 40] [--out bench/results/natmatrix.json] [--write-docs]
                                             [--render-only] [--wan off|home|mobile]

Each run is a fresh lab: a WAN with stund and Knot, node a in one cell and node b in the other,
each knowing only the other's key (no Endpoint), documented defaults (natcells.py says what a user
must write). The clock starts before the first daemon is launched; a pings b every 100 ms (1 s
timeout each) until one comes back or ``--timeout`` passes (a failure). After a success
``wgdisco status --json`` on a gives the path's basis (docs/nat-traversal.md) and, for a birthday
path, the probes both sides sent; when a holds a port mapping, b's status says whether b reached
a at the mapped address.

Results are merged into ``--out`` by pair (a later run of a pair replaces the earlier one), so
the matrix can be measured in chunks of under 10 minutes each under the quiet lock:

    flock /tmp/wgdisco-quiet.lock .venv/bin/python bench/natmatrix.py --pairs hard:easy,hard:hard
    flock /tmp/wgdisco-quiet.lock .venv/bin/python bench/natmatrix.py --pairs easy:easy
    .venv/bin/python bench/natmatrix.py --render-only --write-docs

``--wan home|mobile`` impairs every site's line to the internet (wgdisco/lab/wan.py's profiles:
home broadband 20 ms ± 5 ms each way and 1 % loss, mobile 60 ms ± 20 ms, 3 % loss, 1 %
reordering); results then go to ``bench/results/natmatrix-<profile>.json`` and the table between
the ``natmatrix-<profile>`` markers (docs/nat-traversal.md).

``--write-docs`` renders every pair in ``--out`` into docs/nat-traversal.md and
docs/performance.md between the ``natmatrix`` markers, with the commit and date of the runs; a
row already in a table whose pair ``--out`` does not hold is kept as it is (``--out`` is not
committed: the docs' rows are the record of earlier runs). Cells that cannot pair, or cannot be
built yet (``CELLS_PENDING`` in natcells.py), are listed with the reason instead of figures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wgdisco.lab import Lab  # noqa: E402
from wgdisco.lab.natcells import CELLS, CELLS_PENDING, V4_ONLY, applicable, first_ping, pair  # noqa: E402
from wgdisco.lab.wan import PROFILES, Profile, profile  # noqa: E402

DEFAULT_OUT = ROOT / "bench" / "results" / "natmatrix.json"


def markers(wan: str | None) -> tuple[str, str]:
    tag = "natmatrix" if wan is None else f"natmatrix-{wan}"
    return f"<!-- {tag}:begin -->", f"<!-- {tag}:end -->"


BEGIN, END = markers(None)
LABELS = {
    "easy": "easy NAT", "hard": "hard NAT", "mapped": "port-mapped hard NAT", "cgnat": "CGNAT (double NAT)",
    "v6fw": "IPv6, stateful firewall", "same": "same NAT, no hairpin", "wan": "WAN host",
}


def one_run(kind_a: str, kind_b: str, timeout: float, wan: Profile | None = None) -> dict:
    with Lab() as lab:
        _net, a, b = pair(lab, kind_a, kind_b, wan)
        start = time.monotonic()
        a.start()
        b.start()
        took = first_ping(a, b.inner4, timeout=timeout)
        elapsed = time.monotonic() - start  # from before the first daemon was launched
        result: dict = {"ok": took is not None, "seconds": round(elapsed, 3) if took is not None else None,
                        "after_up": round(took, 3) if took is not None else None}  # from both daemons up
        status = json.loads(a.host.run([sys.executable, "-m", "wgdisco", "status", a.iface, "--json"]).stdout)
        peer = status["peers"][0]
        result.update(path=peer["path"], basis=peer.get("path_basis"), reason=peer["reason"],
                      mapping=status["nat"]["mapping"])
        pm = status.get("port_mapping") or {}
        if pm.get("state") == "mapped":
            # a port-mapping gateway on a's side: did b reach a at the mapped address?
            st_b = json.loads(b.host.run([sys.executable, "-m", "wgdisco", "status", b.iface, "--json"]).stdout)
            result.update(port_mapping=pm["protocol"],
                          b_to_mapped=st_b["peers"][0]["endpoint"] == pm["external"])
        a.stop()
        b.stop()
        for name, node in (("a", a), ("b", b)):
            m = re.search(r"birthday-probes=(\d+)", node.proc.stderr())  # type: ignore[union-attr]
            result[f"birthday_probes_{name}"] = int(m.group(1)) if m else None
        return result


def pairs_of(cells: list[str]) -> list[tuple[str, str]]:
    out = []
    for i, a in enumerate(cells):
        for b in cells[i:]:
            out.append((a, b))
    return out


def commit() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


HEADER = ["| a | b | direct | median to first ping | max | path based on (a's side) | runs from |",
          "|---|---|---|---|---|---|---|"]


def kept_rows(table: str) -> dict[str, str]:
    """The rows of a rendered table (between the markers), by pair ``a:b``."""
    by_label = {v: k for k, v in LABELS.items()}
    rows = {}
    for line in table.splitlines():
        cols = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and line not in HEADER and len(cols) == 7 and cols[0] in by_label and \
                cols[1] in by_label:
            rows[f"{by_label[cols[0]]}:{by_label[cols[1]]}"] = line
    return rows


def render(results: dict, kept: dict[str, str] | None = None) -> str:
    """The markdown table of every measured pair (``kept``: rows of pairs not in ``results``, as
    they were), then the pairs that are not cells and why."""
    lines = list(HEADER)
    order = {c: i for i, c in enumerate(CELLS)}
    kept = {k: v for k, v in (kept or {}).items() if k not in results}
    for key in sorted({**results, **kept}, key=lambda k: tuple(order.get(c, 99) for c in k.split(":"))):
        if key in kept:
            lines.append(kept[key])
            continue
        r = results[key]
        a, b = key.split(":")
        runs = r["runs"]
        ok = [x["seconds"] for x in runs if x["ok"]]
        bases = sorted({x["basis"] for x in runs if x["ok"] and x["basis"]})
        med = f"{statistics.median(ok):.1f} s" if ok else "—"
        mx = f"{max(ok):.1f} s" if ok else "—"
        up = [x["after_up"] for x in runs if x["ok"] and x.get("after_up") is not None]
        if up and len(up) == len(ok):  # the same runs from both daemons up (older rows lack it)
            med += f" ({statistics.median(up):.1f} s)"
            mx += f" ({max(up):.1f} s)"
        if not ok:
            reasons = sorted({x["reason"] or "none" for x in runs})
            based = "no path: " + ", ".join(reasons)
        else:
            based = ", ".join(bases) or "—"
            mapped = [x for x in runs if x["ok"] and x.get("port_mapping")]
            if mapped:
                protos = ", ".join(sorted({x["port_mapping"].upper().replace("NATPMP", "NAT-PMP") for x in mapped}))
                based += f"; b to a's {protos} mapping {sum(bool(x['b_to_mapped']) for x in mapped)}/{len(ok)}"
        lines.append(f"| {LABELS.get(a, a)} | {LABELS.get(b, b)} | {len(ok)}/{len(runs)} | {med} | {mx} | {based} "
                     f"| {r['commit']}, {r['date']} |")
    pending = [f"- {LABELS[c]}: {why}" for c, why in CELLS_PENDING.items()]
    text = "\n".join(lines)
    if pending:
        text += "\n\nNot measured yet:\n" + "\n".join(pending)
    v4 = [LABELS[c] for c in CELLS if c in V4_ONLY]
    text += ("\n\nNot cells: " + ", ".join(v4) + " × IPv6-only (no address family in common); the same-NAT "
             "cell is only paired with itself. Figures with `+dirty`: uncommitted test or doc edits only.")
    return text


def write_docs(results: dict, wan: str | None = None) -> None:
    """Into both docs for the unimpaired matrix; a profile's table only where its markers are."""
    begin, end = markers(wan)
    written = 0
    for name in ("nat-traversal.md", "performance.md"):
        path = ROOT / "docs" / name
        text = path.read_text()
        if begin not in text:
            if wan is not None:
                continue
            raise SystemExit(f"{path}: no {begin} … {end} markers")
        head, rest = text.split(begin, 1)
        old, tail = rest.split(end, 1)
        table = render(results, kept_rows(old))
        path.write_text(f"{head}{begin}\n{table}\n{end}{tail}")
        written += 1
        print(f"wrote {path}")
    if not written:
        raise SystemExit(f"no {begin} … {end} markers in docs/nat-traversal.md or docs/performance.md")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--cells", default=",".join(c for c in CELLS if c not in CELLS_PENDING),
                    help="cells to pair, comma-separated (default: every cell that can be built)")
    ap.add_argument("--pairs", default="", help="only these pairs, e.g. hard:easy,hard:hard")
    ap.add_argument("--timeout", type=float, default=40.0, help="seconds to the first ping before a run fails")
    ap.add_argument("--out", type=Path, help="default bench/results/natmatrix[-<wan>].json")
    ap.add_argument("--wan", choices=("off", *PROFILES), default="off",
                    help="impair every site's line to the internet (wgdisco/lab/wan.py's profiles)")
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--render-only", action="store_true", help="run nothing: print (and --write-docs) what --out holds")
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs must be at least 1 (use --render-only to print what is measured)")
    wan = None if args.wan == "off" else args.wan
    if args.out is None:
        args.out = DEFAULT_OUT if wan is None else DEFAULT_OUT.with_name(f"natmatrix-{wan}.json")
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    todo = ([tuple(p.split(":", 1)) for p in args.pairs.split(",") if p.strip()] if args.pairs
            else [p for p in pairs_of(cells) if applicable(*p) is None])
    if args.render_only:
        todo = []
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    stamp = {"commit": commit(), "date": datetime.date.today().isoformat(), "wan": args.wan}
    for a, b in todo:
        why = applicable(a, b)
        if why is not None:
            print(f"{a} x {b}: skipped ({why})", flush=True)
            continue
        runs = []
        for i in range(args.runs):
            try:
                r = one_run(a, b, args.timeout, profile(wan))
            except Exception as e:  # noqa: BLE001 - a broken run is a failed run, reported
                r = {"ok": False, "seconds": None, "error": f"{type(e).__name__}: {e}"[:300],
                     "basis": None, "reason": "error"}
            runs.append(r)
            print(f"{a} x {b} run {i + 1}/{args.runs}: " + (f"{r['seconds']:.2f} s, {r.get('basis')}" if r["ok"]
                  else f"no path ({r.get('reason')}{', ' + r['error'] if 'error' in r else ''})")
                  + (f", birthday probes a={r.get('birthday_probes_a')} b={r.get('birthday_probes_b')}"
                     if r.get("birthday_probes_a") or r.get("birthday_probes_b") else ""), flush=True)
        results[f"{a}:{b}"] = {**stamp, "runs": runs}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
    print(render(results))
    if args.write_docs:
        write_docs(results, wan)
    return 0


if __name__ == "__main__":
    sys.exit(main())
