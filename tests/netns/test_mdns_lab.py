"""wgdisco.io.mdns: publish/browse between lab hosts and against Avahi.

mDNS only runs inside the lab's namespaces: each node is wgdisco/lab/mdns_node.py
(one MdnsService, JSON lines on stdout) started in a lab host, and Avahi runs in
a host of its own with a private system bus (wgdisco/lab/avahi.py).  Timestamps
are CLOCK_MONOTONIC, which the namespaces share with this process, so
"publish -> the other side's callback" is measured across processes.

TXT encoding and the rest in memory: tests/unit/test_mdns.py.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from wgdisco.lab import LAB_DIR, Host, Lab, Proc
from wgdisco.lab.avahi import Avahi, parse_browse, require_avahi
from wgdisco.proto import keys

REPO = str(Path(__file__).resolve().parents[2])
NODE = str(LAB_DIR / "mdns_node.py")

DISCOVERY_MAX = 3.0  # s, publish -> callback on the other node (probing alone takes ~1.1 s)
GOODBYE_MAX = 2.0  # s, SIGTERM -> Removal on the other node
LATENCY_RUNS = 6


def new_key() -> tuple[str, str]:
    """(instance label, base64 public key) for a fresh key."""
    public = keys.public_key(keys.generate_private_key(os.urandom(32)))
    return keys.key_to_base32(public), keys.key_to_base64(public)


# --- lab helpers ---------------------------------------------------------------------


@dataclass
class Node:
    """One mdns_node.py process in a lab host."""

    host: Host
    ifname: str
    addrs: list[str]
    label: str = ""
    pub: str = ""
    port: int = 51820
    proc: Proc | None = None
    txt: list[str] = field(default_factory=list)

    def start(
        self, *, publish: bool = True, update_txt: list[str] | None = None, ip_version: str = "all", tag: str = ""
    ) -> Node:
        argv = [sys.executable, NODE, "--ip-version", ip_version]
        if self.ifname:  # "": every interface (MdnsService(None))
            argv += ["--iface", self.ifname]
        if publish:
            if not self.label:
                self.label, self.pub = new_key()
            if not self.txt:
                self.txt = ["txtvers=1", f"pub={self.pub}", "allowed=10.0.0.2/32,fd00::2/128"]
            argv += ["--instance", self.label, "--port", str(self.port)]
            argv += [a for addr in self.addrs for a in ("--addr", addr)]
            argv += [a for s in self.txt for a in ("--txt", s)]
            argv += [a for s in (update_txt or []) for a in ("--update-txt", s)]
        self.proc = self.host.popen(argv, name=f"mdns-{self.host.name}{tag}", env={"PYTHONPATH": REPO})
        self.proc.wait_for('"event": "started"', timeout=15)
        return self

    def events(self, kind: str | None = None) -> list[dict]:
        assert self.proc is not None
        lines = [json.loads(line) for line in self.proc.stdout().splitlines() if line.startswith("{")]
        return [e for e in lines if kind is None or e["event"] == kind]

    def wait(self, kind: str, match: Callable[[dict], bool] = lambda e: True, timeout: float = 10.0) -> dict:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.events(kind) if match(e)]
            if found:
                return found[0]
            if time.monotonic() > deadline or not self.proc.alive():
                raise AssertionError(
                    f"{self.host.name}: no {kind!r} event matching within {timeout}s\n"
                    f"--- stdout ---\n{self.proc.stdout()}\n--- stderr ---\n{self.proc.stderr()[-3000:]}"
                )
            time.sleep(0.01)

    def sighting_of(self, label: str, timeout: float = 10.0, txt: list[str] | None = None) -> dict:
        return self.wait("sighting", lambda e: e["instance"] == label and (txt is None or e["txt"] == txt), timeout)

    def stop(self) -> float:
        """SIGTERM (goodbyes, then exit 0); returns when the signal was sent."""
        assert self.proc is not None
        t = time.monotonic()
        assert self.proc.stop(grace=5.0) == 0, self.proc.stderr()
        assert self.events("closed"), self.proc.stdout()
        return t


def lan_with(lab: Lab, *names: str) -> list[tuple[Host, str, list[str]]]:
    """Hosts on one LAN: (host, ifname, [IPv4, IPv6]) with 10.1.0.N / fd00:1::N, N from 2."""
    lan = lab.lan("lan")
    out = []
    for n, name in enumerate(names, start=2):
        host = lab.host(name)
        ifname = lab.attach(host, lan, f"10.1.0.{n}/24", f"fd00:1::{n}/64")
        out.append((host, ifname, [f"10.1.0.{n}", f"fd00:1::{n}"]))
    return out


def report(title: str, values: list[float]) -> str:
    text = (
        f"{title}: n={len(values)} min={min(values):.3f}s median={statistics.median(values):.3f}s "
        f"max={max(values):.3f}s [" + ", ".join(f"{v:.3f}" for v in values) + "]"
    )
    print(text)
    return text


# --- wgdisco <-> wgdisco ---------------------------------------------------------------


@pytest.mark.netns
def test_two_nodes_discover_update_and_say_goodbye(lab: Lab, record_property: Callable) -> None:
    (ha, ia, aa), (hb, ib, ab) = lan_with(lab, "alice", "bob")
    alice = Node(ha, ia, aa, port=51820).start()
    alice.wait("published", timeout=10)
    bob = Node(hb, ib, ab[:1], port=51821)  # bob publishes IPv4 only
    bob.label, bob.pub = new_key()
    new_txt = ["txtvers=1", f"pub={bob.pub}", "allowed=10.0.0.3/32", "x-wgdisco=2"]
    bob.start(update_txt=new_txt)

    # each sees the other, fully resolved, TXT strings in wire order
    seen_by_bob = bob.sighting_of(alice.label)
    assert seen_by_bob["port"] == 51820
    assert seen_by_bob["addresses"] == ["10.1.0.2", "fd00:1::2"]
    assert seen_by_bob["txt"] == alice.txt
    assert seen_by_bob["server"] == f"wg-{alice.label[:16]}.local."
    seen_by_alice = alice.sighting_of(bob.label)
    assert seen_by_alice["port"] == 51821
    assert seen_by_alice["addresses"] == ["10.1.0.3"]
    assert seen_by_alice["txt"] == bob.txt
    latency = seen_by_alice["t"] - bob.wait("publishing")["t"]
    record_property("discovery_latency_s", round(latency, 3))
    assert latency < DISCOVERY_MAX
    # nobody reports itself (its own announcements come back through multicast loopback)
    bob.wait("published")
    assert not [e for e in alice.events("sighting") if e["instance"] == alice.label]
    assert not [e for e in bob.events("sighting") if e["instance"] == bob.label]

    # a TXT update propagates (cache-flush records replace the old TXT)
    assert bob.proc is not None
    t_update = time.monotonic()
    os.kill(bob.proc.pid, 10)  # SIGUSR1: re-publish with --update-txt
    updated = alice.sighting_of(bob.label, txt=new_txt, timeout=5)
    assert updated["port"] == 51821 and updated["addresses"] == ["10.1.0.3"]
    record_property("update_latency_s", round(updated["t"] - t_update, 3))
    assert updated["t"] - t_update < 2.0

    # clean shutdown sends goodbyes: alice drops bob at once, not after the 75 min TTL
    t_stop = bob.stop()
    removed = alice.wait("removed", lambda e: e["instance"] == bob.label, timeout=GOODBYE_MAX + 1)
    record_property("goodbye_latency_s", round(removed["t"] - t_stop, 3))
    assert removed["t"] - t_stop < GOODBYE_MAX
    alice.stop()


@pytest.mark.netns
def test_discovery_latency_over_several_runs(lab: Lab, record_property: Callable) -> None:
    """A fresh node joins LATENCY_RUNS times; publish -> the other's callback, and join -> seeing the other."""
    (ha, ia, aa), (hb, ib, ab) = lan_with(lab, "alice", "bob")
    alice = Node(ha, ia, aa).start()
    alice.wait("published")
    announce, query, goodbye = [], [], []
    for run in range(LATENCY_RUNS):
        bob = Node(hb, ib, ab).start(tag=f"-{run}")
        publishing = bob.wait("publishing")["t"]
        announce.append(alice.sighting_of(bob.label)["t"] - publishing)
        query.append(bob.sighting_of(alice.label)["t"] - bob.wait("started")["t"])
        bob.wait("published")
        t_stop = bob.stop()
        goodbye.append(alice.wait("removed", lambda e, b=bob: e["instance"] == b.label, timeout=3)["t"] - t_stop)
    record_property("publish_to_callback", report("publish -> other's callback", announce))
    record_property("browse_to_callback", report("browse start -> callback (already published)", query))
    record_property("goodbye_to_removal", report("SIGTERM -> other's Removal", goodbye))
    assert max(announce) < DISCOVERY_MAX
    assert max(query) < DISCOVERY_MAX
    assert max(goodbye) < GOODBYE_MAX


