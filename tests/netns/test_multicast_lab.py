"""Multicast over the tunnel (issue 28, docs/mesh.md "Services across the mesh") with real daemons.

One lab for the module (wgdisco/lab/mcastmesh.py): mesh members a, b, c from one mesh file
(``Multicast`` at its default: mDNS in mesh mode), and d, a wireguard-go peer configured on a.
Each member runs its own Avahi bound to its tunnel interface (own mount namespace and system
bus, wgdisco/lab/avahi.py). Checks:

- Avahi: a service published on c is browsed on a with c's tunnel address; ``c.local`` resolves
  on b to c's tunnel address.
- Loop and transit: 20 packets to 224.0.0.251 and 20 to ff02::fb from a reach b and c exactly
  once each, TTL / hop limit 255 as sent, never d (a wireguard-go peer, with a session); what d
  sends to 224.0.0.251 is dropped by a (counted).
- A flood: c's host sends 10,000 mDNS packets a second for 10 s, and c's daemon runs with its
  group budget raised past that (``run_tunnel --multicast-group-rate``: a member whose wgdisco
  was modified to pass a flood on): a and b's daemons receive all of it, stay under FLOOD_CPU of
  one core, their RSS grows by less than 2 MB, their per-peer budget writes at most its rate
  into TUN (counted), and pings from a to b lose nothing.
"""

from __future__ import annotations

import os
import time
from typing import Iterator

import pytest

from wgdisco.lab import Lab, require_netns, require_tool
from wgdisco.lab.avahi import Avahi, parse_browse, require_avahi
from wgdisco.lab.mcastmesh import MulticastMesh, build, received
from wgdisco.proto.multicast import PEER_BURST, PEER_RATE

pytestmark = pytest.mark.netns

FLOOD_RATE = 10_000  # packets a second from c's host
FLOOD_SECONDS = float(os.environ.get("WGDISCO_MCAST_FLOOD_SECONDS", "10"))
FLOOD_CPU = 0.35  # of one core, for each of the members that receive the flood (docs/mesh.md)
RSS_GROWTH_KIB = 2048


@pytest.fixture(scope="module")
def mesh() -> Iterator[MulticastMesh]:
    require_netns()
    require_tool("wireguard-go")
    require_avahi()
    require_tool("avahi-resolve")
    lab = Lab(keep_logs=bool(os.environ.get("WGDISCO_KEEP_LOGS")))
    try:
        built = build(lab, flooder_rate=10 * FLOOD_RATE)
        built.avahi = {n: Avahi(m.host, m.iface, host_name=n).start() for n, m in built.members.items()}  # type: ignore[attr-defined]
        yield built
    finally:
        lab.close()


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_avahi_on_the_tunnel_browses_and_resolves_across_the_mesh(mesh: MulticastMesh) -> None:
    avahi = mesh.avahi  # type: ignore[attr-defined]
    c = mesh.members["c"]
    avahi["c"].popen(["avahi-publish", "-s", "printer on c", "_ipp._tcp", "631", "note=issue 28"])
    found: list[dict] = []

    def browsed() -> bool:
        out = avahi["a"].run(["avahi-browse", "-rpt", "_ipp._tcp"], check=False, timeout=20).stdout
        found[:] = [e for e in parse_browse(out) if e["name"] == "printer on c"]
        return any(e["address"] in c.addrs for e in found)

    wait_until(browsed, 20, f"a never browsed c's service: {found}\n{avahi['a'].log()[-2000:]}")
    assert {e["address"] for e in found} <= set(c.addrs), found  # only c's tunnel addresses
    assert all(e["host"] == "c.local" and e["port"] == 631 and "note=issue 28" in e["txt"] for e in found)

    def resolved() -> str:
        out = avahi["b"].run(["avahi-resolve", "-4", "-n", "c.local"], check=False, timeout=20).stdout.split()
        return out[1] if len(out) == 2 else ""

    wait_until(lambda: resolved() == c.addrs[0], 20, f"b: c.local -> {resolved()!r}, not {c.addrs[0]}")
    out = avahi["b"].run(["avahi-resolve", "-6", "-n", "c.local"], check=False, timeout=20).stdout.split()
    assert out[1:] == [c.addrs[1]], out
    for m in mesh.members.values():
        assert m.counters().get("multicast-received", 0) > 0


