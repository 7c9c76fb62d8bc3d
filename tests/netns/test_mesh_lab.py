"""Zero-config mesh in the lab (issue 15, docs/mesh.md): real daemons on one LAN bridge, mDNS.

Every member starts from a byte-identical config file holding only ``ListenPort`` and
``MeshKey``: no PrivateKey (generated into a per-node state directory, WGDISCO_STATE_DIR),
no Address (derived), no [Peer]. All directed pairs must ping over IPv4 and IPv6 on the
derived addresses. One more node with another MeshKey must be admitted by nobody.

Defaults: 4 members (``WGDISCO_MESH_NODES=8`` for 8); full mesh within 30 s (the issue's goal
is 5 s for 8 nodes, median of 5 runs; this test reports the one figure it measures).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

from typing import TYPE_CHECKING

import pytest

from wgdisco.lab import Lab
from wgdisco.lab.netns import Host, Proc
from wgdisco.lab.wg import PACKAGE_ROOT
from wgdisco.proto import keys
from tests.schema_check import check

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "status.schema.json").read_text())

if TYPE_CHECKING:
    from wgdisco.proto.mesh import Mesh

pytestmark = pytest.mark.netns

NODES = int(os.environ.get("WGDISCO_MESH_NODES", "4"))
LIMIT = float(os.environ.get("WGDISCO_MESH_LIMIT", "30"))
CONFIG = "[Interface]\nListenPort = 51820\n\n[Discovery]\nMeshKey = correct horse battery staple\n"
OTHER = "[Interface]\nListenPort = 51820\n\n[Discovery]\nMeshKey = an entirely different mesh\n"


def start(lab: Lab, host: Host, iface: str, text: str, hostname: str = "") -> tuple[Proc, str, list[str]]:
    """A daemon from config ``text``: (process, public key, [derived IPv4, derived IPv6]). With
    ``hostname`` it runs in its own UTS namespace under that host name (its default member name);
    its names block goes to ``hosts_file(lab, iface)`` (WGDISCO_HOSTS_FILE)."""
    conf = lab.logdir / f"{iface}.conf"
    conf.write_text(text)
    conf.chmod(0o600)
    state = lab.logdir / f"state-{iface}"
    argv = [sys.executable, "-m", "wgdisco.lab.run_tunnel", str(conf)]
    if hostname:
        argv = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', hostname, *argv]
    proc = host.popen(argv, name=f"wgdisco-{iface}", env={
        "PYTHONPATH": str(PACKAGE_ROOT), "WGDISCO_STATE_DIR": str(state),
        "WGDISCO_HOSTS_FILE": str(hosts_file(lab, iface))})
    m = proc.wait_for(r"mesh \w+: our addresses (\S+), (\S+);", timeout=20, stream="stderr")
    up = proc.wait_for(r"interface \S+ up: public key (\S+),", timeout=20, stream="stderr")
    assert (state / f"{iface}.key").stat().st_mode & 0o777 == 0o600
    return proc, up.group(1), [m.group(1).split("/")[0], m.group(2).split("/")[0]]


def ping_ok(host: Host, target: str) -> bool:
    return host.run(["ping", "-c1", "-W1", target], check=False).returncode == 0


def hosts_file(lab: Lab, iface: str) -> Path:
    return lab.logdir / f"hosts-{iface}"


def with_hosts(lab: Lab, iface: str, command: str) -> list[str]:
    """``command`` (shell) in a private mount namespace where the member's hosts file is
    /etc/hosts, as it would be on a machine of its own: what glibc resolves there."""
    return ["unshare", "-m", "sh", "-c", f"mount --bind {hosts_file(lab, iface)} /etc/hosts && {command}"]


def resolved(lab: Lab, host: Host, iface: str, name: str) -> set[str]:
    out = host.run(with_hosts(lab, iface, f"getent ahosts {name} || true")).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_mesh_from_identical_configs_and_a_stranger_mesh(lab: Lab) -> None:
    lan = lab.lan("lan")
    tag = lab.prefix[3:9]
    hosts = [lab.host(f"n{i}") for i in range(NODES)]
    for i, h in enumerate(hosts):
        lab.attach(h, lan, f"10.1.0.{i + 1}/24", f"fd00:1::{i + 1}/64")
    hx = lab.host("x")
    lab.attach(hx, lan, "10.1.0.99/24", "fd00:1::99/64")
    outsider, outsider_key, outsider_addrs = start(lab, hx, f"x{tag}", OTHER, hostname="x")

    members = []
    for i, h in enumerate(hosts):
        members.append((h, *start(lab, h, f"m{i}{tag}", CONFIG, hostname=f"n{i}")))
    last_start = time.monotonic()

    addrs = [a for m in members for a in m[3]]
    assert len(set(addrs)) == 2 * NODES, addrs  # no address twice
    pending = {(i, j, fam) for i in range(NODES) for j in range(NODES) if i != j for fam in (0, 1)}
    while pending:
        for i, j, fam in sorted(pending):
            if ping_ok(members[i][0], members[j][3][fam]):
                pending.discard((i, j, fam))
        took = time.monotonic() - last_start
        assert took < LIMIT, f"not a full mesh after {took:.1f} s: {len(pending)} of {NODES * (NODES - 1) * 2} pings failing"
    full = time.monotonic() - last_start
    print(f"\n{NODES} nodes: full mesh (all {NODES * (NODES - 1)} directed pairs, IPv4 and IPv6) "
          f"{full:.2f} s after the last start")

    # names: every member resolves every member's host name to its derived addresses (the hosts
    # block, read by glibc), and a ping by name goes through; the other mesh's node is not there
    for i in (0, NODES - 1):
        h, iface = members[i][0], f"m{i}{tag}"
        deadline = time.monotonic() + 15  # the hosts block within 0.2 s of an admission; IPv6 after DAD
        for j in range(NODES):
            while resolved(lab, h, iface, f"n{j}") != set(members[j][3]):
                assert time.monotonic() < deadline, ((i, j), hosts_file(lab, iface).read_text())
                time.sleep(0.2)
        assert resolved(lab, h, iface, "x") == set()
        assert h.run(with_hosts(lab, iface, f"ping -c1 -W2 n{(i + 1) % NODES}"), check=False).returncode == 0
    # the node with another mesh key: no member lists it, no ping either way
    for h, proc, _public, _a in members:
        iface = re.search(r"interface (\S+) up", proc.stderr()).group(1)  # type: ignore[union-attr]
        dump = h.run(["wg", "show", iface, "dump"]).stdout
        assert outsider_key not in dump
        assert len(dump.strip().splitlines()) == NODES  # header + the other members
        assert "admitted to the mesh" in proc.stderr() and "Traceback" not in proc.stderr()
    # wgdisco status marks mesh peers and their derived addresses (valid against the schema)
    status = json.loads(members[0][0].run([sys.executable, "-m", "wgdisco", "status", f"m0{tag}", "--json"]).stdout)
    check(status, SCHEMA)
    assert status["mesh"]["addresses"] == members[0][3] and status["mesh"]["peers"] == NODES - 1
    assert status["mesh"]["name"] == "n0" and status["mesh"]["names"][0] == "n0"
    assert status["mesh"]["contested_names"] == [] and status["mesh"]["hosts_file"] == str(hosts_file(lab, f"m0{tag}"))
    for p in status["peers"]:
        other = next(m for m in members if m[2] == p["public_key"])
        assert p["mesh"] is True and p["mesh_addresses"] == other[3]
        assert p["mesh_name"] == f"n{members.index(other)}" and p["mesh_names"][0] == p["mesh_name"]
        assert sorted(p["allowed_ips"]) == sorted([f"{other[3][0]}/32", f"{other[3][1]}/128"])
    text = members[0][0].run([sys.executable, "-m", "wgdisco", "status", f"m0{tag}"]).stdout
    assert text.count("(mesh)") == NODES - 1 and "horse" not in text + json.dumps(status)
    assert not ping_ok(members[0][0], outsider_addrs[0])
    assert not ping_ok(hx, members[0][3][0])
    xdump = hx.run(["wg", "show", f"x{tag}", "dump"]).stdout
    assert len(xdump.strip().splitlines()) == 1  # it admitted nobody
    for text in (p.stderr() for _h, p, _k, _a in members):
        assert "horse" not in text  # the mesh key is never logged
    # mDNSFamily = auto (the default) on this dual-stack LAN: mDNS over IPv4 alone (AAAA records
    # travel in it), so every message is on the link once, not once per family
    for h, proc, _k, _a in members:
        assert mdns_ports(h) == {4}, h.run(["ss", "-ulpn"], check=False).stdout
        proc.wait_for(r"mDNS: published \S+ on \S+ \(IPv4\)", timeout=10, stream="stderr")


def mdns_ports(host: Host) -> set[int]:
    """The IP versions of the UDP sockets bound to port 5353 in ``host``'s namespace."""
    out = set()
    for version, table in ((4, "/proc/net/udp"), (6, "/proc/net/udp6")):
        for line in host.run(["cat", table]).stdout.splitlines()[1:]:
            if line.split()[1].endswith(":14E9"):
                out.add(version)
    return out


