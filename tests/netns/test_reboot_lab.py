"""A NAT router reboots under a session (issue 24): a new WAN address and its conntrack table
flushed (wgdisco/lab/natcells.reboot), on the home-broadband WAN (wgdisco/lab/wan.py: 20 ms ± 5 ms
each way and 1 % loss on each site's line). Real parts: nftables routers, stund, Knot; wgdisco
with the documented defaults. bench/reboot.py gives the figures (10 runs each way).
"""

from __future__ import annotations

import json
import sys
import time

import pytest

from wgdisco.lab import Lab
from wgdisco.lab.natcells import first_ping, pair, ping_replies, reboot, recovery
from wgdisco.lab.wan import PROFILES

pytestmark = pytest.mark.netns

BOUND = 6.0  # s; the design: 2 s of unanswered data on both sides, a STUN and a DNS round trip,
# then a probe; bench/reboot.py's medians are under 3 s, this bounds one run on a lossy line


def endpoint(node) -> str:  # type: ignore[no-untyped-def]
    out = json.loads(node.host.run([sys.executable, "-m", "wgdisco", "status", node.iface, "--json"]).stdout)
    return str(out["peers"][0]["endpoint"])


def replies_flow(pinger, count: int = 5, timeout: float = 10) -> None:  # type: ignore[no-untyped-def]
    """Wait until ``count`` more replies came (the session is in steady state)."""
    start, deadline = len(ping_replies(pinger)), time.monotonic() + timeout
    while len(ping_replies(pinger)) < start + count:
        assert time.monotonic() < deadline, pinger.stdout()[-500:]
        time.sleep(0.05)


def test_a_router_reboot_on_the_answering_side_is_recovered_in_seconds(lab: Lab) -> None:
    """a pings b; b's router reboots. b only answers, so it hears of its move only when its
    answers go unanswered (2 s): it asks STUN, publishes its new address and probes a at once,
    which opens b's new mapping towards a; a's data went unanswered too, so a looks b up again
    and its probe to the new address gets in. (The pinging side moving is bench/reboot.py's other
    half; one reboot per test: each side asks STUN early at most every 10 s.)"""
    net, a, b = pair(lab, "easy", "easy", PROFILES["home"])
    a.start()
    b.start()
    assert first_ping(a, b.inner4, timeout=15) is not None, a.proc.stderr()  # type: ignore[union-attr]
    pinger = a.host.popen(["ping", "-D", "-n", "-i", "0.1", "-W", "1", b.inner4], name="session")
    replies_flow(pinger)
    at = time.time()
    reboot(lab.nodes["rb"], "203.0.113.2/24", "203.0.113.22/24")
    took = recovery(pinger, at, timeout=20)
    print(f"b's router rebooted (home WAN): the session recovered after {took} s")
    assert took is not None and took <= BOUND, (took, a.proc.stderr()[-2000:], b.proc.stderr()[-2000:])  # type: ignore[union-attr]
    deadline = time.monotonic() + 5
    while endpoint(a) != "203.0.113.22:51820":  # a follows the move (the ping may have roamed first)
        assert time.monotonic() < deadline, endpoint(a)
        time.sleep(0.2)
    pinger.stop()
    for node in (a, b):
        assert "Traceback" not in node.proc.stderr()  # type: ignore[union-attr]
