"""wgdisco netcheck: the report from fake results, then the command in the namespace lab.

The ``netns`` tests run ``python -m wgdisco netcheck`` in a host behind an easy
and a hard NAT router (wgdisco/lab: nftables masquerade, no hairpinning) and on
the WAN itself, against stund (IPv4) and coturn (IPv6) on the lab's
"internet" 203.0.113.0/24 / 2001:db8::/64.  Nothing leaves the lab.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wgdisco import netcheck
from wgdisco.lab import Host, Lab, LabError, require_tool
from wgdisco.netcheck import Candidate, Report, ServerResult

REPO = str(Path(__file__).resolve().parent.parent)
STUN_A, STUN_B, STUN_6 = "203.0.113.10", "203.0.113.11", "2001:db8::10"
DEAD = "203.0.113.10:4000"  # the server's IP, a port nobody listens on

SCHEMA_KEYS = {
    "version", "stun_servers_configured", "timeout", "local_port", "udp", "ipv4", "ipv4_address", "ipv6",
    "ipv6_address", "reflexive", "mapping_varies_by_dest_ip", "mapping_behaviour", "behind_nat", "hairpinning",
    "local_candidates", "local_candidates_error", "servers", "not_answering",
}
SERVER_KEYS = {"server", "address", "family", "answered", "mapped", "rtt_ms", "error"}

CANDIDATES = [Candidate("v10a", "10.1.0.2", 24), Candidate("v10a", "fd00:1::2", 64)]


def easy_report() -> Report:
    return Report(
        servers=[
            ServerResult("203.0.113.10:3478", ("203.0.113.10", 3478), ("203.0.113.1", 40000), 2.1),
            ServerResult("203.0.113.11:3478", ("203.0.113.11", 3478), ("203.0.113.1", 40000), 2.04),
        ],
        local_port=40000, behaviour="endpoint-independent", hairpinning=False, candidates=list(CANDIDATES),
    )


# --------------------------------------------------------------- the report


def test_easy_nat_report_reads_like_tailscale_netcheck() -> None:
    assert netcheck.format_report(easy_report()) == (
        "Report:\n"
        "  * UDP: yes\n"
        "  * IPv4: yes, 203.0.113.1:40000\n"
        "  * IPv6: not checked (no IPv6 STUN server)\n"
        "  * Mapping varies by destination IP: no (easy NAT)\n"
        "  * Hairpinning: no\n"
        "  * Local candidates: 10.1.0.2 (v10a), fd00:1::2 (v10a)\n"
        "  * STUN 203.0.113.10:3478: 203.0.113.1:40000 (2.1 ms)\n"
        "  * STUN 203.0.113.11:3478: 203.0.113.1:40000 (2.0 ms)\n"
    )
    assert netcheck.exit_code(easy_report()) == 0


def test_easy_nat_json() -> None:
    doc = netcheck.to_json(easy_report())
    assert json.loads(json.dumps(doc)) == doc
    assert set(doc) == SCHEMA_KEYS
    assert all(set(s) == SERVER_KEYS for s in doc["servers"])
    assert doc["version"] == 1 and doc["stun_servers_configured"] is True
    assert (doc["udp"], doc["ipv4"], doc["ipv6"]) == (True, True, None)
    assert doc["ipv4_address"] == "203.0.113.1:40000" and doc["ipv6_address"] is None
    assert doc["reflexive"] == ["203.0.113.1:40000"]
    assert doc["mapping_varies_by_dest_ip"] is False and doc["mapping_behaviour"] == "endpoint-independent"
    assert doc["behind_nat"] is True and doc["hairpinning"] is False
    assert doc["local_candidates"][0] == {"interface": "v10a", "address": "10.1.0.2", "prefixlen": 24}
    assert doc["servers"][0] == {"server": "203.0.113.10:3478", "address": "203.0.113.10:3478", "family": 4,
                                 "answered": True, "mapped": "203.0.113.1:40000", "rtt_ms": 2.1, "error": None}
    assert doc["not_answering"] == []


def test_hard_nat_dual_stack_and_a_dead_server() -> None:
    report = Report(
        servers=[
            ServerResult("203.0.113.10:3478", ("203.0.113.10", 3478), ("203.0.113.1", 61001), 1.0),
            ServerResult("stun.example:3478", ("203.0.113.11", 3478), ("203.0.113.1", 61002), 1.5),
            ServerResult("[2001:db8::10]:3478", ("2001:db8::10", 3478), ("2001:db8:1::2", 40000), 0.7),
            ServerResult("203.0.113.12:3478", ("203.0.113.12", 3478), error="no answer within 3 s"),
        ],
        local_port=40000, behaviour="endpoint-dependent", hairpinning=False, candidates=[],
    )
    text = netcheck.format_report(report)
    assert "  * IPv4: yes, 203.0.113.1:61001, 203.0.113.1:61002\n" in text
    assert "  * IPv6: yes, [2001:db8:1::2]:40000\n" in text
    assert "  * Mapping varies by destination IP: yes (hard NAT)\n" in text
    assert "  * Local candidates: none\n" in text
    assert "  * STUN stun.example:3478 (203.0.113.11:3478): 203.0.113.1:61002 (1.5 ms)\n" in text
    assert "  * STUN [2001:db8::10]:3478: [2001:db8:1::2]:40000 (0.7 ms)\n" in text
    assert text.endswith("  * STUN 203.0.113.12:3478: no answer (no answer within 3 s)\n")
    doc = netcheck.to_json(report)
    assert doc["mapping_varies_by_dest_ip"] is True
    assert doc["ipv6_address"] == "[2001:db8:1::2]:40000" and doc["servers"][2]["family"] == 6
    assert doc["not_answering"] == ["203.0.113.12:3478"]
    assert doc["servers"][3] == {"server": "203.0.113.12:3478", "address": "203.0.113.12:3478", "family": 4,
                                 "answered": False, "mapped": None, "rtt_ms": None,
                                 "error": "no answer within 3 s"}
    assert netcheck.exit_code(report) == 0  # one answer is enough


def test_nobody_answered() -> None:
    report = Report(servers=[ServerResult("203.0.113.12:3478", ("203.0.113.12", 3478), error="no answer within 3 s"),
                             ServerResult("nx.example:3478", error="cannot resolve 'nx.example': not known")],
                    local_port=40000, candidates=list(CANDIDATES))
    text = netcheck.format_report(report)
    assert "  * UDP: no\n  * IPv4: no\n  * IPv6: not checked (no IPv6 STUN server)\n" in text
    assert "  * Mapping varies by destination IP: unknown (needs answers from STUN servers at two" in text
    assert "  * Hairpinning: unknown (no IPv4 reflexive address to try)\n" in text
    assert "  * STUN nx.example:3478: no answer (cannot resolve 'nx.example': not known)\n" in text
    doc = netcheck.to_json(report)
    assert (doc["udp"], doc["ipv4"], doc["mapping_varies_by_dest_ip"], doc["hairpinning"]) == (False, False, None, None)
    assert doc["servers"][1]["family"] is None and doc["servers"][1]["address"] is None
    assert doc["not_answering"] == ["203.0.113.12:3478", "nx.example:3478"]
    assert netcheck.exit_code(report) == 1


def test_no_servers_says_so() -> None:
    report = Report(candidates=list(CANDIDATES))
    assert netcheck.format_report(report) == (
        "Report:\n"
        "  * STUN: no STUN servers configured (give --stun HOST:PORT); no STUN requests sent\n"
        "  * Local candidates: 10.1.0.2 (v10a), fd00:1::2 (v10a)\n"
    )
    doc = netcheck.to_json(report)
    assert doc["stun_servers_configured"] is False and doc["servers"] == [] and doc["local_port"] is None
    assert (doc["udp"], doc["ipv4"], doc["ipv6"], doc["hairpinning"]) == (None, None, None, None)
    assert netcheck.exit_code(report) == 0


def test_no_nat_and_hairpinning() -> None:
    report = Report(servers=[ServerResult("203.0.113.10:3478", ("203.0.113.10", 3478), ("203.0.113.30", 5000), 1.0),
                             ServerResult("203.0.113.11:3478", ("203.0.113.11", 3478), ("203.0.113.30", 5000), 1.0)],
                    behaviour="endpoint-independent", hairpinning=True,
                    candidates=[Candidate("eth0", "203.0.113.30", 24)], candidates_error=None)
    text = netcheck.format_report(report)
    assert "  * Mapping varies by destination IP: no (no NAT)\n  * Hairpinning: yes\n" in text
    assert netcheck.to_json(report)["behind_nat"] is False
    report.candidates, report.candidates_error = [], "netlink: permission denied"
    assert "  * Local candidates: unknown (netlink: permission denied)\n" in netcheck.format_report(report)


def test_no_servers_means_no_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_socket(*args: object, **kw: object) -> None:
        raise AssertionError("netcheck opened a socket without a STUN server")

    monkeypatch.setattr(netcheck.udp, "open_udp", no_socket)
    monkeypatch.setattr(netcheck, "local_candidates", lambda: (list(CANDIDATES), None))
    report = netcheck.run([])
    assert report.servers == [] and report.local_port is None and report.candidates == CANDIDATES


@pytest.mark.parametrize("values,want", [
    ([], []),
    (["203.0.113.10:3478"], ["203.0.113.10:3478"]),
    (["203.0.113.10"], ["203.0.113.10:3478"]),
    (["2001:db8::10"], ["[2001:db8::10]:3478"]),
    (["[2001:db8::10]:3479"], ["[2001:db8::10]:3479"]),
    (["stun.example.net:19302"], ["stun.example.net:19302"]),
    (["203.0.113.10:3478, 203.0.113.11:3478", "203.0.113.10:3478"], ["203.0.113.10:3478", "203.0.113.11:3478"]),
])
def test_parse_servers(values: list[str], want: list[str]) -> None:
    assert netcheck.parse_servers(values) == want


@pytest.mark.parametrize("value,message", [
    ("203.0.113.10:99999", "--stun '203.0.113.10:99999': STUN server '203.0.113.10:99999': "
                           "'99999' is not a port number (1-65535)"),
    ("host:port", "--stun 'host:port': STUN server 'host:port': 'port' is not a port number (1-65535)"),
    ("[2001:db8::10:3478", "--stun '[2001:db8::10:3478': STUN server '[2001:db8::10:3478': "
                           "'[2001:db8::10:3478' is not an endpoint (IPv6 is written [addr]:port)"),
    ("", "--stun '': no server (want HOST:PORT or [IPv6]:PORT)"),
])
def test_parse_servers_errors_name_the_value(value: str, message: str) -> None:
    with pytest.raises(ValueError) as e:
        netcheck.parse_servers([value])
    assert str(e.value) == message


def wgdisco_netcheck(*args: str, host: Host | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "wgdisco", "netcheck", *args]
    if host is not None:
        return host.run(argv, check=False, timeout=timeout, env={"PYTHONPATH": REPO})
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=None)


@pytest.mark.parametrize("args,message", [
    (["--stun", "203.0.113.10:0"], "wgdisco netcheck: --stun '203.0.113.10:0': STUN server '203.0.113.10:0': "
                                   "'0' is not a port number (1-65535)\n"),
    (["--stun", "203.0.113.10:3478", "--timeout", "0"], "wgdisco netcheck: --timeout 0: want seconds in (0, 60]\n"),
    (["--timeout", "600"], "wgdisco netcheck: --timeout 600: want seconds in (0, 60]\n"),
])
def test_usage_errors_exit_2_before_any_traffic(args: list[str], message: str) -> None:
    proc = wgdisco_netcheck(*args)  # fails while parsing: nothing is sent, so no lab is needed
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", message)


def test_timeout_must_be_a_number() -> None:
    proc = wgdisco_netcheck("--timeout", "soon")
    assert proc.returncode == 2 and "invalid float value: 'soon'" in proc.stderr


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
    assert doc["behind_nat"] is True
    assert doc["hairpinning"] is False  # the lab's NAT does not hairpin
    assert doc["local_candidates"] == [{"interface": "eth0", "address": "10.1.0.2", "prefixlen": 24},
                                       {"interface": "eth0", "address": "fd00:1::2", "prefixlen": 64}]
    assert doc["not_answering"] == []

    human = wgdisco_netcheck(*TWO, host=host)
    assert human.returncode == 0 and human.stderr == ""
    lines = human.stdout.splitlines()
    assert re.fullmatch(r"  \* IPv4: yes, 203\.0\.113\.1:\d+", lines[2]), human.stdout
    assert lines[:2] + lines[3:6] == ["Report:", "  * UDP: yes", "  * IPv6: not checked (no IPv6 STUN server)",
                                      "  * Mapping varies by destination IP: no (easy NAT)", "  * Hairpinning: no"]
    assert lines[6] == "  * Local candidates: 10.1.0.2 (eth0), fd00:1::2 (eth0)"
    assert [line.split(": ")[0] for line in lines[7:]] == [f"  * STUN {STUN_A}:3478", f"  * STUN {STUN_B}:3478"]


@pytest.mark.netns
def test_hard_nat_varies_by_destination(lab: Lab) -> None:
    wan, _ = start_servers(lab)
    host = site(lab, wan, "hard")
    code, doc = run_json(host, *TWO)
    assert code == 0, doc
    mapped = [s["mapped"] for s in doc["servers"]]
    assert all(m.startswith("203.0.113.1:") for m in mapped) and len(set(mapped)) == 2, doc  # a port per server
    assert doc["mapping_behaviour"] == "endpoint-dependent" and doc["mapping_varies_by_dest_ip"] is True
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
                         "--timeout", "0.8")
    assert code == 0, doc  # one server answered
    assert doc["not_answering"] == [DEAD, f"[{STUN_6}]:3478"]
    dead, v6 = doc["servers"][1:]
    assert (dead["answered"], dead["mapped"], dead["error"]) == (False, None, "no answer within 0.8 s")
    assert (v6["answered"], v6["family"], v6["error"]) == (False, 6, "cannot send: Network is unreachable")
    assert (doc["ipv4"], doc["ipv6"]) == (True, False)
    assert doc["mapping_varies_by_dest_ip"] is None  # one answer proves nothing
    assert doc["hairpinning"] is False and doc["udp"] is True

    proc = wgdisco_netcheck("--stun", DEAD, "--timeout", "0.8", host=host)
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