def test_mesh_mdns_family_both_meets_a_member_without_ipv4(lab: Lab) -> None:
    """mDNSFamily: a member that speaks mDNS over IPv6 only (``ipv6``, as a host without an IPv4
    address does under ``auto``) meets one configured with ``both``; each pings the other over
    both inner families (docs/configuration.md, mDNSFamily)."""
    lan = lab.lan("lan")
    tag = lab.prefix[3:9]
    hosts = [lab.host(f"n{i}") for i in range(2)]
    for i, h in enumerate(hosts):
        lab.attach(h, lan, f"10.1.0.{i + 1}/24", f"fd00:1::{i + 1}/64")
    both = start(lab, hosts[0], f"m0{tag}", CONFIG + "mDNSFamily = both\n", hostname="n0")
    six = start(lab, hosts[1], f"m1{tag}", CONFIG + "mDNSFamily = ipv6\n", hostname="n1")
    deadline = time.monotonic() + LIMIT
    while (mdns_ports(hosts[0]), mdns_ports(hosts[1])) != ({4, 6}, {6}):  # mDNS binds just after "up"
        assert time.monotonic() < deadline, (mdns_ports(hosts[0]), mdns_ports(hosts[1]))
        time.sleep(0.2)
    pending = {(a, b, fam) for a, b in ((0, 1), (1, 0)) for fam in (0, 1)}
    members = [both, six]
    while pending:
        for a, b, fam in sorted(pending):
            if ping_ok(hosts[a], members[b][2][fam]):
                pending.discard((a, b, fam))
        assert time.monotonic() < deadline, f"still failing after {LIMIT:.0f} s: {sorted(pending)}"
    both[0].wait_for(r"mDNS: published \S+ on \S+ \(IPv4 and IPv6\)", timeout=10, stream="stderr")
    six[0].wait_for(r"mDNS: published \S+ on \S+ \(IPv6\)", timeout=10, stream="stderr")


