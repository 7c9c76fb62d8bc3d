"""The mesh's lifecycle without a server (issue 27, docs/mesh.md "A lost or stolen device",
"Rotating the mesh key"): real daemons, real mDNS (one LAN) and real Knot (two NATs).

The drill: 6 members on one LAN from byte-identical files; one ("stolen") keeps the old key and
keeps running. On the 5 others in turn, ``wgdisco mesh ban stolen`` (it must be gone from each
within 2 s, its pings fail); then the mesh key is rotated (``wgdisco genmesh --rotate`` with a
short window, the new file copied to each member, SIGHUP in turn). Throughout, every pair among
the 5 keeps its addresses and names, and a 10/s ping between two of them loses nothing beyond one
second. After the window the stolen machine, with a fresh identity made under the old key, is
admitted by nobody. Everything uses the defaults but the window's length.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.netns.test_mesh_lab import CONFIG, hosts_file, ping_ok, resolved
from tests.schema_check import check
from wgdisco.lab import Lab
from wgdisco.lab.netns import Host, Proc
from wgdisco.lab.wg import PACKAGE_ROOT

pytestmark = pytest.mark.netns

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "status.schema.json").read_text())
WINDOW = float(os.environ.get("WGDISCO_MESH_WINDOW", "6"))  # seconds the old key is still accepted
ENV = {"PYTHONPATH": str(PACKAGE_ROOT)}


class Member:
    """One daemon: its host, interface, config file, process, key and derived addresses."""

    def __init__(self, lab: Lab, host: Host, iface: str, hostname: str, text: str) -> None:
        self.lab, self.host, self.iface, self.hostname = lab, host, iface, hostname
        self.conf = lab.logdir / f"{iface}.conf"
        self.conf.write_text(text)
        self.conf.chmod(0o600)
        self.state = lab.logdir / f"state-{iface}"
        self.proc: Proc | None = None
        self.key = ""
        self.addrs: list[str] = []

    def launch(self) -> None:
        argv = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', self.hostname,
                sys.executable, "-m", "wgdisco.lab.run_tunnel", str(self.conf)]
        self.proc = self.host.popen(argv, name=f"wgdisco-{self.iface}", env={
            **ENV, "WGDISCO_STATE_DIR": str(self.state), "WGDISCO_HOSTS_FILE": str(hosts_file(self.lab, self.iface))})

    def ready(self) -> None:
        assert self.proc is not None
        m = self.proc.wait_for(r"mesh \w+: our addresses (\S+), (\S+);", timeout=30, stream="stderr")
        self.key = self.proc.wait_for(r"interface \S+ up: public key (\S+),", timeout=30, stream="stderr").group(1)
        self.addrs = [m.group(1).split("/")[0], m.group(2).split("/")[0]]

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.host.run([sys.executable, "-m", "wgdisco", *args], env=ENV, check=check)

    def peers(self) -> dict[str, tuple[str, int]]:
        """``wg show dump``: public key -> (allowed ips, latest handshake)."""
        lines = self.host.run(["wg", "show", self.iface, "dump"]).stdout.splitlines()[1:]
        return {f[0]: (f[3], int(f[4])) for f in (x.split("\t") for x in lines)}

    def members(self) -> dict:
        """What ``wgdisco mesh members --json`` prints, from the control socket (no CLI start-up)."""
        from wgdisco.io import control

        return control.request(self.iface, "members")

    def log(self) -> str:
        assert self.proc is not None
        return self.proc.stderr()


def wait(cond, timeout: float, what) -> float:  # type: ignore[no-untyped-def]
    """Poll ``cond`` every 0.1 s until true; the seconds it took (fails with ``what()`` after ``timeout``)."""
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, what()
        time.sleep(0.1)
    return time.monotonic() - t0


class Pinger:
    """``ping -i 0.1`` (10/s) from ``host`` to ``target``; ``longest_gap()``: the longest run of
    unanswered pings, in seconds, among those sent."""

    def __init__(self, host: Host, target: str) -> None:
        self.proc = host.popen(["ping", "-n", "-i", "0.1", "-W", "1", target], name="pinger")

    def stop(self) -> tuple[int, float]:
        """(pings sent, longest gap in seconds)."""
        self.proc.stop(grace=2.0)
        seqs = sorted({int(m.group(1)) for m in re.finditer(r"icmp_seq=(\d+) ttl=", self.proc.stdout())})
        assert seqs, self.proc.stdout()[-500:]
        gaps = [b - a - 1 for a, b in zip([0] + seqs, seqs)]
        return seqs[-1], max(gaps) * 0.1


def test_drill_ban_then_rotate_six_members_one_stolen(lab: Lab) -> None:
    lan = lab.lan("lan")
    tag = lab.prefix[3:9]
    good = []
    for i in range(5):
        h = lab.host(f"n{i}")
        lab.attach(h, lan, f"10.1.0.{i + 1}/24", f"fd00:1::{i + 1}/64")
        good.append(Member(lab, h, f"m{i}{tag}", f"n{i}", CONFIG))
    hs = lab.host("s")
    lab.attach(hs, lan, "10.1.0.66/24", "fd00:1::66/64")
    stolen = Member(lab, hs, f"s{tag}", "stolen", CONFIG)
    everyone = good + [stolen]
    t0 = time.monotonic()
    for m in everyone:  # all at once
        m.launch()
    for m in everyone:
        m.ready()
    # a full mesh: every member has a session with every other one
    wait(lambda: all(sum(1 for _a, hs_ in m.peers().values() if hs_) == 5 for m in everyone), 30,
         lambda: {m.iface: m.peers() for m in everyone})
    print(f"\n6 members: full mesh {time.monotonic() - t0:.2f} s after launching them all")
    addrs = {m.key: m.addrs for m in good}

    def plan_kept(names: bool = False) -> None:  # every pair among the 5 keeps its addresses (and names)
        for m in good:
            peers = m.peers()
            for o in good:
                if o is not m:
                    assert sorted(peers[o.key][0].split(",")) == sorted([f"{o.addrs[0]}/32", f"{o.addrs[1]}/128"])
            assert m.addrs == addrs[m.key]
        for m in (good[0], good[4]) if names else ():
            for o in good:  # the hosts block follows an admission within 0.2 s (daemon/names.py)
                wait(lambda: resolved(lab, m.host, m.iface, o.hostname) == set(o.addrs), 15.0,
                     lambda: (m.iface, o.hostname))

    plan_kept(names=True)
    pinger = Pinger(good[0].host, good[1].addrs[0])

    # --- ban, on each of the 5 in turn -----------------------------------------------------
    for m in good:
        before = time.monotonic()
        out = m.cli("mesh", "ban", "stolen", m.iface).stdout
        assert f"banned {stolen.key} (stolen)" in out, out
        gone = wait(lambda: stolen.key not in m.peers(), 2.0, lambda: m.peers())
        took = time.monotonic() - before
        assert took < 2.0, took
        print(f"{m.iface}: the stolen key gone {took:.2f} s after `wgdisco mesh ban stolen` ({gone:.2f} s after it returned)")
        wait(lambda: resolved(lab, m.host, m.iface, "stolen") == set(), 2.0,  # the hosts file follows
             lambda: hosts_file(lab, m.iface).read_text())
    pings = [stolen.host.popen(["ping", "-c1", "-W1", m.addrs[0]], name=f"ping-{m.iface}") for m in good]
    assert all(p.wait(timeout=5) != 0 for p in pings)  # the stolen machine reaches none of them
    for m in good:
        assert stolen.key not in m.peers()
        r = m.members()
        assert r["banned"] == [stolen.key] and stolen.key not in [x["public_key"] for x in r["members"]]
        assert re.search(r"peer \S+: removed from the mesh \(banned: MeshDeny", m.log())
    plan_kept()

    # --- rotation with a short window: the new file to every member, SIGHUP in turn ----------
    good[0].cli("genmesh", "--rotate", str(good[0].conf), "--window", f"{WINDOW:g}s", "--write")
    rotated = good[0].conf.read_text()
    rotated_at = time.monotonic()
    assert "PreviousMeshKey = correct horse battery staple" in rotated and "MeshId = m1." in rotated
    for m in good:
        m.conf.write_text(rotated)
        assert m.proc is not None
        os.kill(m.proc.pid, signal.SIGHUP)
        m.proc.wait_for(r"mesh: new mesh key, published id", timeout=5, stream="stderr")
    reloaded = time.monotonic() - rotated_at
    # during the window: every member sees the 4 others on the new key, keeps them and their addresses
    wait(lambda: all(sorted(x["generation"] for x in m.members()["members"]) == ["current"] * 5 for m in good),
         WINDOW, lambda: {m.iface: m.members() for m in good})
    plan_kept()
    r = good[2].members()
    assert r["previous_id"] and r["previous_until"] and r["banned"] == [stolen.key]
    status = json.loads(good[2].cli("status", good[2].iface, "--json").stdout)
    check(status, SCHEMA)
    assert status["mesh"]["banned"] == 1 and status["mesh"]["previous_id"] == r["previous_id"]
    # the window ends: nobody removed (all are on the new key)
    wait(lambda: time.monotonic() - rotated_at > WINDOW + 1, WINDOW + 5, lambda: "window")
    for m in good:
        r = m.members()
        assert r["previous_until"] is not None  # configured, over
        assert len(r["members"]) == 5 and all(x["generation"] == "current" for x in r["members"]), r
        assert "removed from the mesh (old-key)" not in m.log()
    plan_kept()

    # --- after the window: the stolen machine makes a new identity under the old key ---------
    assert stolen.proc is not None
    stolen.proc.stop(grace=3.0)
    (stolen.state / f"{stolen.iface}.key").unlink()
    old_key = stolen.key
    stolen.launch()
    stolen.ready()
    assert stolen.key != old_key
    counts = lambda m: m.members()["counters"].get("mesh-records-old-key", 0)  # noqa: E731
    wait(lambda: all(counts(m) > 0 for m in good), 10, lambda: {m.iface: m.members()["counters"] for m in good})
    for m in good:
        assert stolen.key not in m.peers()
    assert not ping_ok(stolen.host, good[0].addrs[0])
    sent, gap = pinger.stop()
    print(f"ping n0 -> n1 at 10/s through it all: {sent} sent, longest gap {gap:.1f} s; the 5 reloads took "
          f"{reloaded:.2f} s")
    assert gap <= 1.0, gap
    plan_kept(names=True)
    text = good[3].cli("mesh", "members", good[3].iface).stdout  # the human view
    assert len(re.findall(r"\bcurrent\b", text)) == 5 and f"banned keys: {old_key}" in text, text
    new_key = re.search(r"^MeshKey = (\S+)$", rotated, re.M).group(1)  # type: ignore[union-attr]
    mesh_id = re.search(r"^MeshId = (\S+)$", rotated, re.M).group(1)  # type: ignore[union-attr]
    shown = text + json.dumps([m.members() for m in good]) + good[2].cli("status", good[2].iface).stdout
    for m in everyone:  # nothing secret in logs, status or the members list
        logged = m.log()
        assert "Traceback" not in logged
        for secret in ("horse", new_key, mesh_id[3:]):
            assert secret not in logged and secret not in shown


def test_rotation_over_unicast_dns_sd_two_sites_behind_nats(lab: Lab) -> None:
    """The same rotation over unicast DNS-SD (Knot, RFC 2136 + TSIG) through two easy nftables
    NATs (test_nat_lab's topology): both sites keep their session, addresses and names; a 10/s
    ping loses nothing beyond one second; after the window both are on the new key."""
    from tests.netns.test_nat_lab import DOMAIN, KNOT, STUN_A, STUN_B, internet
    from wgdisco.lab.knot import start_knot

    net = internet(lab)
    knot = start_knot(net.server, [KNOT])
    ha, hb = net.site("a", 1, "easy"), net.site("b", 2, "easy")
    tag = lab.prefix[3:9]
    text = CONFIG + (f"Domain = {DOMAIN}\nNameserver = {KNOT}\nUpdateKey = {knot.update_key}\n"
                     f"STUN = {STUN_A}:3478, {STUN_B}:3478\n")
    a, b = Member(lab, ha, f"a{tag}", "site-a", text), Member(lab, hb, f"b{tag}", "site-b", text)
    for m in (a, b):
        m.launch()
    for m in (a, b):
        m.ready()
    wait(lambda: ping_ok(ha, b.addrs[0]) and ping_ok(hb, a.addrs[0]), 30, lambda: a.log() + b.log())
    before = {m.iface: (m.peers(), m.addrs) for m in (a, b)}
    pinger = Pinger(ha, b.addrs[0])
    a.cli("genmesh", "--rotate", str(a.conf), "--window", f"{WINDOW:g}s", "--write")
    rotated_at = time.monotonic()
    b.conf.write_text(a.conf.read_text())
    for m in (a, b):
        assert m.proc is not None
        os.kill(m.proc.pid, signal.SIGHUP)
        m.proc.wait_for(r"mesh: new mesh key, published id", timeout=5, stream="stderr")
    took = wait(lambda: all([x["generation"] for x in m.members()["members"]] == ["current"] * 2 for m in (a, b)),
                WINDOW, lambda: (a.members(), b.members()))
    print(f"\nover Knot: both sites on the new key {took:.2f} s after the second reload")
    wait(lambda: time.monotonic() - rotated_at > WINDOW + 1, WINDOW + 5, lambda: "window")
    sent, gap = pinger.stop()
    print(f"ping a -> b at 10/s: {sent} sent, longest gap {gap:.1f} s")
    assert gap <= 1.0, gap
    for m, o in ((a, b), (b, a)):
        peers, addrs = before[m.iface]
        assert m.addrs == addrs and m.peers()[o.key][0] == peers[o.key][0]
        r = m.members()
        assert [x["generation"] for x in r["members"]] == ["current"] * 2 and r["previous_id"], r
        assert resolved(lab, m.host, m.iface, o.hostname) == set(o.addrs)
        assert "Traceback" not in m.log() and "horse" not in m.log() and "removed from the mesh" not in m.log()
