"""An opt-in memory debugging aid: WGDISCO_TRACEMALLOC=<dir> (docs/troubleshooting.md).

Unset (the default) it costs nothing: ``start`` returns None and tracemalloc is never started.
Set, the daemon calls ``tracemalloc.start(25)`` and, every WGDISCO_TRACEMALLOC_EVERY seconds
(default 60) and on SIGUSR2, writes into <dir>:

- ``snap-<pid>-<n>.tracemalloc``: a ``tracemalloc.Snapshot`` (compare two with
  ``Snapshot.load(a).compare_to(Snapshot.load(b), "traceback")``);
- ``snap-<pid>-<n>.txt``: uptime, VmRSS, threads, open fds, traced bytes, the collector's
  counts and collections per generation, and the 60 most numerous object types from
  ``gc.get_objects()``; with WGDISCO_TRACEMALLOC_REFERRERS=<type name>, what refers to
  (up to four of) its instances, eight levels up.

Tracing costs CPU and memory (every allocation records 25 frames): for debugging only.
"""

from __future__ import annotations

import collections
import gc
import logging
import os
import signal
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Mapping

log = logging.getLogger("wgdisco")

ENV_DIR = "WGDISCO_TRACEMALLOC"
ENV_EVERY = "WGDISCO_TRACEMALLOC_EVERY"
ENV_REFERRERS = "WGDISCO_TRACEMALLOC_REFERRERS"  # a type name: who holds its instances (in the .txt)
FRAMES = 25


class MemTrace:
    """Writes snapshots into ``directory`` every ``every`` seconds (a daemon thread) and on ``dump()``."""

    def __init__(self, directory: Path, every: float, referrers: str = "") -> None:
        self.directory = directory
        self.every = every
        self.referrers = referrers
        self.count = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="wgdisco-memtrace", daemon=True)

    def begin(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if not tracemalloc.is_tracing():
            tracemalloc.start(FRAMES)
        self.dump()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.dump()

    def dump(self) -> Path:
        with self._lock:
            n = self.count
            self.count += 1
            base = self.directory / f"snap-{os.getpid()}-{n:04d}"
            snap = tracemalloc.take_snapshot()
            snap.dump(str(base) + ".tracemalloc")
            types = collections.Counter(type(o).__name__ for o in gc.get_objects())
            current, peak = tracemalloc.get_traced_memory()
            lines = [f"uptime_s {time.monotonic() - self.started:.0f}", f"vmrss_kb {rss_kb()}",
                     f"threads {threading.active_count()} tasks {count_dir('/proc/self/task')}",
                     f"fds {count_dir('/proc/self/fd')}", f"traced_bytes {current} peak {peak}",
                     f"gc_count {gc.get_count()} frozen {gc.get_freeze_count()} collections "
                     f"{[g['collections'] for g in gc.get_stats()]}", ""]
            lines += [f"{c:8d} {name}" for name, c in types.most_common(60)]
            if self.referrers:
                lines += ["", f"referrers of {self.referrers}:"] + referrer_chains(self.referrers)
            Path(str(base) + ".txt").write_text("\n".join(lines) + "\n")
            return base


def referrer_chains(type_name: str, depth: int = 8, limit: int = 4) -> list[str]:
    """For up to ``limit`` objects of that type name: the chain of referrers, breadth-first,
    ``depth`` levels up (type names and a short repr), to see what keeps them alive."""
    out: list[str] = []
    targets = [o for o in gc.get_objects() if type(o).__name__ == type_name][:limit]
    ignore = {id(targets)}
    for target in targets:
        out.append(f"- {type_name} at {id(target):#x}")
        level, seen = [target], {id(target)}
        for d in range(depth):
            nxt = []
            for obj in level:
                for ref in gc.get_referrers(obj):
                    if id(ref) in seen or id(ref) in ignore or type(ref).__name__ == "frame" or ref is level or ref is nxt:
                        continue
                    seen.add(id(ref))
                    nxt.append(ref)
            if not nxt:
                out.append(f"  {d + 1}: nothing (garbage, or held only by C code)")
                break
            out.append(f"  {d + 1}: " + "; ".join(f"{type(r).__name__} {repr(r)[:120]!r}" for r in nxt[:12]))
            level = nxt[:12]
        del level
    return out


def rss_kb() -> int:
    try:
        return int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0])
    except (OSError, IndexError, ValueError):
        return -1


def count_dir(path: str) -> int:
    try:
        return len(os.listdir(path))
    except OSError:
        return -1


def start(environ: Mapping[str, str], loop=None) -> MemTrace | None:
    """Start tracing if WGDISCO_TRACEMALLOC names a directory; SIGUSR2 dumps at once (``loop``)."""
    directory = environ.get(ENV_DIR)
    if not directory:
        return None
    try:
        every = float(environ.get(ENV_EVERY, "60"))
    except ValueError:
        every = 60.0
    trace = MemTrace(Path(directory), max(every, 1.0), environ.get(ENV_REFERRERS, ""))
    trace.begin()
    if loop is not None:
        loop.add_signal_handler(signal.SIGUSR2, trace.dump)
    log.warning("%s=%s: tracemalloc on (%d frames), a snapshot every %.0f s and on SIGUSR2",
                ENV_DIR, directory, FRAMES, trace.every)
    return trace