def test_mesh_member_stopped_is_removed_and_comes_back_with_the_same_key_and_address(lab: Lab) -> None:
    lan = lab.lan("lan")
    tag = lab.prefix[3:9]
    hosts = [lab.host(f"n{i}") for i in range(3)]
    for i, h in enumerate(hosts):
        lab.attach(h, lan, f"10.1.0.{i + 1}/24", f"fd00:1::{i + 1}/64")
    names = ["n0", "dup", "dup"]  # two members claim one name: it resolves to neither
    members = [start(lab, h, f"m{i}{tag}", CONFIG, hostname=names[i]) for i, h in enumerate(hosts)]
    (p0, _k0, a0), (_p1, _k1, a1), (p2, k2, a2) = members
    deadline = time.monotonic() + LIMIT
    while not ping_ok(hosts[0], a2[0]):
        assert time.monotonic() < deadline, "no first ping"
    deadline = time.monotonic() + 10
    while "claim the name 'dup'" not in p0.stderr():
        assert time.monotonic() < deadline, p0.stderr()
        time.sleep(0.2)
    deadline = time.monotonic() + 5  # the hosts file follows within COALESCE (daemon/names.py)
    while resolved(lab, hosts[0], f"m0{tag}", "dup") != set():
        assert time.monotonic() < deadline, hosts_file(lab, f"m0{tag}").read_text()
        time.sleep(0.2)
    status = json.loads(hosts[0].run([sys.executable, "-m", "wgdisco", "status", f"m0{tag}", "--json"]).stdout)
    check(status, SCHEMA)
    assert status["mesh"]["contested_names"] == ["dup"]
    assert all(p["mesh_name"] == "dup" and p["mesh_names"][0].startswith("wg-") for p in status["peers"])
    text = hosts[0].run([sys.executable, "-m", "wgdisco", "status", f"m0{tag}"]).stdout
    assert "contested names (claimed by two or more members, resolve to none): dup" in text
    stopped = time.monotonic()
    p2.stop(grace=5.0)  # SIGTERM: goodbyes
    p0.wait_for(r"removed from the mesh \(goodbye\)", timeout=10, stream="stderr")
    removed = time.monotonic() - stopped  # includes the daemon's shutdown
    assert removed < 10
    assert k2 not in hosts[0].run(["wg", "show", f"m0{tag}", "dump"]).stdout
    print(f"\nremoved {removed:.2f} s after SIGTERM")
    assert "wgdisco" not in hosts_file(lab, f"m2{tag}").read_text()  # its block went at shutdown
    deadline = time.monotonic() + 5  # the name is the remaining claimant's now
    while resolved(lab, hosts[0], f"m0{tag}", "dup") != set(a1):
        assert time.monotonic() < deadline, hosts_file(lab, f"m0{tag}").read_text()
        time.sleep(0.2)
    again, k2b, a2b = start(lab, hosts[2], f"m2{tag}", CONFIG, hostname=names[2])
    assert (k2b, a2b) == (k2, a2)  # the same identity (state directory) and so the same addresses
    back = time.monotonic()
    while not (ping_ok(hosts[0], a2[0]) and ping_ok(hosts[0], a2[1])):
        assert time.monotonic() - back < LIMIT, "not back"
    print(f"back {time.monotonic() - back:.2f} s after the restart")
    assert "Traceback" not in p0.stderr() + again.stderr()


