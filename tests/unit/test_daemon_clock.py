"""wgdisco.daemon.clock: one protocol clock, CLOCK_BOOTTIME, read everywhere a core's `now` comes from.

A suspend cannot be made here (the machine never sleeps, and boottime equals monotonic on it), so
the behaviour across one is shown with the fake clock (test_device.py, test_node.py: a forward
jump) and this file holds the daemon to the one clock: no daemon module reads another for a
core, and the compiled data path reads the same one (a keypair's ``expires`` is compared there).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from wgdisco.daemon import clock

ROOT = Path(__file__).resolve().parents[2] / "wgdisco"


def test_the_clock_is_boottime() -> None:
    assert clock.CLOCK == time.CLOCK_BOOTTIME
    a = clock.now()
    assert abs(time.clock_gettime(time.CLOCK_BOOTTIME) - a) < 1.0
    assert clock.now() >= a


def test_no_daemon_module_reads_another_clock_for_the_cores() -> None:
    """memtrace's uptime is a plain measurement; everything else goes through clock.now()."""
    offenders = {}
    for path in sorted((ROOT / "daemon").glob("*.py")):
        if path.name in ("clock.py", "memtrace.py"):
            continue
        text = path.read_text()
        found = re.findall(r"time\.monotonic\w*\(|CLOCK_MONOTONIC|loop\.time\(\)|perf_counter", text)
        if found:
            offenders[path.name] = found
    assert offenders == {}


def test_the_compiled_data_path_reads_the_same_clock() -> None:
    source = (ROOT / "io" / "_fastpath.c").read_text()
    calls = re.findall(r"clock_gettime\((\w+)", source)
    assert calls and set(calls) == {"CLOCK_BOOTTIME"}
