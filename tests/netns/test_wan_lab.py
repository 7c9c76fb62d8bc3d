"""The impaired WAN (wgdisco/lab/wan.py): requested against measured delay, jitter, loss,
reordering and duplication, and the forwarder's own overhead, timed one way with CLOCK_MONOTONIC
(one clock in every namespace). Four hosts on one switch: d direct, a behind a forwarder that
impairs nothing (its overhead), c behind one with a profile; b receives.
"""

from __future__ import annotations

import json
import statistics
import sys

import pytest

from wgdisco.lab import Lab
from wgdisco.lab.wan import PROFILES, Profile, impair

pytestmark = pytest.mark.netns

COUNT, INTERVAL = 400, 0.004
TEST = Profile("test", delay_ms=20, jitter_ms=5, loss=0.10, reorder=0.05, duplicate=0.05)


def one_way(src, dst, port: int) -> dict:  # type: ignore[no-untyped-def]
    rx = dst.popen([sys.executable, "-m", "wgdisco.lab.wan", "recv", str(port), "--seconds",
                    str(COUNT * INTERVAL + 1.5)], name=f"recv{port}")
    rx.wait_for("^READY")
    src.run([sys.executable, "-m", "wgdisco.lab.wan", "send", f"203.0.113.2:{port}", "--count", str(COUNT),
             "--interval", str(INTERVAL)])
    rx.wait(timeout=10)
    return json.loads(rx.stdout().splitlines()[-1])


def test_the_impaired_wan_gives_what_was_asked_and_costs_little(lab: Lab) -> None:
    assert PROFILES["home"].describe() == "20 ms ± 5 ms each way, 1 % loss"
    assert PROFILES["mobile"].describe() == "60 ms ± 20 ms each way, 3 % loss, 1 % reordering"
    sw = lab.lan("w")
    b, d, a, c = lab.host("b"), lab.host("d"), lab.host("a"), lab.host("c")
    lab.attach(b, sw, "203.0.113.2/24")
    lab.attach(d, sw, "203.0.113.4/24")
    ifa = lab.attach(a, sw, "203.0.113.1/24")
    ifc = lab.attach(c, sw, "203.0.113.3/24")
    for h in (a, c, d):  # neighbours resolved before the loss starts (a lost ARP costs 1 s)
        h.ping("203.0.113.2")
    plain = impair(lab, a, ifa, sw, PROFILES["none"])
    lossy = impair(lab, c, ifc, sw, TEST, seed=24)

    direct = statistics.median(one_way(d, b, 9001)["delays_ms"])
    got = one_way(a, b, 9002)
    overhead = statistics.median(got["delays_ms"]) - direct
    print(f"one way, direct: median {direct:.3f} ms; through the forwarder: +{overhead:.3f} ms "
          f"(received {got['received']}/{COUNT})")
    assert got["received"] == COUNT and got["duplicates"] == got["reordered"] == 0
    assert overhead < 1.0, overhead

    got = one_way(c, b, 9003)
    delays = sorted(got["delays_ms"])
    lost = 1 - got["received"] / COUNT
    p90 = delays[int(0.9 * len(delays))]
    print(f"asked {TEST.describe()}: median {statistics.median(delays):.2f} ms, min {delays[0]:.2f}, "
          f"90th percentile {p90:.2f}, max {delays[-1]:.2f}, lost {lost:.1%}, reordered {got['reordered']}, "
          f"duplicated {got['duplicates']} of {got['received']}")
    # delay: 20 ± 5 ms, plus the overhead above; the reordered 5 % are held one delay more (a
    # frame never leaves before the one ahead of it, so the median is a little above 20 ms)
    # (under CI load the median came to 22.51 ms once: the bound was 22.5 until then)
    assert 15.0 <= delays[0] and 19.0 <= statistics.median(delays) <= 23.5
    # the 99th percentile is the reordered frames' (held one delay more: <= 2 x 25 ms); the single
    # worst frame also carries any pause of the two Python processes timing it (a CI run saw one of
    # 85.6 ms with the 99th percentile in bounds), so it only guards against a frame held for good
    p99 = delays[int(0.99 * len(delays))]
    assert p90 <= 27.0 and p99 <= 60 and delays[-1] <= 200, (p90, p99, delays[-1])
    # loss 10 % (binomial, 400 draws: σ = 1.5 %), reordering and duplication 5 % each
    assert 0.05 <= lost <= 0.16, lost
    assert 5 <= got["reordered"] <= 40 and 5 <= got["duplicates"] <= 40, got
    counters = lossy.counters()["up"]
    assert counters["lost"] == counters["received"] - counters["sent"] + counters["duplicated"]
    assert plain.counters()["up"]["lost"] == 0
