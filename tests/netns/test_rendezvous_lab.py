"""``wgdisco rendezvous``: Knot and BIND started straight from the command's output, two nodes
behind two NATs connecting through each (docs/rendezvous.md).

The snippets go in verbatim; the test adds only what a real server's config already has around
them (the ``server:``/``options`` part: where to listen, where to keep state). BIND's zone path
(``/var/lib/bind/<zone>.zone``, as printed) is a private bind mount of the test's directory, so
the machine's /var/lib/bind is never touched. The nodes' ``[Discovery]`` is the printed section
(key from the printed key file), nothing added: documented defaults (mDNS on, PollInterval).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.netns.test_nat_lab import KNOT, STUN_A, first_ping, internet
from wgdisco.tools import rendezvous
from wgdisco.lab import Lab, LabError, require_tool
from wgdisco.lab.knot import Knot, server_conf
from wgdisco.lab.wg import Node, keypair
from wgdisco.proto import keys

pytestmark = pytest.mark.netns
ZONE = "wg.example.net"


def run_rendezvous(key_file: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "wgdisco", "rendezvous", ZONE, "--server", KNOT,
                           "--stun", f"{STUN_A}:3478", "--key-file", str(key_file)],
                          capture_output=True, text=True, check=True)
    assert proc.stderr == "", proc.stderr
    return proc.stdout


def discovery_lines(snippet: str) -> dict[str, str]:
    """The printed [Discovery] section as the lab's Node wants it (comments dropped, as the parser does)."""
    out = {}
    for line in snippet.splitlines():
        line = line.split("#", 1)[0].strip()
        if "=" in line:
            key, value = (x.strip() for x in line.split("=", 1))
            out[key] = value
    return out


def start_knot_from(output: str, host, d: Path) -> Knot:
    require_tool("knotd")
    for sub in ("run", "db", "zones"):
        (d / sub).mkdir(parents=True)
    # what /etc/knot/knot.conf has around the snippet: the server part, storage, logging
    (d / "knot.conf").write_text(server_conf(d, f"{KNOT}@53") + f"""
template:
  - id: default
    storage: "{d / 'zones'}"

{rendezvous.cut(output, rendezvous.KNOT_CONF)}""")
    (d / "zones" / f"{ZONE}.zone").write_text(rendezvous.cut(output, rendezvous.ZONE_FILE))
    knot = Knot(host, [KNOT], 53, f"{ZONE}.", "wgdisco.", discovery_key(output).split(":")[2], d)
    return knot.start()


def discovery_key(output: str) -> str:
    key_file = discovery_lines(rendezvous.cut(output, rendezvous.NODE_CONF))["UpdateKeyFile"]
    return Path(key_file).read_text().strip()


def start_bind_from(output: str, host, d: Path):
    named = require_tool("named")
    require_tool("unshare")
    d.mkdir(parents=True)
    # what /etc/bind/named.conf.options has: where to listen and keep state (no recursion)
    (d / "named.conf").write_text(f"""\
options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    session-keyfile "{d}/session.key";
    managed-keys-directory "{d}";
    listen-on port 53 {{ {KNOT}; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
}};
controls {{ }};

{rendezvous.cut(output, rendezvous.NAMED_CONF)}""")
    zones = d / "zones"
    zones.mkdir()
    (zones / f"{ZONE}.zone").write_text(rendezvous.cut(output, rendezvous.ZONE_FILE))
    check = subprocess.run(["named-checkconf", str(d / "named.conf")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    # the zone at the printed path, /var/lib/bind, seen only by this named (a private mount namespace)
    proc = host.popen(["unshare", "-m", "sh", "-c",
                       'mount --bind "$0" /var/lib/bind && exec "$1" -g -c "$2"', str(zones), named,
                       str(d / "named.conf")], name="named")
    proc.wait_for(r"all zones loaded", timeout=20, stream="stderr")
    deadline = time.monotonic() + 10
    while not host.run(["dig", f"@{KNOT}", "+short", "+time=1", "+tries=1", "SOA", f"{ZONE}."], check=False).stdout:
        if time.monotonic() > deadline or not proc.alive():
            raise LabError(f"named does not answer SOA {ZONE}:\n{proc.stderr()}")
        time.sleep(0.1)
    return proc


@pytest.mark.parametrize("server", ["knot", "bind"])
def test_two_nodes_behind_two_nats_connect_through_a_rendezvous_made_by_the_command(
        lab: Lab, server: str, tmp_path: Path) -> None:
    net = internet(lab)  # stund on STUN_A, the DNS server's address (KNOT) on the same host
    key_file = tmp_path / "wg.example.net.tsig"
    output = run_rendezvous(key_file)
    assert key_file.stat().st_mode & 0o777 == 0o600
    d = tmp_path / server
    if server == "knot":
        knot = start_knot_from(output, net.server, d)
        assert knot.proc is not None
        server_proc = knot.proc
    else:
        server_proc = start_bind_from(output, net.server, d)
    discovery = discovery_lines(rendezvous.cut(output, rendezvous.NODE_CONF))
    assert discovery == {"Domain": ZONE, "Nameserver": KNOT, "UpdateKeyFile": str(key_file), "STUN": f"{STUN_A}:3478"}

    ha, hb = net.site("a", 1), net.site("b", 2)
    tag = lab.prefix[3:9]
    a = Node(ha, "wgdisco", f"wa{tag}", *keypair(), ["10.9.0.1/24"], discovery=dict(discovery))
    b = Node(hb, "wgdisco", f"wb{tag}", *keypair(), ["10.9.0.2/24"], discovery=dict(discovery))
    a.peers = [b.peer_spec(keepalive=25)]  # no Endpoint: found through the zone, reached through both NATs
    b.peers = [a.peer_spec(keepalive=25)]
    start = time.monotonic()
    a.start()
    b.start()
    first_ping(a, b.inner4, timeout=30)
    elapsed = time.monotonic() - start
    print(f"rendezvous on {server}: first ping {elapsed:.2f} s after start")
    # direct, over the reflexive addresses: each side's endpoint is the other's NAT
    assert a.dump()[b.public]["endpoint"] == "203.0.113.2:51820"
    # both records are in the zone, put there with the printed key under the printed policy
    ptr = net.server.run(["dig", f"@{KNOT}", "+short", "PTR", f"_wireguard._udp.{ZONE}."]).stdout
    for node in (a, b):
        assert keys.key_to_base32(keys.key_from_base64(node.public)).lower() in ptr.lower(), ptr
    assert elapsed <= 10, f"first ping after {elapsed:.2f} s"
    for node in (a, b):
        assert node.stop() == 0
    assert "refused" not in (a.proc.stderr() + b.proc.stderr()).lower()  # type: ignore[union-attr]
    # the policy holds: the key may not touch the zone's NS (RFC 2136 update of another type)
    nsupdate = net.server.run(["nsupdate", "-y", Path(key_file).read_text().strip()], check=False,
                              input=f"server {KNOT}\nzone {ZONE}.\nupdate add {ZONE}. 60 NS evil.example.\nsend\n")
    assert nsupdate.returncode != 0 and re.search(r"REFUSED|NOTAUTH", nsupdate.stdout + nsupdate.stderr), \
        nsupdate.stdout + nsupdate.stderr
    assert server_proc.alive()
