"""Tests of the network-namespace lab (wgdisco/lab) itself: real topologies (netns).

The skip policy, which runs anywhere: tests/unit/test_skips.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from wgdisco.lab import (
    PREFIX_RE,
    Host,
    Lab,
    LabError,
    LabUnsupported,
    NatKind,
    NatRouter,
    list_netns,
    require_netns,
    udp_echo_server,
    udp_probe,
)
from wgdisco.lab import cleanup as lab_cleanup
from wgdisco.lab.netns import owner_file

ROOT = Path(__file__).resolve().parents[2]
SERVER = "198.51.100.10"


def wan_with_nats(lab: Lab, *kinds: NatKind) -> tuple[Host, list[tuple[Host, NatRouter]]]:
    """A WAN switch with a server, and per kind a LAN with one host behind a NAT router.

    Returns (server, [(host, router), ...]); LAN i is 10.i.0.0/24, router i
    has WAN address 198.51.100.i.
    """
    wan = lab.lan("wan")
    server = lab.host("srv")
    lab.attach(server, wan, addr=f"{SERVER}/24")
    pairs = []
    for i, kind in enumerate(kinds, 1):
        lan = lab.lan(f"lan{i}")
        router = lab.nat_router(f"nat{i}", lan=lan, wan=wan, kind=kind,
                                lan_addr=f"10.{i}.0.1/24", wan_addr=f"198.51.100.{i}/24")
        host = lab.host(f"h{i}")
        lab.attach(host, lan, addr=f"10.{i}.0.2/24")
        host.add_route("default", via=router.lan_ip)
        pairs.append((host, router))
    return server, pairs


@pytest.fixture
def bystander() -> Iterator[str]:
    """A namespace that is not the lab's (nor lab-like); the lab must leave it alone."""
    require_netns()
    name = f"wgdtest-bystander-{os.urandom(3).hex()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def assert_netns_restored(before: list[str], lab: Lab, bystander: str) -> None:
    """``ip netns list`` is as before the lab: none of its namespaces left, the bystander kept.

    (Comparing the whole list for equality would be flaky: other test sessions
    on the same machine create and delete namespaces at any time.)
    """
    after = list_netns()
    assert not [n for n in after if n.startswith(lab.prefix)]
    assert bystander in before and bystander in after


# ---------------------------------------------------------------- topologies


@pytest.mark.netns
def test_hosts_behind_easy_nats_reach_wan_with_router_address(lab: Lab) -> None:
    server, pairs = wan_with_nats(lab, "easy", "easy")
    udp_echo_server(server, 7001)
    for host, router in pairs:
        host.ping(SERVER)
        [(ip, _port)] = udp_probe(host, [(SERVER, 7001)])
        assert ip == router.wan_ip, f"{host.name} seen as {ip}, expected NAT address {router.wan_ip}"
        assert not ip.startswith("10.")
    # The WAN side has no route into the private networks.
    assert server.ping("10.1.0.2", check=False).returncode != 0


@pytest.mark.netns
def test_hard_nat_maps_per_destination_easy_nat_does_not(lab: Lab) -> None:
    server, [(easy_host, easy_nat), (hard_host, hard_nat)] = wan_with_nats(lab, "easy", "hard")
    udp_echo_server(server, 7001, 7002)
    targets = [(SERVER, 7001), (SERVER, 7002)]

    easy = udp_probe(easy_host, targets, local_port=40000)
    assert easy == [(easy_nat.wan_ip, 40000)] * 2  # endpoint-independent, port preserved

    hard = udp_probe(hard_host, targets, local_port=40000)
    assert [ip for ip, _ in hard] == [hard_nat.wan_ip] * 2
    assert hard[0][1] != hard[1][1], f"hard NAT reused its mapping: {hard}"


@pytest.mark.netns
def test_nat_router_drops_unsolicited_input(lab: Lab) -> None:
    server, [(host, router)] = wan_with_nats(lab, "easy")
    udp_echo_server(router, 7001)  # listening on the router, but input policy is drop
    # The LAN side may talk to the router, the WAN side may only ping it.
    assert udp_probe(host, [(router.lan_ip, 7001)], local_port=5000) == [("10.1.0.2", 5000)]
    server.ping(router.wan_ip)
    with pytest.raises(LabError, match="no answer"):
        udp_probe(server, [(router.wan_ip, 7001)], timeout=0.6)
    assert router.kind == "easy" and (router.lan_if, router.wan_if) == ("lan0", "wan0")


@pytest.mark.netns
def test_ipv6_on_a_lan_and_through_a_router(lab: Lab) -> None:
    lan1, lan2 = lab.lan("lan1"), lab.lan("lan2")
    a, b, c = lab.host("a"), lab.host("b"), lab.host("c")
    lab.attach(a, lan1, addr6="fd00:1::2/64")
    lab.attach(b, lan1, addr6="fd00:1::3/64")
    a.ping("fd00:1::3")
    b.ping("fd00:1::2")

    router = lab.router("r")
    lab.attach(router, lan1, addr6="fd00:1::1/64")
    lab.attach(router, lan2, addr6="fd00:2::1/64")
    lab.attach(c, lan2, addr6="fd00:2::2/64")
    a.add_route("default", via="fd00:1::1")
    c.add_route("default", via="fd00:2::1")
    a.ping("fd00:2::2")
    assert "fd00:1::2/64" in a.addresses()