# --- beyond the LAN: the mesh over unicast DNS-SD ------------------------------------------


def test_mesh_over_unicast_dns_sd_two_sites_behind_easy_nats_connect_directly(lab: Lab) -> None:
    """Two sites behind easy nftables NATs, Knot and STUN on the WAN (test_nat_lab's topology):
    byte-identical files with the mesh key plus the keys unicast DNS-SD needs (Domain,
    Nameserver, UpdateKey, STUN), nothing else. Each member publishes its record to Knot,
    browses the PTR set, admits the other by its MAC and punches: direct, over the NATs'
    reflexive addresses."""
    from tests.netns.test_nat_lab import DOMAIN, KNOT, STUN_A, STUN_B, internet
    from wgdisco.lab.knot import start_knot

    net = internet(lab)
    knot = start_knot(net.server, [KNOT])
    ha, hb = net.site("a", 1, "easy"), net.site("b", 2, "easy")
    tag = lab.prefix[3:9]
    text = CONFIG + (f"Domain = {DOMAIN}\nNameserver = {KNOT}\nUpdateKey = {knot.update_key}\n"
                     f"STUN = {STUN_A}:3478, {STUN_B}:3478\n")
    t0 = time.monotonic()
    pa, ka, aa = start(lab, ha, f"a{tag}", text, hostname="site-a")
    pb, kb, ab = start(lab, hb, f"b{tag}", text, hostname="site-b")
    for src, dst in ((ha, ab), (hb, aa)):
        for addr in dst:
            deadline = time.monotonic() + 30
            while not ping_ok(src, addr):
                assert time.monotonic() < deadline, f"no ping to {addr}\n{pa.stderr()}\n{pb.stderr()}"
    took = time.monotonic() - t0
    print(f"\ntwo sites over Knot: every pair pings {took:.2f} s after the first start")
    dump_a = ha.run(["wg", "show", f"a{tag}", "dump"]).stdout
    dump_b = hb.run(["wg", "show", f"b{tag}", "dump"]).stdout
    assert f"{kb}\t(none)\t203.0.113.2:51820\t" in dump_a, dump_a  # direct: the other NAT's address
    assert f"{ka}\t(none)\t203.0.113.1:51820\t" in dump_b, dump_b
    status = json.loads(ha.run([sys.executable, "-m", "wgdisco", "status", f"a{tag}", "--json"]).stdout)
    check(status, SCHEMA)
    (peer,) = status["peers"]
    assert peer["mesh"] and peer["path"] == "direct" and peer["mesh_name"] == "site-b"
    # the hosts block follows an admission within 0.2 s; getaddrinfo returns the IPv6 address only
    # once our own derived IPv6 address is usable (AI_ADDRCONFIG: not while DAD still runs on it)
    deadline = time.monotonic() + 15
    while resolved(lab, ha, f"a{tag}", "site-b") != set(ab):
        assert time.monotonic() < deadline, (ab, hosts_file(lab, f"a{tag}").read_text())
        time.sleep(0.2)
    # the record in Knot carries the mesh id, the counter, the name and the MAC
    label = keys.key_to_base32(keys.key_from_base64(ka))
    txt = knot.dig(net.server, f"{label}._wireguard._udp.{DOMAIN}.", "TXT")
    assert all(f'"{k}=' in txt for k in ("mesh", "mc", "mac", "name", "cand")), txt
    assert "horse" not in pa.stderr() + pb.stderr() + txt