@pytest.mark.netns
def test_ipv6_only(lab: Lab) -> None:
    """mDNS over IPv6 alone (ff02::fb, link-local source), AAAA-only records."""
    (ha, ia, aa), (hb, ib, ab) = lan_with(lab, "alice", "bob")
    alice = Node(ha, ia, aa[1:]).start(ip_version="v6")
    bob = Node(hb, ib, ab[1:]).start(ip_version="v6")
    assert bob.sighting_of(alice.label)["addresses"] == ["fd00:1::2"]
    assert alice.sighting_of(bob.label)["addresses"] == ["fd00:1::3"]
    t_stop = bob.stop()
    removed = alice.wait("removed", lambda e: e["instance"] == bob.label, timeout=GOODBYE_MAX + 1)
    assert removed["t"] - t_stop < GOODBYE_MAX


@pytest.mark.netns
def test_all_interfaces(lab: Lab) -> None:
    """MdnsService(None): zeroconf picks every interface of the namespace (lo included)."""
    (ha, _, aa), (hb, ib, ab) = lan_with(lab, "alice", "bob")
    alice = Node(ha, "", aa).start()
    bob = Node(hb, ib, ab).start()
    assert bob.sighting_of(alice.label)["addresses"] == aa
    assert alice.sighting_of(bob.label)["addresses"] == ab


