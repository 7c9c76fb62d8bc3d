"""Quiet when idle (issue 26) with real parts: two wgdisco nodes behind nftables NAT routers whose
conntrack forgets UDP flows after 30 s (``nf_conntrack_udp_timeout`` and ``_stream`` = 30), stund
and Knot; documented defaults, no PersistentKeepalive.

The 15-minute case (holes gone, a call through Knot re-opens them) takes a quarter of an hour of
wall time: ``bench/idle_wake.py`` runs it, figures in docs/performance.md; the call itself is
tested on the fake clock (tests/unit/test_idle.py).
"""

from __future__ import annotations

import time

import pytest

from tests.observe import status as status_of
from wgdisco.lab import Lab
from wgdisco.lab.natcells import first_ping, forwarded, idle_pair
from wgdisco.proto.paths import Timing

pytestmark = [pytest.mark.netns, pytest.mark.background]  # background: tests/run_suite.py
IDLE = 100.0
def test_an_idle_nat_pair_is_quiet_and_either_side_gets_through_after_100_s(lab: Lab) -> None:
    a, b, routers = idle_pair(lab)  # the defaults: no PersistentKeepalive
    a.start()
    b.start()
    assert first_ping(a, "10.9.0.2", 20) is not None, a.proc.stderr()  # type: ignore[union-attr]
    time.sleep(20)  # the traffic's tail: WireGuard's passive keepalive, keepalive probes while active
    before = [forwarded(r) for r in routers]
    started = time.monotonic()
    time.sleep(IDLE - 20)  # the idle time is what the test is about
    idle = time.monotonic() - started
    counts = [forwarded(r) - n for r, n in zip(routers, before)]
    # one keepalive probe and its answer per <= 25 s keep both NATs' flows (was one probe each
    # way every 5 s: 2 x 80 / 5 = 32 datagrams through each router)
    bound = 2 * (idle / Timing.nat_keepalive + 1)
    assert all(c <= bound for c in counts), (counts, bound)
    assert all(c >= 2 for c in counts), counts  # the flows were kept, not let go
    st = status_of(a)
    assert st["peers"][0]["path"] == "direct", st["peers"][0]  # trusted while quiet: no punching
    # the holes are open: either side's first ping after 100 s of quiet gets through at once
    took_b = first_ping(b, "10.9.0.1", 10)
    assert took_b is not None and took_b <= 3.0, took_b
    took_a = first_ping(a, "10.9.0.2", 10)
    assert took_a is not None and took_a <= 3.0, took_a
    print(f"forwarded while idle {counts} in {idle:.0f} s; first ping after it: b {took_b:.2f} s, a {took_a:.2f} s")
    for n in (a, b):
        assert n.stop() == 0
        assert "Traceback" not in n.proc.stderr()  # type: ignore[union-attr]
