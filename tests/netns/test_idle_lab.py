"""Quiet when idle (issue 26) with real parts: two wgdisco nodes behind nftables NAT routers whose
conntrack forgets UDP flows after 30 s (``nf_conntrack_udp_timeout`` and ``_stream`` = 30), stund
and Knot; documented defaults, no PersistentKeepalive.

The 15-minute case (holes gone, a call through Knot re-opens them) takes a quarter of an hour of
wall time: it is marked ``quarter_hour`` and runs in a pytest of its own beside the others
(tests/run_suite.py), two pairs at once so that one wait covers both directions;
``bench/idle_wake.py`` gives its figures (docs/performance.md); the call on the fake clock:
tests/unit/test_idle.py.
"""

from __future__ import annotations

import time

import pytest

from tests.observe import status as status_of
from tests.observe import wait_until
from wgdisco.lab import Lab
from wgdisco.lab.natcells import COUNT_TABLE, Internet, discovery, first_ping, forwarded, idle_pair, internet
from wgdisco.lab.netns import Host
from wgdisco.lab.wg import Node, keypair
from wgdisco.proto.paths import Timing
from wgdisco.config import DiscoveryConfig

pytestmark = [pytest.mark.netns, pytest.mark.background]  # background: tests/run_suite.py
IDLE = 100.0
LONG_IDLE = 900.0  # issue 26: "after 15 minutes with no traffic, within PollInterval + 2 s"


def stopped_cleanly(*nodes: Node) -> None:
    """Each node stops with exit status 0 and logged no traceback."""
    for n in nodes:
        assert n.stop() == 0
        assert "Traceback" not in n.proc.stderr()  # type: ignore[union-attr]


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
    stopped_cleanly(a, b)


def open_site(net: Internet, name: str, index: int, prefix: str) -> Host:
    """A host on a public /24 of its own (``prefix``.2) behind a plain router (WAN 203.0.113.<index>):
    no NAT, no filter; the server routes the prefix through it."""
    lab = net.lab
    router = lab.router(f"r{name}")
    lab.attach(router, net.wan, f"203.0.113.{index}/24")
    lan = lab.lan(f"l{name}")
    lab.attach(router, lan, f"{prefix}.1/24")
    net.server.add_route(f"{prefix}.0/24", via=f"203.0.113.{index}")
    router.run(["nft", "-f", "-"], input=COUNT_TABLE)
    host = lab.host(name)
    lab.attach(host, lan, f"{prefix}.2/24")
    host.add_route("default", via=f"{prefix}.1")
    return host


def test_open_addresses_send_no_keepalives_while_in_use_and_the_first_ping_after_gets_through(lab: Lab) -> None:
    """Two hosts on public addresses of their own, no NAT, no firewall (defaults, stund with an
    alternate address, Knot): STUN sees each one's own address and RFC 5780 finds endpoint-
    independent filtering, so in the 3 minutes a pair stays in use after traffic nothing needs
    keeping and nothing is sent (behind NATs: one keepalive and its answer per 25 s)."""
    net = internet(lab)
    ha, hb = open_site(net, "a", 1, "198.51.100"), open_site(net, "b", 2, "192.0.2")
    ra, rb = lab.nodes["ra"], lab.nodes["rb"]
    ra.add_route("192.0.2.0/24", via="203.0.113.2")
    rb.add_route("198.51.100.0/24", via="203.0.113.1")
    tag = lab.prefix[3:9]
    a = Node(ha, "wgdisco", f"wa{tag}", *keypair(), ["10.9.0.1/24"], discovery=discovery("wan", net))
    b = Node(hb, "wgdisco", f"wb{tag}", *keypair(), ["10.9.0.2/24"], discovery=discovery("wan", net))
    a.peers, b.peers = [b.peer_spec()], [a.peer_spec()]  # no Endpoint, no PersistentKeepalive
    a.start()
    b.start()
    assert first_ping(a, "10.9.0.2", 20) is not None, a.proc.stderr()  # type: ignore[union-attr]
    nat = wait_until(lambda: s if (s := status_of(a)["nat"]).get("open") else None, 20,
                     lambda: f"a never found its address open: {status_of(a)['nat']}")
    assert nat["filtering"] == "endpoint-independent" and nat["reflexive"][0].startswith("198.51.100.2:"), nat
    time.sleep(20)  # the traffic's tail: WireGuard's passive keepalive, keepalive probes while active
    before = [forwarded(r) for r in (ra, rb)]
    time.sleep(60)  # in use (traffic within 3 min), and quiet: the time is what the test is about
    counts = [forwarded(r) - n for r, n in zip((ra, rb), before)]
    assert counts == [0, 0], counts  # no keepalive probe either way (NATed: 2-3 each way)
    took = first_ping(b, "10.9.0.1", 10)
    assert took is not None and took <= 1.0, took
    print(f"open addresses: forwarded while in use and quiet {counts} in 60 s; first ping after it {took:.2f} s")
    stopped_cleanly(a, b)


@pytest.mark.quarter_hour
@pytest.mark.timeout(LONG_IDLE + 300)
def test_after_15_minutes_idle_either_side_gets_through_within_poll_interval_plus_2_s(lab: Lab) -> None:
    """Two independent easy <-> easy pairs (each its own lab: routers forgetting UDP after 30 s,
    stund, Knot), defaults, no PersistentKeepalive. Each pair makes its path with one ping, then
    nothing is sent for 15 minutes: the pairs stay "in use" for 3 minutes, then let their NAT flows
    go, so the first packet dies at the far NAT until the far side reads the sender's ``call=`` at
    its next lookup. Pair 1 pings from a, pair 2 from b: both must get through within
    PollInterval + 2 s (docs/nat-traversal.md, "Idle peers")."""
    bound = DiscoveryConfig().poll_interval + 2.0
    with Lab() as lab2:
        pairs = [idle_pair(lab), idle_pair(lab2)]
        for a, b, _ in pairs:
            a.start()
            b.start()
        for a, _, _ in pairs:
            assert first_ping(a, "10.9.0.2", 30) is not None, a.proc.stderr()  # type: ignore[union-attr]
        before = [[forwarded(r) for r in routers] for _, _, routers in pairs]
        time.sleep(LONG_IDLE)  # the idle time is what the test is about
        during = [[forwarded(r) - n for r, n in zip(routers, was)] for (_, _, routers), was in zip(pairs, before)]
        (a1, _, _), (_, b2, _) = pairs
        took_a = first_ping(a1, "10.9.0.2", 30)
        took_b = first_ping(b2, "10.9.0.1", 30)
        print(f"after {LONG_IDLE:.0f} s idle: first ping from a {took_a}, from b {took_b} (bound {bound:.0f} s); "
              f"forwarded while idle (router a, b) {during}")
        assert took_a is not None and took_a <= bound, (took_a, a1.proc.stderr()[-3000:])  # type: ignore[union-attr]
        assert took_b is not None and took_b <= bound, (took_b, b2.proc.stderr()[-3000:])  # type: ignore[union-attr]
        for a, b, _ in pairs:
            stopped_cleanly(a, b)