# --- Avahi interop ---------------------------------------------------------------------


@pytest.mark.netns
def test_avahi_browses_wgdisco_records(lab: Lab) -> None:
    require_avahi()
    (ha, ia, aa), (hc, ic, _) = lan_with(lab, "alice", "avahi")
    alice = Node(ha, ia, aa).start()
    alice.wait("published")
    avahi = Avahi(hc, ic).start()

    deadline = time.monotonic() + 10
    while True:
        out = avahi.run(["avahi-browse", "-rpt", "_wireguard._udp"], timeout=15).stdout
        entries = [e for e in parse_browse(out) if e["name"] == alice.label]
        if entries or time.monotonic() > deadline:
            break
    assert entries, f"avahi-browse did not resolve {alice.label}:\n{out}\n{avahi.log()}"
    for entry in entries:
        assert entry["type"] == "_wireguard._udp" and entry["domain"] == "local"
        assert entry["host"] == f"wg-{alice.label[:16]}.local"
        assert entry["port"] == 51820
        assert entry["address"] in aa
        # avahi-browse prints a TXT record's strings last-to-first (avahi's string
        # lists are built by prepending); the wire order is ours, txtvers=1 first
        assert entry["txt"] == list(reversed(alice.txt))
        assert f"pub={alice.pub}" in entry["txt"]
    # avahi resolves both address records of the SRV target
    target = f"wg-{alice.label[:16]}.local"
    for flag, addr in (("-4", aa[0]), ("-6", aa[1])):
        resolved = avahi.run(["avahi-resolve", flag, "-n", target], timeout=15).stdout.split()
        assert resolved == [target, addr], (flag, resolved)


@pytest.mark.netns
@pytest.mark.parametrize("global6", [True, False], ids=["global-v6", "link-local-only"])
def test_wgdisco_browses_avahi_records(lab: Lab, global6: bool) -> None:
    require_avahi()
    lan = lab.lan("lan")
    ha, hc = lab.host("alice"), lab.host("avahi")
    ia = lab.attach(ha, lan, "10.1.0.2/24", "fd00:1::2/64")
    ic = lab.attach(hc, lan, "10.1.0.4/24", "fd00:1::4/64" if global6 else None)
    avahi = Avahi(hc, ic).start()
    alice = Node(ha, ia, ["10.1.0.2"]).start(publish=False)

    label, pub = new_key()
    txt = ["txtvers=1", f"pub={pub}", "allowed=10.0.0.2/32"]
    t_publish = time.monotonic()
    publisher = avahi.popen(["avahi-publish", "-s", label, "_wireguard._udp", "51820", *txt], name="avahi-publish")
    publisher.wait_for("Established under name", timeout=10, stream="stderr")
    # Avahi announces on IPv4 and IPv6; without a global IPv6 address its AAAA is
    # link-local, usable only scoped, i.e. from the copy received on IPv6
    want = 2
    seen = alice.wait("sighting", lambda e: e["instance"] == label and len(e["addresses"]) == want, DISCOVERY_MAX + 2)
    print(f"avahi-publish start -> wgdisco callback: {seen['t'] - t_publish:.3f}s")
    assert seen["t"] - t_publish < DISCOVERY_MAX + 1  # avahi-publish must also start and talk to dbus
    assert seen["port"] == 51820
    assert seen["txt"] == txt  # avahi-publish puts its arguments on the wire in order
    assert seen["server"] == f"{avahi.host_name}.local."
    if global6:
        assert seen["addresses"] == ["10.1.0.4", "fd00:1::4"]
    else:
        v4, ll = seen["addresses"]
        assert v4 == "10.1.0.4"
        assert ll.startswith("fe80:") and ll.endswith(f"%{if_index(ha, ia)}"), seen
    for event in alice.events("sighting"):  # never an unscoped link-local address
        assert all("%" in a or not a.startswith("fe80:") for a in event["addresses"]), event

    # avahi-publish exits on SIGTERM with goodbyes
    t_stop = time.monotonic()
    publisher.stop()
    removed = alice.wait("removed", lambda e: e["instance"] == label, timeout=GOODBYE_MAX + 1)
    assert removed["t"] - t_stop < GOODBYE_MAX


def if_index(host: Host, ifname: str) -> int:
    [link] = json.loads(host.ip("-j", "link", "show", "dev", ifname).stdout)
    return int(link["ifindex"])