# --- forged and replayed records ------------------------------------------------------------


def mesh_txt(mesh: "Mesh", public: str, cands: list[str], counter: int, name: str = "",
             allowed: list[str] | None = None) -> list[str]:
    """The TXT strings of a mesh record with a valid MAC (what a member, who has the key, can make)."""
    cand = ",".join(cands)
    txt = ["txtvers=1", f"pub={public}", "probe=1", f"cand={cand}", f"mesh={mesh.id}", f"mc={counter}",
           f"mac={mesh.mac(keys.key_from_base64(public), cand, counter, name)}"]
    if allowed:
        txt.insert(2, "allowed=" + ",".join(allowed))
    if name:
        txt.append(f"name={name}")
    return txt


def send_record(host: Host, iface: str, public: str, address: str, txt: list[str]) -> None:
    spec = json.dumps({"public": public, "port": 51820, "address": address, "txt": txt})
    host.run([sys.executable, "-m", "wgdisco.lab.mdns_flood", "record", iface, spec, "3"],
             env={"PYTHONPATH": str(PACKAGE_ROOT)})


def test_mesh_forged_and_replayed_records_hijack_no_address_and_move_no_live_path(lab: Lab) -> None:
    """Members v (the victim) and a (the observer); z holds the mesh key (a malicious member) but
    runs no daemon: it crafts mDNS records with mdns_flood. v moves to a new LAN address and z
    takes v's old one. Then z (1) replays v's old record (valid MAC, lower counter), (2) forges
    a newer record under v's key pointing at z (a valid MAC: z has the mesh key), (3) publishes
    a record for a key of its own that claims v's derived addresses in allowed= and v's name.
    On a: v's path stays where v is, v's addresses and name stay v's, pings go on."""
    from wgdisco.proto.mesh import Mesh

    lan = lab.lan("lan")
    hv, ha, hz = lab.host("v"), lab.host("a"), lab.host("z")
    v_if = lab.attach(hv, lan, "10.1.0.1/24")
    lab.attach(ha, lan, "10.1.0.2/24")
    z_if = lab.attach(hz, lan, "10.1.0.3/24")
    tag = lab.prefix[3:9]
    pv, kv, av = start(lab, hv, f"v{tag}", CONFIG, hostname="victim")
    pa, _ka, _aa = start(lab, ha, f"a{tag}", CONFIG, hostname="observer")
    deadline = time.monotonic() + LIMIT
    while not ping_ok(ha, av[0]):
        assert time.monotonic() < deadline, "no first ping"
    mesh = Mesh("correct horse battery staple")
    old_counter = int(time.time() * 1000) - 1  # lower than any record v has published since it started

    # v moves: a new address, the old one goes (and z takes it)
    hv.ip("addr", "del", "10.1.0.1/24", "dev", v_if)  # first: deleting a primary takes its secondaries along
    hv.add_addr(v_if, "10.1.0.50/24")
    hz.add_addr(z_if, "10.1.0.1/24")

    def endpoint_of_v() -> str:
        line = next((x for x in ha.run(["wg", "show", f"a{tag}", "dump"]).stdout.splitlines() if x.startswith(kv)), "")
        return line.split("\t")[2] if line else "(not a peer)"

    deadline = time.monotonic() + 20
    while not (ping_ok(ha, av[0]) and endpoint_of_v() == "10.1.0.50:51820"):
        assert time.monotonic() < deadline, f"a did not follow v: {endpoint_of_v()}\n{pa.stderr()}"
    # (1) the replay: v's old record (its old address, an old counter), from v's old address
    send_record(hz, z_if, kv, "10.1.0.1", mesh_txt(mesh, kv, ["10.1.0.1:51820"], old_counter, "victim"))
    # (2) a forged newer record under v's key, pointing at z
    send_record(hz, z_if, kv, "10.1.0.1", mesh_txt(mesh, kv, ["10.1.0.1:51820"], old_counter + 10**9, "victim"))
    # (3) z's own key claiming v's addresses and name
    zpriv = keys.generate_private_key(os.urandom(32))
    kz = keys.key_to_base64(keys.public_key(zpriv))
    send_record(hz, z_if, kz, "10.1.0.3",
                mesh_txt(mesh, kz, ["10.1.0.3:51820"], old_counter, "victim", allowed=[f"{av[0]}/32", f"{av[1]}/128"]))
    time.sleep(3)  # probes to z's address time out; nothing must follow them
    for _ in range(5):
        assert ping_ok(ha, av[0]) and ping_ok(ha, av[1])
    assert endpoint_of_v() == "10.1.0.50:51820"  # the live path never moved
    dump = {x.split("\t")[0]: x.split("\t") for x in ha.run(["wg", "show", f"a{tag}", "dump"]).stdout.splitlines()[1:]}
    assert sorted(dump[kv][3].split(",")) == sorted([f"{av[0]}/32", f"{av[1]}/128"])
    if kz in dump:  # admitted (it has a valid MAC), but only with addresses computed from its own key
        assert av[0] not in dump[kz][3] and av[1] not in dump[kz][3]
    assert resolved(lab, ha, f"a{tag}", "victim") == set()  # claimed twice now: nobody's
    assert resolved(lab, ha, f"a{tag}", "observer") == set(_aa)
    pa.stop(grace=5.0)
    summary = pa.stderr()
    assert re.search(r"mesh-records-replayed=[1-9]", summary), summary[-2000:]
    assert "Traceback" not in summary + pv.stderr()