def test_each_packet_arrives_once_per_receiver_and_never_at_a_wireguard_go_peer(mesh: MulticastMesh) -> None:
    port = 49153
    listeners = {n: mesh.listen(n, port, "224.0.0.251", "ff02::fb") for n in "abcd"}
    before = mesh.members["a"].counters()
    mesh.send("a", "224.0.0.251", port, count=20, rate=200, tag="v4")
    mesh.send("a", "ff02::fb", port, count=20, rate=200, tag="v6")
    mesh.send("d", "224.0.0.251", port, count=5, rate=200, tag="wggo")
    expected = {f"{tag}-{i}" for tag in ("v4", "v6") for i in range(20)}
    for n in "bc":
        wait_until(lambda: {r["payload"] for r in received(listeners[n])} >= expected, 10,
                   f"{n} got {len(received(listeners[n]))} of 40")
    # a marker after everything: once it is in, anything a loop would have sent again is in too
    mesh.send("a", "224.0.0.251", port, count=1, tag="marker")
    for n in "bc":
        wait_until(lambda: any(r["payload"] == "marker-0" for r in received(listeners[n])), 10, f"{n}: no marker")
        got = [r for r in received(listeners[n]) if r["payload"] != "marker-0"]
        assert sorted(r["payload"] for r in got) == sorted(expected), n  # each exactly once
        assert {r["ttl"] for r in got} == {255}  # TTL / hop limit kept (RFC 6762 §11)
        assert {r["from"] for r in got} == set(mesh.members["a"].addrs)
    assert received(listeners["d"]) == []  # a has a session with d, but d runs wireguard-go
    assert received(listeners["a"]) == []  # d's packets were dropped by a, and nothing came back
    after = mesh.members["a"].counters()
    assert after.get("multicast-received-not-member", 0) - before.get("multicast-received-not-member", 0) == 5
    assert after["multicast-sent"] - before.get("multicast-sent", 0) >= 2 * 41  # to b and c, not d
    metrics = mesh.members["a"].metrics()
    line = f'wgdisco_multicast_total{{interface="{mesh.members["a"].iface}",what="multicast-received-not-member"}} '
    assert line + str(after["multicast-received-not-member"]) in metrics, metrics[-2000:]


def test_a_flooding_member_costs_the_others_bounded_cpu_and_no_memory(mesh: MulticastMesh) -> None:
    a, b, c = (mesh.members[n] for n in "abc")
    counted0 = {n: m.counters() for n, m in mesh.members.items()}
    cpu0 = {n: m.cpu_seconds() for n, m in mesh.members.items()}
    rss0 = {n: m.rss_kib() for n, m in mesh.members.items()}
    started = time.monotonic()
    flood = mesh.send("c", "224.0.0.251", 5353, count=10**9, rate=FLOOD_RATE, seconds=FLOOD_SECONDS,
                      tag="flood", wait=False)
    count = max(int(FLOOD_SECONDS / 0.1), 10)
    ping = a.host.run(["ping", "-q", "-i", "0.1", "-W", "1", "-c", str(count), b.addrs[0]], check=False,
                      timeout=FLOOD_SECONDS + 30)
    flood.wait_for(r'"sent"', timeout=FLOOD_SECONDS + 30)
    took = time.monotonic() - started
    cpu = {n: (m.cpu_seconds() - cpu0[n]) / took for n, m in mesh.members.items()}
    rss = {n: m.rss_kib() - rss0[n] for n, m in mesh.members.items()}
    sent = int(flood.stdout().split('"sent": ')[1].split(",")[0])
    print(f"\nflood of {sent} packets in {FLOOD_SECONDS} s from c's host: daemon CPU "
          + ", ".join(f"{n} {v:.1%}" for n, v in cpu.items()) + "; RSS growth "
          + ", ".join(f"{n} {v} KiB" for n, v in rss.items()) + f"; ping a->b: {ping.stdout.strip().splitlines()[-2]}")
    assert sent >= 0.8 * FLOOD_RATE * FLOOD_SECONDS  # the flood did flood
    assert " 0% packet loss" in ping.stdout, ping.stdout
    for n in "ab":
        assert cpu[n] < FLOOD_CPU, (n, cpu)
        assert rss[n] < RSS_GROWTH_KIB, (n, rss)
    for n in "ab":  # what c passed on reached a and b; their budget for c let little of it into TUN
        now = mesh.members[n].counters()
        got = {k: now.get(k, 0) - counted0[n].get(k, 0) for k in ("multicast-received", "multicast-received-over-budget")}
        print(f"{n}: {got}")
        assert got["multicast-received-over-budget"] >= 0.5 * sent, (n, got)
        assert got["multicast-received"] <= PEER_BURST + PEER_RATE * (took + 1), (n, got)
