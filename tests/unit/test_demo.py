"""`wgdisco demo`: the table logic on its own (no root, no namespaces).

The whole demo, in namespaces as root: tests/netns/test_demo_lab.py.
"""

from __future__ import annotations

import io
import ipaddress
import os
import subprocess
from pathlib import Path

import pytest

from wgdisco import demo
from wgdisco.demo import PairStatus

ROOT = Path(__file__).resolve().parents[2]
LAN_A = [ipaddress.ip_network("10.1.0.0/24")]


# --- pure parts ---------------------------------------------------------------------------------


def test_topology_every_mechanism_and_only_reachable_pairs() -> None:
    assert demo.PAIRS == (("a", "b"), ("a", "c"), ("b", "c"), ("c", "d"))
    by = {p: demo.found_by(demo.SPEC[p[0]], demo.SPEC[p[1]]) for p in demo.PAIRS}
    assert by[("c", "d")] == "mDNS"  # d has neither DNS nor STUN: mDNS is its only way
    assert by[("a", "b")] == "Knot + STUN"
    assert not demo.can_reach(demo.SPEC["a"], demo.SPEC["d"])


def test_format_table_aligns_columns_without_trailing_blanks() -> None:
    lines = demo.format_table(["pair", "path", "rtt"], [["a <-> b", "direct", "0.5 ms"], ["c <-> d", "lan", ""]])
    assert lines == [
        "  pair     path    rtt",
        "  a <-> b  direct  0.5 ms",
        "  c <-> d  lan",
    ]
    wide = demo.format_table(["x", "y"], [["1", "2"]], indent="", min_widths=[3])
    assert wide == ["x    y", "1    2"]


def test_classify_path() -> None:
    assert demo.classify_path("10.1.0.3:51820", LAN_A) == "lan"
    assert demo.classify_path("203.0.113.2:51820", LAN_A) == "direct"
    assert demo.classify_path("[fd00:1::2]:51820", [ipaddress.ip_network("fd00:1::/64")]) == "lan"
    assert demo.classify_path("[2001:db8::2]:51820", LAN_A) == "direct"


def row(endpoint: str | None, handshake: int) -> dict:
    return {"endpoint": endpoint, "latest_handshake": handshake}


def test_observe_goes_waiting_handshake_path_and_stays_up() -> None:
    st = PairStatus("a", "b")
    assert not demo.observe(st, row(None, 0), row(None, 0), LAN_A, 0.5)
    assert st.state == "waiting" and st.t_handshake is None
    assert demo.observe(st, row("203.0.113.2:51820", 1700000000), row(None, 0), LAN_A, 2.25)
    assert st.state == "handshake" and st.t_handshake == 2.25
    assert demo.observe(st, row("203.0.113.2:51820", 1700000000), row("203.0.113.1:51820", 1700000000), LAN_A, 2.5)
    assert st.state == "direct" and st.up and st.t_handshake == 2.25
    st2 = PairStatus("c", "d")
    demo.observe(st2, row("10.1.0.3:51820", 1), row("10.1.0.2:51820", 1), LAN_A, 1.0)
    assert st2.state == "lan"


def test_latest_reason_and_parse_ping() -> None:
    log = ("2026-01-01 00:00:00,000 INFO peer AbCdEfGh…: path: no record found for it yet\n"
           "2026-01-01 00:00:01,000 INFO peer ZZZZZZZZ…: path: probing candidates\n"
           "2026-01-01 00:00:02,000 INFO peer AbCdEfGh…: path: probing candidates\n")
    assert demo.latest_reason(log, "AbCdEfGh…") == "probing candidates"
    assert demo.latest_reason(log, "nobody…") == ""
    out = ("--- 10.9.0.2 ping statistics ---\n3 packets transmitted, 3 received, 0% packet loss, time 402ms\n"
           "rtt min/avg/max/mdev = 0.058/0.074/0.090/0.013 ms\n")
    assert demo.parse_ping(out) == (3, 3, 0.074)
    assert demo.parse_ping("3 packets transmitted, 0 received, 100% packet loss\n") == (3, 0, None)


