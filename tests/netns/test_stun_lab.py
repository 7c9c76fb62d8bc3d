"""wgdisco.proto.stun against real servers (netns).

The ``netns`` tests run ``wgdisco/lab/stun_probe.py`` behind an easy and a hard NAT router against
stund 0.97 (answers with MAPPED-ADDRESS and XOR-MAPPED-ADDRESS, no FINGERPRINT)
and coturn (XOR-MAPPED-ADDRESS and FINGERPRINT only).

On a fake clock, joined to a fake server in memory: tests/unit/test_stun.py.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from wgdisco.lab import Host, Lab, LabError, require_tool


# ------------------------------------------------------- real servers (netns)

REPO = str(Path(__file__).resolve().parents[2])
PRIMARY, SECONDARY = "203.0.113.10", "203.0.113.11"


def wait_udp_listening(host: Host, addrs: list[str], timeout: float = 10.0) -> None:
    """Until every ``ip:port`` has a bound UDP socket in ``host`` (``ss``), so no request is lost."""
    deadline = time.monotonic() + timeout
    while True:
        bound = set(host.run(["ss", "-Hnlu"]).stdout.split())
        if all(a in bound for a in addrs):
            return
        if time.monotonic() > deadline:
            raise LabError(f"{host.name}: not listening on {addrs}; bound: {sorted(bound)}")
        time.sleep(0.05)


def start_stund(host: Host) -> None:
    # RFC 3489 needs two IPs and two ports: stund binds PRIMARY/SECONDARY x 3478/3479.
    host.popen([require_tool("stund"), "-v", "-h", PRIMARY, "-a", SECONDARY], name="stund")


def start_coturn(host: Host) -> None:
    # STUN only; no TLS/DTLS, no CLI, no config file, and the pid file and user db in the
    # lab's log directory (not /var/run, /var/lib).  Without backward compatibility it sends
    # XOR-MAPPED-ADDRESS but no MAPPED-ADDRESS (stund sends both).
    logdir = host.lab.logdir
    host.popen([require_tool("turnserver"), "--stun-only", "-L", PRIMARY, "-L", SECONDARY,
                "--listening-port", "3478", "--alt-listening-port", "3479", "--no-cli", "--no-tls",
                "--no-dtls", "-n", "--log-file", "stdout", "--simple-log", "--no-stun-backward-compatibility",
                "--pidfile", str(logdir / "turnserver.pid"), "--userdb", str(logdir / "turndb")],
               name="coturn")


def stun_probe(host: Host, servers: list[tuple[str, int]], *extra: str) -> dict:
    argv = [sys.executable, "-m", "wgdisco.lab.stun_probe", *extra, *(f"{ip}:{port}" for ip, port in servers)]
    cp = host.run(argv, check=False, timeout=90, env={"PYTHONPATH": REPO})
    if cp.returncode != 0:
        raise LabError(f"stun_probe on {host.name} exited {cp.returncode}:\n{cp.stdout}{cp.stderr}")
    return json.loads(cp.stdout)


@pytest.mark.netns
@pytest.mark.parametrize("server_kind", ["stund", "coturn"])
def test_real_stun_server_behind_easy_and_hard_nat(lab: Lab, server_kind: str) -> None:
    wan = lab.lan("wan")
    srv = lab.host("stun")
    ifname = lab.attach(srv, wan, addr=f"{PRIMARY}/24")
    srv.add_addr(ifname, f"{SECONDARY}/24")
    {"stund": start_stund, "coturn": start_coturn}[server_kind](srv)
    clients = {}
    for i, kind in enumerate(("easy", "hard"), 1):
        lan = lab.lan(f"lan{i}")
        nat = lab.nat_router(f"nat{i}", lan=lan, wan=wan, kind=kind,
                             lan_addr=f"10.{i}.0.1/24", wan_addr=f"203.0.113.{i}/24")
        host = lab.host(f"h{i}")
        lab.attach(host, lan, addr=f"10.{i}.0.2/24")
        host.add_route("default", via=nat.lan_ip)
        clients[kind] = (host, nat)
    servers = [(PRIMARY, 3478), (SECONDARY, 3478), (PRIMARY, 3479), (SECONDARY, 3479)]
    wait_udp_listening(srv, [f"{ip}:{port}" for ip, port in servers])

    for extra in ([], ["--no-fingerprint"]):
        host, nat = clients["easy"]
        easy = stun_probe(host, servers, "--port", "40000", *extra)
        assert easy["mapped"] == {f"{ip}:{port}": [nat.wan_ip, 40000] for ip, port in servers}, easy
        assert easy["behaviour"] == "endpoint-independent"
        assert easy["reflexive"] == [[nat.wan_ip, 40000]]
        assert easy["counters"]["malformed"] == easy["counters"]["wrong_source"] == 0

        host, nat = clients["hard"]
        hard = stun_probe(host, servers, "--port", "40000", *extra)
        got = list(hard["mapped"].values())
        assert len(got) == 4 and {ip for ip, _ in got} == {nat.wan_ip}, hard
        # fully-random draws a port per destination: four equal draws would be a 2**-48 event
        assert len({port for _, port in got}) > 1, hard
        assert hard["behaviour"] == "endpoint-dependent"
