"""A lab mesh for multicast over the tunnel (issue 28): three wgdisco members and a wireguard-go peer.

Members ``a``, ``b``, ``c`` start from the same mesh file (``Multicast`` left at its default:
mDNS in mesh mode); ``a`` also has a configured ``[Peer]``: ``d``, a wireguard-go node, which
routes 224.0.0.251 to ``a`` (so that what it sends there reaches ``a``'s wgdisco). All four share
one LAN bridge (10.1.0.0/24). Used by tests/netns/test_multicast_lab.py and bench/mcast_flood.py.

    mesh = build(lab)            # members up, full mesh pinged, a <-> d session up
    mesh.members["a"].status()   # wgdisco status --json
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .netns import Host, Lab, LabError, Proc
from .wg import PACKAGE_ROOT, Node, PeerSpec, keypair

MESH_CONFIG = "[Interface]\nListenPort = 51820\n\n[Discovery]\nMeshKey = multicast over the tunnel lab\n"
D_INNER = "192.0.2.4"  # the wireguard-go peer's tunnel address (outside the mesh's 10.64.0.0/10)
MCAST = str(Path(__file__).with_name("mcast.py"))
METRICS_PORT = 9109  # a's Prometheus metrics, on loopback in its namespace


@dataclass
class Member:
    host: Host
    iface: str
    proc: Proc
    public: str
    addrs: list[str] = field(default_factory=list)  # derived IPv4, IPv6

    def status(self) -> dict:
        out = self.host.run([sys.executable, "-m", "wgdisco", "status", self.iface, "--json"]).stdout
        return json.loads(out)

    def metrics(self) -> str:
        """a's Prometheus text (only a has Metrics)."""
        code = f"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{METRICS_PORT}/metrics').read().decode())"
        return self.host.run([sys.executable, "-c", code]).stdout

    def counters(self) -> dict[str, int]:
        return (self.status().get("multicast") or {}).get("counters", {})

    def cpu_seconds(self) -> float:
        """utime + stime of the daemon (all threads), from /proc/PID/stat."""
        fields = Path(f"/proc/{self.daemon_pid()}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / 100.0  # USER_HZ

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.daemon_pid()}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise LabError("no VmRSS")

    def daemon_pid(self) -> int:
        pid = self.proc.pid  # ip netns exec execs the daemon: the same pid
        if b"run_tunnel" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            raise LabError(f"pid {pid} is not the daemon")
        return pid


@dataclass
class MulticastMesh:
    lab: Lab
    members: dict[str, Member]
    d: Node

    def listen(self, name: str, port: int, *groups: str) -> Proc:
        """mcast.py listen in a member (or ``d``), joined on its tunnel interface only."""
        host, iface = (self.d.host, self.d.iface) if name == "d" else (self.members[name].host, self.members[name].iface)
        proc = host.popen([sys.executable, MCAST, "listen", "--iface", iface, "--port", str(port), *groups],
                          name=f"mcast-listen-{name}-{port}")
        proc.wait_for("READY", timeout=10)
        return proc

    def send(self, name: str, group: str, port: int, *, count: int, rate: float = 0.0, seconds: float = 3600.0,
             tag: str = "m", wait: bool = True) -> Proc:
        host, iface = (self.d.host, self.d.iface) if name == "d" else (self.members[name].host, self.members[name].iface)
        proc = host.popen([sys.executable, MCAST, "send", "--iface", iface, "--port", str(port), "--count", str(count),
                           "--rate", str(rate), "--seconds", str(seconds), "--tag", tag, group],
                          name=f"mcast-send-{name}-{tag}")
        if wait:
            proc.wait_for(r'"sent"', timeout=seconds + 30 if seconds < 3600 else 30)
        return proc


def received(proc: Proc) -> list[dict]:
    return [json.loads(line) for line in proc.stdout().splitlines() if line.startswith("{")]


def _start_member(lab: Lab, host: Host, iface: str, extra: str = "", args: tuple[str, ...] = ()) -> Member:
    conf = lab.logdir / f"{iface}.conf"
    conf.write_text(MESH_CONFIG + extra)
    conf.chmod(0o600)
    proc = host.popen([sys.executable, "-m", "wgdisco.lab.run_tunnel", str(conf), *args], name=f"wgdisco-{iface}",
                      env={"PYTHONPATH": str(PACKAGE_ROOT), "WGDISCO_STATE_DIR": str(lab.logdir / f"state-{iface}"),
                           "WGDISCO_HOSTS_FILE": str(lab.logdir / f"hosts-{iface}")})
    return Member(host, iface, proc, "")


def _wait_up(m: Member) -> None:
    got = m.proc.wait_for(r"mesh \w+: our addresses (\S+), (\S+);", timeout=20, stream="stderr")
    up = m.proc.wait_for(r"interface \S+ up: public key (\S+),", timeout=20, stream="stderr")
    m.public, m.addrs = up.group(1), [got.group(1).split("/")[0], got.group(2).split("/")[0]]


def _ping(host: Host, target: str) -> bool:
    return host.run(["ping", "-c1", "-W1", target], check=False).returncode == 0


def build(lab: Lab, *, limit: float = 30.0, flooder_rate: float | None = None) -> MulticastMesh:
    """The mesh; ``flooder_rate``: c's daemon sends that many packets a second per group on (a
    member whose budget was raised, as a modified wgdisco could: the others' budgets must hold)."""
    lan = lab.lan("lan")
    tag = lab.prefix[3:9]
    hosts = {name: lab.host(name) for name in "abcd"}
    for i, name in enumerate("abcd"):
        lab.attach(hosts[name], lan, f"10.1.0.{i + 1}/24", f"fd00:1::{i + 1}/64")
    d_private, d_public = keypair()
    d_peer = f"Metrics = 127.0.0.1:{METRICS_PORT}\n\n[Peer]\nPublicKey = {d_public}\nAllowedIPs = {D_INNER}/32\nEndpoint = 10.1.0.4:51820\n"
    flood = () if flooder_rate is None else ("--multicast-group-rate", str(flooder_rate))
    members = {name: _start_member(lab, hosts[name], f"{name}m{tag}", d_peer if name == "a" else "",
                                   flood if name == "c" else ()) for name in "abc"}
    for m in members.values():
        _wait_up(m)
    a = members["a"]
    d = Node(hosts["d"], "wireguard-go", f"dg{tag}", d_private, d_public, [f"{D_INNER}/32"],
             peers=[PeerSpec(a.public, [f"{a.addrs[0]}/32", "224.0.0.251/32"], "10.1.0.1:51820")]).start()
    start = time.monotonic()
    pending = {(i, j, fam) for i in "abc" for j in "abc" if i != j for fam in (0, 1)} | {("a", "d", 0)}
    while pending:
        for i, j, fam in sorted(pending):
            target = D_INNER if j == "d" else members[j].addrs[fam]
            if _ping(members[i].host, target):
                pending.discard((i, j, fam))
        if time.monotonic() - start > limit:
            raise LabError(f"no full mesh after {limit} s: {sorted(pending)}")
    for m in members.values():
        if "Traceback" in m.proc.stderr() or not re.search(r"multicast over the tunnel: 224\.0\.0\.251, ff02::fb",
                                                          m.proc.stderr()):
            raise LabError(f"{m.iface}: {m.proc.stderr()[-3000:]}")
    return MulticastMesh(lab, members, d)