def test_summary_table_round_trips_through_its_parser() -> None:
    up = PairStatus("a", "b", "Knot + STUN", "direct", "203.0.113.2:51820", "203.0.113.1:51820", 2.61, "",
                    0.727, "3/3")
    lan = PairStatus("c", "d", "mDNS", "lan", "10.3.0.3:51820", "10.3.0.2:51820", 2.7, "", 0.655, "3/3")
    down = PairStatus("a", "c", "Knot + STUN", "waiting")
    text = "\n".join(demo.summary_lines([up, lan, down]))
    assert "2.6 s" in text and "0.727 ms (3/3)" in text
    rows = demo.parse_summary(text)
    assert rows[("a", "b")] == {"found_by": "Knot + STUN", "path": "direct", "xy": "203.0.113.2:51820",
                                "yx": "203.0.113.1:51820", "handshake": "2.6 s", "ping": "0.727 ms (3/3)"}
    assert rows[("c", "d")]["path"] == "lan" and rows[("c", "d")]["found_by"] == "mDNS"
    assert rows[("a", "c")]["path"] == "none" and rows[("a", "c")]["handshake"] == "-"


def test_live_lines_and_change_lines() -> None:
    st = PairStatus("a", "b", state="waiting", says="a: probing candidates")
    lines = demo.live_lines([st], 1.25)
    assert lines[0] == "   1.2 s: 0/1 pairs connected"
    assert lines[2].startswith("  a <-> b  waiting") and lines[2].endswith("a: probing candidates")
    assert demo.change_line(st, 1.25) == "  [ 1.2 s] a <-> b  waiting    a: probing candidates"


def test_screen_redraws_in_place_on_a_terminal() -> None:
    buf = io.StringIO()
    screen = demo.Screen(buf, tty=True)
    screen.draw(["one", "two"])
    screen.draw(["three", "four"])
    assert buf.getvalue() == "\x1b[2Kone\n\x1b[2Ktwo\n\r\x1b[2A\x1b[2Kthree\n\x1b[2Kfour\n"


class FakeHost:
    def __init__(self, answered: int) -> None:
        self.answered = answered

    def run(self, argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        out = f"3 packets transmitted, {self.answered} received\n"
        if self.answered:
            out += "rtt min/avg/max/mdev = 0.100/0.200/0.300/0.050 ms\n"
        return subprocess.CompletedProcess(argv, 0 if self.answered else 1, out, "")


class FakeNode:
    def __init__(self, inner: str, answered: int) -> None:
        self.inner4, self.host = inner, FakeHost(answered)


def test_ping_failures_name_the_pair() -> None:
    d = demo.Demo(lab=None, screen=demo.Screen(io.StringIO(), tty=False), root=ROOT, timeout=20)
    d.statuses = [PairStatus("a", "b"), PairStatus("c", "d")]
    d.nodes = {"a": FakeNode("10.9.0.1", 3), "b": FakeNode("10.9.0.2", 3),
               "c": FakeNode("10.9.0.3", 1), "d": FakeNode("10.9.0.4", 0)}
    assert d.ping_all() == ["c -> d: ping through the tunnel (10.9.0.4): 1/3 answered"]
    assert d.statuses[0].rtt_ms == 0.2 and d.statuses[0].ping == "3/3"


def test_not_root_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    out, err = io.StringIO(), io.StringIO()
    assert demo.main(out, err) == 1
    assert err.getvalue() == "wgdisco demo: needs root (it creates network namespaces): run `sudo make demo`\n"


def test_the_lab_ships_in_the_package() -> None:
    # `wgdisco demo` from an installed wheel: the lab is wgdisco.lab, its helper programs beside it
    lab = demo.import_lab()
    assert lab.__name__ == "wgdisco.lab"
    assert lab.LAB_DIR == demo.package_root() / "wgdisco" / "lab"
    for script in ("run_tunnel.py", "udpecho.py", "mdns_node.py", "stun_probe.py", "tcpxfer.py", "attacker.py"):
        assert (lab.LAB_DIR / script).is_file(), script


def test_without_the_lab_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> None:
        raise ImportError("No module named 'wgdisco.lab'")

    monkeypatch.setattr(demo, "import_lab", broken)  # a broken install
    out, err = io.StringIO(), io.StringIO()
    assert demo.main(out, err) == 2
    assert "wgdisco.lab" in err.getvalue() and "reinstall" in err.getvalue()