def test_avahi_browse_shows_every_member_with_pub(lab: Lab) -> None:
    from wgdisco.lab.avahi import Avahi, parse_browse, require_avahi

    require_avahi()
    lan = lab.lan("lan")
    hosts = [lab.host(f"n{i}") for i in range(3)]
    for i, h in enumerate(hosts):
        lab.attach(h, lan, f"10.1.0.{i + 1}/24", f"fd00:1::{i + 1}/64")
    hv = lab.host("v")
    ifv = lab.attach(hv, lan, "10.1.0.9/24", "fd00:1::9/64")
    tag = lab.prefix[3:9]
    members = [start(lab, h, f"m{i}{tag}", CONFIG, hostname=f"n{i}") for i, h in enumerate(hosts)]
    avahi = Avahi(hv, ifv).start()
    want = {keys.key_to_base32(keys.key_from_base64(k)): k for _p, k, _a in members}
    deadline = time.monotonic() + 15
    while True:
        entries = parse_browse(avahi.run(["avahi-browse", "-rpt", "_wireguard._udp"], check=False).stdout)
        seen = {e["name"]: e for e in entries if e["name"] in want}
        if len(seen) == len(want) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert seen.keys() == want.keys(), entries
    for label, e in seen.items():
        txt = e["txt"]
        assert f"pub={want[label]}" in txt and e["port"] == 51820, txt  # type: ignore[operator]
        assert any(t.startswith("mesh=") for t in txt) and any(t.startswith("name=n") for t in txt)  # type: ignore[union-attr]
