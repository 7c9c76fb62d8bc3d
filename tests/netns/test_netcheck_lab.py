"""wgdisco netcheck: the command in the namespace lab.

The ``netns`` tests run ``python -m wgdisco netcheck`` in a host behind an easy
and a hard NAT router (wgdisco/lab: nftables masquerade, no hairpinning) and on
the WAN itself, against stund (IPv4) and coturn (IPv6) on the lab's
"internet" 203.0.113.0/24 / 2001:db8::/64.  Nothing leaves the lab.

The report from fake results: tests/unit/test_netcheck.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wgdisco.lab import Host, Lab, LabError, require_tool

REPO = str(Path(__file__).resolve().parents[2])
STUN_A, STUN_B, STUN_6 = "203.0.113.10", "203.0.113.11", "2001:db8::10"
DEAD = "203.0.113.10:4000"  # the server's IP, a port nobody listens on


def wgdisco_netcheck(*args: str, host: Host | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "wgdisco", "netcheck", *args]
    if host is not None:
        return host.run(argv, check=False, timeout=timeout, env={"PYTHONPATH": REPO})
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=None)


# -------------------------------------------------------------- in the lab


def start_servers(lab: Lab, *, v6: bool = False) -> tuple[Host, Host]:
    """The "internet": a WAN switch and a server host with stund on STUN_A/STUN_B (and coturn on STUN_6)."""
    require_tool("stund")
    wan = lab.lan("wan")
    srv = lab.host("srv")
    ifname = lab.attach(srv, wan, f"{STUN_A}/24", f"{STUN_6}/64" if v6 else None)
    srv.add_addr(ifname, f"{STUN_B}/24")
    stund = srv.popen(["stund", "-h", STUN_A, "-a", STUN_B], name="stund")
    want = [f"{STUN_A}:3478", f"{STUN_B}:3478"]
    if v6:
        logdir = lab.logdir
        srv.popen([require_tool("turnserver"), "--stun-only", "-L", STUN_6, "--listening-port", "3478",
                   "--no-cli", "--no-tls", "--no-dtls", "-n", "--log-file", "stdout", "--simple-log",
                   "--pidfile", str(logdir / "turnserver.pid"), "--userdb", str(logdir / "turndb")], name="coturn")
        want.append(f"[{STUN_6}]:3478")
    deadline = time.monotonic() + 10
    while not all(a in (bound := srv.run(["ss", "-Hnlu"]).stdout.split()) for a in want):
        if time.monotonic() > deadline or not stund.alive():
            raise LabError(f"STUN servers not listening on {want}: {bound}\n{stund.stderr()}")
        time.sleep(0.05)
    return wan, srv


def site(lab: Lab, wan: Host, kind: str) -> Host:
    """A host at 10.1.0.2 behind a NAT router whose WAN address is 203.0.113.1."""
    lan = lab.lan("lan")
    lab.nat_router("nat", lan=lan, wan=wan, kind=kind,  # type: ignore[arg-type]
                   lan_addr="10.1.0.1/24", wan_addr="203.0.113.1/24")
    host = lab.host("h")
    lab.attach(host, lan, "10.1.0.2/24", "fd00:1::2/64", ifname="eth0")
    host.add_route("default", via="10.1.0.1")
    return host


def run_json(host: Host, *args: str) -> tuple[int, dict]:
    proc = wgdisco_netcheck(*args, "--json", host=host)
    assert proc.stderr == "", proc.stderr
    return proc.returncode, json.loads(proc.stdout)


TWO = ["--stun", f"{STUN_A}:3478", "--stun", f"{STUN_B}:3478"]


@pytest.mark.netns
@pytest.mark.background  # waits on STUN timeouts; its own figures (tests/run_suite.py)
def test_easy_nat(lab: Lab) -> None:
    wan, _ = start_servers(lab)
    host = site(lab, wan, "easy")
    code, doc = run_json(host, *TWO)
    assert code == 0, doc
    port = doc["local_port"]
    # masquerade keeps the source port when it is free: the reflexive address is the WAN IP, same port
    assert [s["mapped"] for s in doc["servers"]] == [f"203.0.113.1:{port}"] * 2, doc
    assert all(s["answered"] and s["error"] is None and 0 < s["rtt_ms"] < 1000 for s in doc["servers"])
    assert (doc["udp"], doc["ipv4"], doc["ipv6"]) == (True, True, None)
    assert doc["ipv4_address"] == f"203.0.113.1:{port}" and doc["reflexive"] == [doc["ipv4_address"]]
    assert doc["mapping_behaviour"] == "endpoint-independent" and doc["mapping_varies_by_dest_ip"] is False
    # RFC 5780 tests against stund's alternate address: Linux conntrack filters by address and port
    assert (doc["mapping"], doc["filtering"]) == ("endpoint-independent", "address-and-port-dependent"), doc
    assert doc["behind_nat"] is True
    assert doc["hairpinning"] is False  # the lab's NAT does not hairpin
    assert doc["local_candidates"] == [{"interface": "eth0", "address": "10.1.0.2", "prefixlen": 24},
                                       {"interface": "eth0", "address": "fd00:1::2", "prefixlen": 64}]
    assert doc["not_answering"] == []

    human = wgdisco_netcheck(*TWO, host=host)
    assert human.returncode == 0 and human.stderr == ""
    lines = human.stdout.splitlines()
    assert re.fullmatch(r"  \* IPv4: yes, 203\.0\.113\.1:\d+", lines[2]), human.stdout
    assert lines[:2] + lines[3:8] == ["Report:", "  * UDP: yes", "  * IPv6: not checked (no IPv6 STUN server)",
                                      "  * Mapping varies by destination IP: no (easy NAT)",
                                      "  * Mapping (RFC 4787): endpoint-independent",
                                      "  * Filtering (RFC 4787): address-and-port-dependent", "  * Hairpinning: no"]
    # with --stun the gateway is asked too (this router speaks none of PCP, NAT-PMP, UPnP IGD)
    assert lines[8] == "  * Port mapping: PCP no, NAT-PMP no, UPnP IGD no (gateway 10.1.0.1)", human.stdout
    assert lines[9] == "  * Local candidates: 10.1.0.2 (eth0), fd00:1::2 (eth0)"
    assert [line.split(": ")[0] for line in lines[10:]] == [f"  * STUN {STUN_A}:3478", f"  * STUN {STUN_B}:3478"]


@pytest.mark.netns
@pytest.mark.background
def test_hard_nat_varies_by_destination(lab: Lab) -> None:
    wan, _ = start_servers(lab)
    host = site(lab, wan, "hard")
    code, doc = run_json(host, *TWO)
    assert code == 0, doc
    mapped = [s["mapped"] for s in doc["servers"]]
    assert all(m.startswith("203.0.113.1:") for m in mapped) and len(set(mapped)) == 2, doc  # a port per server
    assert doc["mapping_behaviour"] == "endpoint-dependent" and doc["mapping_varies_by_dest_ip"] is True
    # fully-random: a new port for the server's other port too (RFC 5780 §4.3)
    assert (doc["mapping"], doc["filtering"]) == ("address-and-port-dependent", "address-and-port-dependent"), doc
    assert doc["reflexive"] == mapped and doc["hairpinning"] is False
    human = wgdisco_netcheck(*TWO, host=host)
    assert "  * Mapping varies by destination IP: yes (hard NAT)\n" in human.stdout


@pytest.mark.netns
def test_dead_server_is_reported_and_sets_the_exit_code(lab: Lab) -> None:
    wan, _ = start_servers(lab)
    host = site(lab, wan, "easy")
    start = time.monotonic()
    # the site has no IPv6 route out: that server fails at once, without waiting for the timeout
    code, doc = run_json(host, "--stun", f"{STUN_A}:3478", "--stun", DEAD, "--stun", f"[{STUN_6}]:3478",
                         "--timeout", "0.8", "--no-port-mapping")  # SSDP's own 4 s would blur the bound below
    assert code == 0, doc  # one server answered
    assert doc["not_answering"] == [DEAD, f"[{STUN_6}]:3478"]
    dead, v6 = doc["servers"][1:]
    assert (dead["answered"], dead["mapped"], dead["error"]) == (False, None, "no answer within 0.8 s")
    assert (v6["answered"], v6["family"], v6["error"]) == (False, 6, "cannot send: Network is unreachable")
    assert (doc["ipv4"], doc["ipv6"]) == (True, False)
    assert doc["mapping_varies_by_dest_ip"] is None  # one answer proves nothing
    assert doc["hairpinning"] is False and doc["udp"] is True

    proc = wgdisco_netcheck("--stun", DEAD, "--timeout", "0.8", "--no-port-mapping", host=host)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "  * UDP: no\n  * IPv4: no\n" in proc.stdout
    assert f"  * STUN {DEAD}: no answer (no answer within 0.8 s)\n" in proc.stdout
    assert time.monotonic() - start < 6  # the timeout bounds each run


@pytest.mark.netns
def test_no_stun_servers_sends_nothing(lab: Lab) -> None:
    wan, _ = start_servers(lab)
    host = site(lab, wan, "easy")
    # count everything the host sends except IPv6 neighbour discovery/MLD housekeeping
    host.run(["nft", "-f", "-"], input="table inet nc {\n chain out {\n type filter hook output priority 0;\n"
                                       " meta l4proto != ipv6-icmp counter\n }\n}\n")
    proc = wgdisco_netcheck(host=host)
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout == ("Report:\n"
                           "  * STUN: no STUN servers configured (give --stun HOST:PORT); no STUN requests sent\n"
                           "  * Local candidates: 10.1.0.2 (eth0), fd00:1::2 (eth0)\n")
    code, doc = run_json(host)
    assert code == 0 and doc["stun_servers_configured"] is False and doc["servers"] == []
    counters = host.run(["nft", "-j", "list", "table", "inet", "nc"]).stdout
    rules = [item["rule"] for item in json.loads(counters)["nftables"] if "rule" in item]
    [counter] = [expr["counter"] for rule in rules for expr in rule["expr"] if "counter" in expr]
    assert counter["packets"] == 0, counters


@pytest.mark.netns
def test_on_the_wan_dual_stack_no_nat_and_hairpin(lab: Lab) -> None:
    wan, srv = start_servers(lab, v6=True)
    host = lab.host("w")
    lab.attach(host, wan, "203.0.113.30/24", "2001:db8::30/64", ifname="eth0")
    args = [*TWO, "--stun", f"{STUN_6}"]  # a bare IPv6 address: port 3478
    code, doc = run_json(host, *args)
    assert code == 0, doc
    port = doc["local_port"]
    assert [s["mapped"] for s in doc["servers"]] == [f"203.0.113.30:{port}"] * 2 + [f"[2001:db8::30]:{port}"]
    assert [s["family"] for s in doc["servers"]] == [4, 4, 6]
    assert doc["servers"][2]["server"] == f"[{STUN_6}]:3478"
    assert (doc["ipv4"], doc["ipv6"]) == (True, True)
    assert doc["ipv6_address"] == f"[2001:db8::30]:{port}"
    assert doc["behind_nat"] is False and doc["mapping_varies_by_dest_ip"] is False
    assert doc["hairpinning"] is True  # no NAT: our own address reaches us
    human = wgdisco_netcheck(*args, host=host).stdout
    assert "  * IPv6: yes, [2001:db8::30]:" in human and "  * Mapping varies by destination IP: no (no NAT)\n" in human
