"""wgdisco netcheck: the report from fake results, and usage errors before any traffic.

The command in the namespace lab: tests/netns/test_netcheck_lab.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from wgdisco.tools import netcheck
from wgdisco.lab import Host
from wgdisco.tools.netcheck import InterfaceAddress, Report, ServerResult

REPO = str(Path(__file__).resolve().parents[2])

SCHEMA_KEYS = {
    "version", "stun_servers_configured", "timeout", "local_port", "udp", "ipv4", "ipv4_address", "ipv6",
    "ipv6_address", "reflexive", "mapping_varies_by_dest_ip", "mapping_behaviour", "mapping", "filtering",
    "behind_nat", "hairpinning",
    "local_candidates", "local_candidates_error", "servers", "not_answering", "port_mapping",
}
SERVER_KEYS = {"server", "address", "family", "answered", "mapped", "rtt_ms", "error"}

CANDIDATES = [InterfaceAddress("v10a", "10.1.0.2", 24), InterfaceAddress("v10a", "fd00:1::2", 64)]


def easy_report() -> Report:
    return Report(
        servers=[
            ServerResult("203.0.113.10:3478", ("203.0.113.10", 3478), ("203.0.113.1", 40000), 2.1),
            ServerResult("203.0.113.11:3478", ("203.0.113.11", 3478), ("203.0.113.1", 40000), 2.04),
        ],
        local_port=40000, behaviour="endpoint-independent", hairpinning=False, candidates=list(CANDIDATES),
        mapping_detail="endpoint-independent", filtering="address-and-port-dependent",
    )


# --------------------------------------------------------------- the report


def test_easy_nat_report_reads_like_tailscale_netcheck() -> None:
    assert netcheck.format_report(easy_report()) == (
        "Report:\n"
        "  * UDP: yes\n"
        "  * IPv4: yes, 203.0.113.1:40000\n"
        "  * IPv6: not checked (no IPv6 STUN server)\n"
        "  * Mapping varies by destination IP: no (easy NAT)\n"
        "  * Mapping (RFC 4787): endpoint-independent\n"
        "  * Filtering (RFC 4787): address-and-port-dependent\n"
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
    assert (doc["mapping"], doc["filtering"]) == ("endpoint-independent", "address-and-port-dependent")
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
                    candidates=[InterfaceAddress("eth0", "203.0.113.30", 24)], candidates_error=None)
    text = netcheck.format_report(report)
    assert "  * Mapping varies by destination IP: no (no NAT)\n" in text and "  * Hairpinning: yes\n" in text
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


class FakeUpnp:
    def __init__(self, answer: tuple[str | None, str | None]) -> None:
        self.answer = answer

    def probe(self) -> tuple[str | None, str | None]:
        return self.answer


def test_port_mapping_report() -> None:
    report = easy_report()
    report.port_mapping = netcheck.PortMapReport(gateway="10.1.0.1", pcp=True, natpmp=True,
                                                 natpmp_external="203.0.113.1", upnp=False)
    text = netcheck.format_report(report)
    assert "  * Port mapping: PCP yes, NAT-PMP yes (203.0.113.1), UPnP IGD no (gateway 10.1.0.1)\n" in text
    doc = netcheck.to_json(report)["port_mapping"]
    assert doc == {"gateway": "10.1.0.1", "pcp": True, "natpmp": True, "natpmp_external": "203.0.113.1",
                   "upnp": False, "upnp_external": None, "answered": ["pcp", "natpmp"], "error": None}
    report.port_mapping = netcheck.PortMapReport(error="no IPv4 default route")
    assert "  * Port mapping: not checked (no IPv4 default route)\n" in netcheck.format_report(report)
    assert netcheck.to_json(easy_report())["port_mapping"] is None  # not asked


def test_port_mapping_check_without_a_default_route(monkeypatch: pytest.MonkeyPatch) -> None:
    from wgdisco.io import netlink

    monkeypatch.setattr(netlink, "default_gateway", lambda: None)
    pm = netcheck.port_mapping_check(upnp=FakeUpnp((None, "no IGD answered SSDP")))
    assert (pm.gateway, pm.error, pm.answered) == (None, "no IPv4 default route", [])


def test_port_mapping_check_against_a_gateway_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake gateway on 127.0.0.1: its PCP and NAT-PMP answers, and a stranger's, which is ignored."""
    import socket
    import struct
    import threading

    from wgdisco.io import netlink

    gw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    gw.bind(("127.0.0.1", 0))
    gw.settimeout(2)
    port = gw.getsockname()[1]
    monkeypatch.setattr(netlink, "default_gateway", lambda: ("127.0.0.1", "127.0.0.1"))
    monkeypatch.setattr("wgdisco.proto.pcp.PORT", port)

    def serve() -> None:
        for _ in range(2):
            data, addr = gw.recvfrom(1500)
            if data[0] == 2:
                gw.sendto(struct.pack("!BBBBII", 2, 0x80, 0, 0, 0, 9) + bytes(12), addr)
            else:
                gw.sendto(struct.pack("!BBHI", 0, 128, 0, 9) + bytes([203, 0, 113, 1]), addr)

    t = threading.Thread(target=serve)
    t.start()
    pm = netcheck.port_mapping_check(upnp=FakeUpnp(("203.0.113.1", None)))
    t.join()
    gw.close()
    assert (pm.pcp, pm.natpmp, pm.natpmp_external, pm.upnp, pm.upnp_external) == (
        True, True, "203.0.113.1", True, "203.0.113.1")
