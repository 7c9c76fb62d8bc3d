"""A stranger on the LAN forges mDNS records (issue 17, findings 1 and 2), with the defaults.

1. 20 records a second for 20 s under the genuine peer's key, 31 new candidates each: at most 64
   candidates kept, the live path untouched, idle CPU under 5 % within 10 s after, RSS back within
   3 MB of before.
2. 100 new instance names a second for 20 s: RSS grows by less than 3 MB.
"""

from __future__ import annotations

import json
import sys
import time

import pytest

from wgdisco.lab import Lab
from wgdisco.lab.wg import PACKAGE_ROOT, Node, keypair

pytestmark = [pytest.mark.netns, pytest.mark.background]  # background: tests/run_suite.py

ENV = {"PYTHONPATH": str(PACKAGE_ROOT)}


def rss_kb(node: Node) -> int:
    assert node.proc is not None
    status = open(f"/proc/{node.proc.pid}/status").read()
    return int(status.split("VmRSS:")[1].split()[0])


def cpu_seconds(node: Node) -> float:
    assert node.proc is not None
    fields = open(f"/proc/{node.proc.pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks of 10 ms


def lan_with_attacker(lab: Lab) -> tuple[Node, Node, object, str]:
    lan = lab.lan("lan")
    ha, hb, hc = lab.host("a"), lab.host("b"), lab.host("c")
    lab.attach(ha, lan, "10.1.0.1/24")
    lab.attach(hb, lan, "10.1.0.2/24")
    c_if = lab.attach(hc, lan, "10.1.0.3/24")
    tag = lab.prefix[3:9]
    a = Node(ha, "wgdisco", f"wa{tag}", *keypair(), ["10.9.0.1/24"], discovery={"mDNS": "on"})
    b = Node(hb, "wgdisco", f"wb{tag}", *keypair(), ["10.9.0.2/24"], discovery={"mDNS": "on"})
    a.peers = [b.peer_spec()]
    b.peers = [a.peer_spec()]
    b.start()
    a.start()
    deadline = time.monotonic() + 10
    while a.host.run(["ping", "-c1", "-W1", b.inner4], check=False).returncode != 0:
        assert time.monotonic() < deadline, a.proc.stderr()  # type: ignore[union-attr]
    return a, b, hc, c_if


def status(node: Node) -> dict:
    return json.loads(node.host.run([sys.executable, "-m", "wgdisco", "status", node.iface, "--json"],
                                    env=ENV).stdout)


def test_forged_records_with_new_candidates_stay_bounded(lab: Lab) -> None:
    a, b, hc, c_if = lan_with_attacker(lab)
    endpoint = a.dump()[b.public]["endpoint"]
    pinger = a.host.popen(["ping", "-i", "0.2", b.inner4], name="keep-alive-ping")
    time.sleep(2)
    rss_before = rss_kb(a)
    flood = hc.popen([sys.executable, "-m", "wgdisco.lab.mdns_flood", "candidates", c_if, b.public, "20", "20"],
                     name="mdns-flood", env=ENV)
    assert flood.wait(timeout=40) == 0, flood.stderr()
    sent = json.loads(flood.stdout())["sent"]
    peer = status(a)["peers"][0]
    kept = len(peer["candidates"])
    time.sleep(10)  # the attack is over: within 10 s the victim is idle again
    cpu0 = cpu_seconds(a)
    time.sleep(10)
    idle = (cpu_seconds(a) - cpu0) / 10
    rss_after = rss_kb(a)
    pinger.stop()
    err = a.proc.stderr()  # type: ignore[union-attr]
    print(f"forged records: {sent} sent; {kept} candidates kept; idle CPU {idle:.1%} in the 10 s after the "
          f"next 10; RSS {rss_before} -> {rss_after} kB; {err.count('new candidate')} log lines on new candidates")
    assert sent >= 380
    assert kept <= 64
    assert a.dump()[b.public]["endpoint"] == endpoint  # the live path never moved
    assert idle < 0.05
    assert rss_after - rss_before < 3 * 1024
    assert err.count("new candidate") <= 12  # 4 per 10 s
    assert "Traceback" not in err
    a.host.ping(b.inner4, count=2, wait=3)


def test_forged_instance_names_cost_no_memory(lab: Lab) -> None:
    a, b, hc, c_if = lan_with_attacker(lab)
    time.sleep(2)
    rss_before = rss_kb(a)
    flood = hc.popen([sys.executable, "-m", "wgdisco.lab.mdns_flood", "names", c_if, "100", "20"],
                     name="mdns-names", env=ENV)
    assert flood.wait(timeout=40) == 0, flood.stderr()
    sent = json.loads(flood.stdout())["sent"]
    time.sleep(2)
    rss_after = rss_kb(a)
    err = a.proc.stderr()  # type: ignore[union-attr]
    print(f"forged names: {sent} sent; RSS {rss_before} -> {rss_after} kB")
    assert sent >= 1900
    assert rss_after - rss_before < 3 * 1024
    assert "Traceback" not in err
    a.host.ping(b.inner4, count=2, wait=3)
