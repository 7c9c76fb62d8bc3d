"""Path MTU discovery in the lab (issue 25): A — router — B, the router's link to B narrower than
1500 and the router's ICMP "too big" filtered, tunnels at their default MTU (1420).

One set of namespaces for the module (wgdisco/lab/narrow.py; the suite-time budget); each test
starts its own pair of wgdisco nodes on it, with the documented defaults ([Discovery] mDNS on:
probes are spoken).

- a full 1500 path keeps 1420-byte inner packets (no needless reduction), and when the path MTU
  drops while a transfer runs (the link's MTU lowered), the black hole is found and the transfer
  goes on (stall <= 3 s);
- IPv6 underlay, a 1400-byte link from the start: 40 MB each way within 20 s, status <= 1400 - 80;
- IPv4 underlay whose fragments are dropped before B: the same, <= 1400 - 60.

wireguard-go, the reference that stalls on the same IPv6 lab: bench/pmtu_blackhole.py (docs/
troubleshooting.md "Path MTU"), kept out of the suite for its time.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from tests.observe import status, wait_until
from wgdisco.lab import Lab, narrow, require_tool
from wgdisco.lab.narrow import NarrowPath
from wgdisco.lab.skips import require_netns
from wgdisco.lab.wg import Node

pytestmark = pytest.mark.netns

XFER = 40 * 2**20
OVERHEAD6, OVERHEAD4 = 40 + 8 + 32, 20 + 8 + 32  # outer IP + UDP + WireGuard


@pytest.fixture(scope="module")
def net() -> Iterator[NarrowPath]:
    require_netns()
    require_tool("wg")
    lab = Lab()
    try:
        yield NarrowPath(lab)
    finally:
        lab.close()


def path_mtu(node: Node) -> dict:
    return status(node)["peers"][0]["path_mtu"]


def transfer(client: Node, server: Node, nbytes: int = XFER, during=None) -> dict:
    result = narrow.transfer(client, server, nbytes, during=during)
    assert result["up_ok"] and result["down_ok"], result
    print(result)  # the figures, with -s
    return result


def rx_bytes(node: Node) -> int:
    return next(iter(node.dump().values()))["rx"]


def test_full_path_keeps_1420_and_a_path_mtu_drop_mid_transfer_is_survived(net: NarrowPath) -> None:
    net.set_mtu(1500)
    a, b = net.pair(outer6=True)
    try:
        found = wait_until(lambda: (m := path_mtu(a))["state"] == "complete" and m, 10,
                           lambda: f"the search to complete: {path_mtu(a)}")
        assert (found["inner"], found["path"], found["how"]) == (1420, 1500, "probe"), found
        # a 1420-byte inner packet with DF goes through: nothing was reduced needlessly
        a.host.run(["ping", "-c", "1", "-W", "3", "-M", "do", "-s", str(1420 - 28), b.inner4])

        def lower(done: threading.Event) -> None:  # once B has 8 MB of the upload, the path narrows
            wait_until(lambda: done.is_set() or rx_bytes(b) > 8 * 2**20, 30, "the transfer to start", 0.05)
            net.set_mtu(1400)

        result = transfer(a, b, during=lower)
        assert rx_bytes(b) > XFER  # the drop came while data flowed
        assert result["max_gap_s"] <= 3.0, result
        after = path_mtu(a)
        assert after["black_holes"] >= 1 and after["inner"] <= 1400 - OVERHEAD6, after
        assert re.search(r"path MTU: black hole", a.proc.stderr()), a.proc.stderr()  # type: ignore[union-attr]
    finally:
        a.stop()
        b.stop()


@pytest.mark.parametrize("outer6", [True, False], ids=["ipv6-underlay", "ipv4-underlay-drops-fragments"])
def test_black_hole_path_carries_40mb_within_20s(net: NarrowPath, outer6: bool) -> None:
    net.set_mtu(1400, drop_fragments=not outer6)
    a, b = net.pair(outer6=outer6)
    try:
        t0 = time.monotonic()
        result = transfer(a, b)
        assert time.monotonic() - t0 <= 20.0, result
        overhead = OVERHEAD6 if outer6 else OVERHEAD4
        for node in (a, b):
            m = path_mtu(node)
            assert m["state"] == "complete" and m["inner"] <= 1400 - overhead and m["path"] <= 1400, m
        # status in words too
        words = a.host.run([sys.executable, "-m", "wgdisco", "status", a.iface]).stdout
        assert "path MTU: inner packets up to" in words, words
    finally:
        a.stop()
        b.stop()