@pytest.mark.netns
def test_point_to_point_link(lab: Lab) -> None:
    a, b = lab.host("a"), lab.host("b")
    ia, ib = lab.link(a, b, "192.0.2.1/30", "192.0.2.2/30", "2001:db8:1::1/64", "2001:db8:1::2/64")
    assert (ia, ib) == ("v1a", "v1b")
    a.ping("192.0.2.2")
    a.ping("2001:db8:1::2")
    assert a.operstate(ia) == b.operstate(ib) == "UP"


@pytest.mark.netns
def test_netem_delay_or_clear_refusal(lab: Lab) -> None:
    # netem is optional: some kernels lack sch_netem. Then the lab must say so
    # clearly (LabUnsupported) and leave the link working, never half-configure it.
    a, b = lab.host("a"), lab.host("b")
    ia, _ = lab.link(a, b, "192.0.2.1/30", "192.0.2.2/30")
    try:
        lab.netem(a, ia, delay_ms=50)
    except LabUnsupported as e:
        assert "netem" in str(e)
        a.ping("192.0.2.2")
        return
    out = a.ping("192.0.2.2").stdout
    rtt = float(out.split("time=")[1].split()[0])
    assert rtt >= 45, out


# ------------------------------------------------------------------- cleanup


@pytest.mark.netns
def test_close_removes_everything(bystander: str) -> None:
    before = list_netns()
    with Lab() as lab:
        server, pairs = wan_with_nats(lab, "easy")
        pairs[0][0].ping(SERVER)
        created = lab.namespaces()
        assert set(created) <= set(list_netns())
        logdir = lab.logdir
        udp_echo_server(server, 7001)
        assert owner_file(lab.prefix).exists()
    assert_netns_restored(before, lab, bystander)
    assert not logdir.exists() and not owner_file(lab.prefix).exists()
    lab.close()  # idempotent


@pytest.mark.netns
def test_close_after_exception_in_with_body(bystander: str) -> None:
    before = list_netns()
    with pytest.raises(RuntimeError, match="boom"), Lab() as lab:
        lab.link(lab.host("a"), lab.host("b"))
        raise RuntimeError("boom")
    assert_netns_restored(before, lab, bystander)


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")  # a zombie waiting for init to reap it is dead enough


@pytest.mark.netns
def test_close_kills_background_and_daemonized_processes() -> None:
    lab = Lab()
    host = lab.host("a")
    sleeper = host.popen("sleep 1000")
    # A "daemon": forks away from us, so only the namespace sweep can find it.
    orphan = int(host.run(["sh", "-c", "sleep 1000 >/dev/null 2>&1 & echo $!"]).stdout)
    assert sleeper.alive() and not _gone(orphan)
    lab.close()
    assert not sleeper.alive()
    deadline = time.monotonic() + 3
    while not _gone(orphan) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _gone(orphan)
    with pytest.raises(LabError, match="closed"):
        lab.host("b")


@pytest.mark.netns
def test_proc_output_helpers(lab: Lab) -> None:
    host = lab.host("a")
    proc = host.popen(["sh", "-c", "echo hello; echo oops >&2; sleep 1000"], name="talker")
    assert proc.wait_for(r"^hello$").group(0) == "hello"
    proc.wait_for("oops", stream="stderr")
    assert host.run(["sh", "-c", "echo $GREETING"], env={"GREETING": "hi"}).stdout == "hi\n"
    done = host.popen("echo bye")
    assert done.wait() == 0 and done.stdout() == "bye\n"
    with pytest.raises(LabError, match="not seen"):
        done.wait_for("never", timeout=0.2)


CHILD = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
sys.path.insert(0, {root!r})
from wgdisco.lab import Lab
lab = Lab()
lab.host("a").popen("sleep 1000")
print(lab.prefix, flush=True)
time.sleep(60)
"""


@pytest.mark.netns
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_cleans_up(sig: signal.Signals) -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(root=str(ROOT))],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    prefix = ""
    try:
        prefix = child.stdout.readline().strip()  # type: ignore[union-attr]
        assert PREFIX_RE.match(prefix), child.stderr.read()  # type: ignore[union-attr]
        assert any(n.startswith(prefix) for n in list_netns())
        child.send_signal(sig)
        child.wait(10)
        assert not [n for n in list_netns() if n.startswith(prefix)]
    finally:
        child.kill()
        child.wait()
        if prefix:  # the child failed to clean up: do not leak its namespaces
            lab_cleanup.cleanup(prefixes=[prefix])


@pytest.mark.netns
def test_cleanup_removes_only_stale_namespaces(lab: Lab) -> None:
    lab.host("live")
    stale = "wgd" + os.urandom(3).hex() + "-"
    subprocess.run(["ip", "netns", "add", stale + "x"], check=True)  # no owner file: abandoned
    try:
        assert lab_cleanup.cleanup(prefixes=[stale, lab.prefix], dry_run=True) == [stale + "x"]
        assert lab_cleanup.cleanup(prefixes=[stale, lab.prefix]) == [stale + "x"]
        names = list_netns()
        assert stale + "x" not in names and lab.prefix + "live" in names
    finally:
        subprocess.run(["ip", "netns", "del", stale + "x"], capture_output=True)
    cli = subprocess.run([sys.executable, "-m", "wgdisco.lab.cleanup", "--dry-run"], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    assert lab.prefix not in cli.stdout  # a live lab is never stale
