"""Zero-config mesh at scale (issue 15): N wgdisco daemons on one LAN bridge, started from
byte-identical config files (ListenPort + MeshKey only, the documented defaults otherwise).

    sudo .venv/bin/python bench/mesh.py --nodes 40 [--runs 1] [--idle 60] [--profile 30] [--out FILE]

What it measures, per run:

- **time to full mesh**: from the moment the last daemon logged "interface … up" (``from_up``;
  also from the launch of the first daemon, ``from_launch``) until every directed pair
  (N·(N-1) of them) has carried a datagram over IPv4 *and* over IPv6 on the members' derived
  addresses, both ways (request and echo). All daemons are launched at once (no stagger).
- **idle CPU % and RSS per daemon** after the mesh is full: CPU over the last ``--cpu-window``
  seconds of ``--idle`` seconds (from /proc/PID/stat, utime+stime, one core = 100 %), RSS
  (/proc/PID/status VmRSS) at the end; min/median/max over the daemons; load average.
- optionally (``--profile S``) a py-spy profile of daemon 0 for the first S seconds after the
  launch (``--format raw`` collapsed stacks); the top own-time functions are printed and saved.

The reachability check is one process (this one), not N·(N-1) pings: for each namespace it
opens one UDP socket inside that namespace (setns(2) before socket(2); a socket stays in the
namespace it was made in), bound to [::]:7 dual stack. A still-pending (i, j, family) pair
gets a 12-byte request from node i's socket to node j's derived address; node j's socket (same
process, one selector) echoes it, and the echo arriving back at node i marks the pair done. A
request to a member with no session makes the daemon start a handshake, as a ping would, and
waits in the daemon (staged, as in wireguard-go) until the session is up, so its echo marks
the moment the pair became reachable. A request to a member not admitted yet is answered by
the daemon with ICMP "unreachable" (the socket reads it from its error queue, IP_RECVERR) and
is asked again 0.5 s later; a request not refused is repeated only every 2 s (in case it was
lost). Asking every pending pair every 0.5 s instead had each daemon replay ~15 staged requests
per pair at its handshake: 121,730 datagrams to tunnel ports before a 40-member mesh was full
(b41e1b9), load that the bench made and the mesh then had to carry. The check runs at nice -10
once the daemons are launched (they keep 0): it is the instrument, and at the default priority a
saturated machine slowed its rounds to ~10 s at 100 members. For a pair left it repeats the check
for that pair with the kernels' counters read and both tunnel interfaces tapped, before asking the
daemons anything (``check_again_5s`` in the diagnosis).

Run it under the quiet lock (docs/performance.md): ``flock /tmp/wgdisco-quiet.lock …``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import json
import os
import re
import selectors
import socket
import statistics
import struct
import subprocess
import sys
import time
from typing import Any, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wgdisco.lab import Lab  # noqa: E402
from wgdisco.lab.wg import PACKAGE_ROOT  # noqa: E402
from wgdisco.proto import icmp  # noqa: E402

CONFIG = "[Interface]\nListenPort = 51820\n\n[Discovery]\nMeshKey = correct horse battery staple\n"
ECHO_PORT = 7
ROUND = 0.5
CHECK_NICE = -10  # the check's own priority, set after the daemons are launched (they keep 0): see one_run
RESEND = 4  # a request not refused (staged in the daemon until its handshake) is repeated every RESEND rounds
IP_RECVERR, IPV6_RECVERR = 11, 25  # linux/in.h, linux/in6.h
CLK_TCK = os.sysconf("SC_CLK_TCK")
_libc = ctypes.CDLL(None, use_errno=True)


CLONE_NEWNET = 0x40000000
_HOME_NS = os.open("/proc/self/ns/net", os.O_RDONLY)  # where this process started


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), f"setns {what}")


@contextlib.contextmanager
def in_netns(ns: str) -> Iterator[None]:
    """This process inside network namespace ``ns`` meanwhile (a socket made there stays there),
    then back where it started."""
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        _setns(fd, ns)
    finally:
        os.close(fd)
    try:
        yield
    finally:
        _setns(_HOME_NS, "back")


def socket_in(ns: str) -> socket.socket:
    """A dual-stack UDP socket on [::]:ECHO_PORT inside network namespace ``ns``."""
    with in_netns(ns):
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        # ICMP "unreachable" for a request (a member not admitted yet) comes back on the error
        # queue with the request in it: that pair is asked again next round (reach_all)
        s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
        s.bind(("::", ECHO_PORT))
        s.setblocking(False)
        return s


def tap_in(ns: str, iface: str) -> socket.socket:
    """A packet socket on ``iface`` inside namespace ``ns`` (AF_PACKET, cooked: IP packets as the
    kernel sees them in both directions), non-blocking."""
    with in_netns(ns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0003))  # ETH_P_ALL
        s.bind((iface, 0))
        s.setblocking(False)
        return s


def _udp6_checksum_ok(pkt: bytes) -> bool | None:
    """Whether an IPv6/UDP packet's checksum verifies (None: not IPv6/UDP, or cut short)."""
    if len(pkt) < 48 or pkt[0] >> 4 != 6 or pkt[6] != 17:
        return None
    length = int.from_bytes(pkt[4:6], "big")
    if len(pkt) < 40 + length:
        return None
    return icmp.checksum(pkt[8:40] + length.to_bytes(4, "big") + b"\0\0\0\x11" + pkt[40:40 + length]) == 0


def tapped(taps: dict[str, socket.socket]) -> dict[str, list[str]]:
    """What each tap saw of the check's IPv6/UDP datagrams (port 7): direction, length, whether the
    checksum verifies, and the packet in hex (first few of each). An outgoing packet carries the
    partial sum the kernel leaves to a TUN reader with checksum offload: "BAD" is expected there."""
    out: dict[str, list[str]] = {}
    for name, s in taps.items():
        rows = out.setdefault(name, [])
        while True:
            try:
                pkt, addr = s.recvfrom(2048)
            except BlockingIOError:
                break
            if len(pkt) >= 44 and pkt[0] >> 4 == 6 and pkt[6] == 17 and 7 in (
                    int.from_bytes(pkt[40:42], "big"), int.from_bytes(pkt[42:44], "big")):
                if len(rows) < 8:
                    rows.append(f"{'out' if addr[2] == socket.PACKET_OUTGOING else 'in'} len {len(pkt)} "
                                f"checksum {'ok' if _udp6_checksum_ok(pkt) else 'BAD'} {pkt.hex()}")
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def cpu_seconds_main(pid: int) -> float:
    """The main thread's CPU (the asyncio loop: mDNS, discovery, control), without the data plane."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    m = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) / 1024 if m else float("nan")


def bridge_counts(lan: Any) -> list[int]:
    """Frames counted on the bridge so far: mDNS, to a tunnel port, from a tunnel port elsewhere."""
    return [int(x) for x in re.findall(r"counter packets (\d+)", lan.run(["nft", "list", "table", "bridge", "count"]).stdout)]


# what the datagrams to tunnel ports are, by their first byte (proto/classify.py): counted apart
KINDS = (("handshake initiation", "0x01"), ("handshake response", "0x02"), ("cookie reply", "0x03"),
         ("transport data", "0x04"), ("probe request", "0xf1"), ("probe response", "0xf2"))
MDNS_KINDS = [(f"mDNS query over IPv{v}", f"ether type {eth} udp dport 5353 @th,80,1 0")
              for v, eth in ((4, "ip"), (6, "ip6"))] + [
    (f"mDNS response over IPv{v}, {dst}, {what}", f"ether type {eth} {fam} daddr {op}{group} udp dport 5353 @th,80,1 1 @th,112,16 {count}")
    for v, eth, fam, group in ((4, "ip", "ip", "224.0.0.251"), (6, "ip6", "ip6", "ff02::fb"))
    for dst, op in (("multicast", ""), ("unicast", "!= "))
    for what, count in (("1 answer", "1"), ("more answers", "> 1"))]
KINDS_TABLE = ("table bridge kinds {\n chain pre {\n  type filter hook prerouting priority 1;\n"
               + "".join(f"  udp dport 51820 @th,64,8 {v} counter\n" for _, v in KINDS)
               + "".join(f"  {rule} counter\n" for _, rule in MDNS_KINDS) + " }\n}\n")


def kind_counts(lan: Any) -> dict[str, int]:
    """Datagrams to tunnel ports so far, by kind (KINDS); STUN and the rest are not counted."""
    counts = re.findall(r"counter packets (\d+)", lan.run(["nft", "list", "table", "bridge", "kinds"]).stdout)
    return {name: int(c) for (name, _), c in zip(KINDS + tuple(MDNS_KINDS), counts)}


def spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def reach_all(socks: list[socket.socket], addrs: list[list[str]], limit: float,
              done_at: list[float] | None = None, left_out: list | None = None,
              done_pairs: list | None = None, history: dict | None = None,
              only: list[tuple[int, int, int]] | None = None) -> tuple[float | None, int]:
    """Until every (i, j, family) pair echoed, or ``limit`` seconds: (seconds, pairs left).
    ``done_at`` collects the seconds at which each pair-family echoed (their spread shows
    whether a few pairs wait for a retry, or all arrive late). ``history`` gets, for each pair
    left, what its requests met: sent, refused (an ICMP error from the requester's daemon, or a
    send error), seen by the target's socket (then echoed), echo send errors, and the seconds of
    the last refusal and of the last request the target saw."""
    n = len(socks)
    mapped = [[a if ":" in a else f"::ffff:{a}" for a in pair] for pair in addrs]
    pending = set(only) if only is not None else {(i, j, f) for i in range(n) for j in range(n) if i != j for f in (0, 1)}
    sel = selectors.DefaultSelector()
    for i, s in enumerate(socks):
        sel.register(s, selectors.EVENT_READ, i)
    start = time.monotonic()
    next_round = start
    rounds = 0
    refused = set(pending)  # asked again every round; the others every RESEND rounds
    seen: dict[tuple[int, int, int], dict[str, float]] = collections.defaultdict(
        lambda: {"sent": 0, "refused": 0, "seen_by_target": 0, "echo_send_errors": 0, "echo_refused": 0,
                 "echo_refusal": "", "last_refused_s": -1.0, "last_seen_s": -1.0})
    wakeups = empty_wakeups = 0

    def refuse(pair: tuple[int, int, int]) -> None:
        """``pair``'s request was refused (a send error or an ICMP error): asked again next round."""
        refused.add(pair)
        seen[pair]["refused"] += 1
        seen[pair]["last_refused_s"] = round(time.monotonic() - start, 2)

    def drain_errors(sock: Any) -> int:
        """The socket's error queue (ICMP errors about what it sent, IP_RECVERR): a refused
        request is asked again next round, a refused echo counted; how many were read."""
        read = 0
        while True:
            try:
                quoted, anc, _, _ = sock.recvmsg(64, 512, socket.MSG_ERRQUEUE)
            except OSError:
                return read
            read += 1
            if len(quoted) >= 6 and quoted[:1] == b"Q":
                refuse(struct.unpack("!HHB", quoted[1:6]))
            elif len(quoted) >= 6 and quoted[:1] == b"R":  # an echo refused on its way back
                pair = struct.unpack("!HHB", quoted[1:6])
                seen[pair]["echo_refused"] += 1
                if anc:  # struct sock_extended_err: errno, origin, type, code
                    errno_, origin, icmp_type, icmp_code = struct.unpack_from("=IBBB", anc[0][2])
                    seen[pair]["echo_refusal"] = f"errno {errno_} origin {origin} type {icmp_type} code {icmp_code}"

    while pending:
        now = time.monotonic()
        if now - start > limit:
            if left_out is not None:
                left_out.extend(sorted(pending))
            if history is not None:
                history.update({f"{i}->{j} {('ipv4', 'ipv6')[f]}": seen[(i, j, f)] for i, j, f in sorted(pending)[:10]})
                history["check loop"] = {"wakeups": wakeups, "empty_wakeups": empty_wakeups, "rounds": rounds}
            return None, len(pending)
        if now >= next_round:
            for i, j, f in pending:
                if (i, j, f) not in refused and rounds % RESEND:
                    continue
                refused.discard((i, j, f))
                seen[(i, j, f)]["sent"] += 1
                try:
                    socks[i].sendto(struct.pack("!cHHB", b"Q", i, j, f) + b"wgdisco", (mapped[j][f], ECHO_PORT))
                except OSError:
                    refuse((i, j, f))  # no route yet
            rounds += 1
            next_round = now + ROUND
        ready = sel.select(max(0.0, next_round - time.monotonic()))
        wakeups += 1
        got_any = False
        for key, _ in ready:
            sock = key.fileobj
            read_here = 0
            while True:
                try:
                    data, src = sock.recvfrom(64)  # type: ignore[union-attr]
                except BlockingIOError:
                    if not read_here:
                        # readable for its error queue alone (the error itself already taken): without
                        # this read the selector reports the socket ready again at once, a spin
                        read_here = drain_errors(sock)
                    break
                except OSError:  # an ICMP error: the requests it quotes are asked again next round
                    read_here += 1
                    drain_errors(sock)
                    continue
                read_here += 1
                if len(data) < 6:
                    continue
                kind, i, j, f = struct.unpack("!cHHB", data[:6])
                if kind == b"Q":
                    seen[(i, j, f)]["seen_by_target"] += 1
                    seen[(i, j, f)]["last_seen_s"] = round(time.monotonic() - start, 2)
                    try:
                        sock.sendto(b"R" + data[1:], src)  # type: ignore[union-attr]
                    except OSError:
                        seen[(i, j, f)]["echo_send_errors"] += 1  # no route back yet: the requester asks again
                elif kind == b"R" and (i, j, f) in pending:
                    pending.discard((i, j, f))
                    if done_at is not None:
                        done_at.append(time.monotonic() - start)
                    if done_pairs is not None:
                        done_pairs.append((round(time.monotonic() - start, 2), i, j, ("ipv4", "ipv6")[f]))
            got_any = got_any or read_here > 0
        if ready and not got_any:
            empty_wakeups += 1  # readable, yet nothing to read: a spin, if it repeats
    return time.monotonic() - start, 0


def py_spy_summary(raw: Path, top: int = 25) -> list[tuple[str, float, float]]:
    """(function, own %, total %) from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        c = int(count)
        samples += c
        frames = [re.sub(r" \(.*?:\d+\)$", "", fr.strip()) + " " + (re.search(r"\(([^()]*?)(?::\d+)?\)$", fr) or [None, ""])[1].split("/")[-1]
                  for fr in stack.split(";")]
        own[frames[-1]] += c
        for fr in set(frames):
            total[fr] += c
    if not samples:
        return []
    return [(fn, 100 * c / samples, 100 * total[fn] / samples) for fn, c in own.most_common(top)]


def _snapshot(host: Any, iface: str, daemon: bool = True) -> dict[str, int]:
    """The kernel's IPv6/UDP counters of a host (/proc/net/snmp6, /proc/net/snmp "Udp:") and the
    daemon's drops, flattened: what a packet that vanished might have incremented (``daemon``
    False: the kernel's only, nothing asked of the daemon)."""
    out: dict[str, int] = {}
    for line in host.run(["cat", "/proc/net/snmp6"], check=False).stdout.splitlines():
        k, _, v = line.partition(" ")
        if v.strip().isdigit():
            out[k] = int(v)
    snmp = host.run(["cat", "/proc/net/snmp"], check=False).stdout.splitlines()
    for names, values in zip(snmp[::2], snmp[1::2]):
        if names.startswith(("Udp:", "Ip:")):
            for k, v in zip(names.split()[1:], values.split()[1:]):
                out[names.split(":")[0] + k] = int(v) if v.lstrip("-").isdigit() else 0
    if not daemon:
        return out
    st = json.loads(host.run([sys.executable, "-m", "wgdisco", "status", iface, "--json"], check=False).stdout or "{}")
    for k, v in (st.get("dropped") or {}).items():
        out["wgdisco-dropped-" + k] = v
    for p in st.get("peers", []):
        out["wgdisco-rx-" + p["public_key"][:8]] = p.get("rx_bytes", 0)
        out["wgdisco-tx-" + p["public_key"][:8]] = p.get("tx_bytes", 0)
    return out


def probe_pair(hosts: list, tag: str, addrs: list[list[str]], i: int, j: int, fam: int) -> dict[str, object]:
    """A pair left: five pings from i to j's mesh address of the family, and what moved on both
    sides meanwhile (kernel IPv6/UDP counters, the daemons' drops and transfer counters), so the
    place where the packets die shows up."""
    before = [_snapshot(hosts[k], f"m{k}{tag}") for k in (i, j)]
    ping = hosts[i].run(["ping", "-c", "5", "-i", "0.2", "-W", "1", addrs[j][fam]], check=False)
    after = [_snapshot(hosts[k], f"m{k}{tag}") for k in (i, j)]
    moved = [{k: v - b.get(k, 0) for k, v in a.items() if v != b.get(k, 0)} for b, a in zip(before, after)]
    return {"ping_rc": ping.returncode, "ping_tail": ping.stdout.strip().splitlines()[-2:],
            f"m{i} moved": moved[0], f"m{j} moved": moved[1]}


def echo_once(socks: list[socket.socket], addrs: list[list[str]], i: int, j: int, fam: int) -> dict[str, object]:
    """A pair left, step by step with the check's own sockets: i's request, whether (and from
    what source) j's socket gets it, j's reply (a send error?), whether i's socket gets it."""
    dest = addrs[j][fam] if fam else f"::ffff:{addrs[j][fam]}"

    def wait(sock: socket.socket, seconds: float = 1.0) -> object:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                return sock.recvfrom(64)
            except BlockingIOError:
                time.sleep(0.01)
            except OSError as e:
                return f"error {e}"
        return "nothing"

    try:
        socks[i].sendto(struct.pack("!cHHB", b"Q", i, j, fam) + b"diag", (dest, ECHO_PORT))
    except OSError as e:
        return {"request_send_error": str(e)}
    got = wait(socks[j])
    out: dict[str, object] = {"request_at_target": str(got)}
    if isinstance(got, tuple):
        try:
            socks[j].sendto(b"R" + got[0][1:], got[1])
        except OSError as e:
            out["reply_send_error"] = str(e)
        out["reply_at_requester"] = str(wait(socks[i]))
    return out


def diag(hosts: list, tag: str, addrs: list[list[str]], socks: list[socket.socket], path: Path,
         left: list[tuple[int, int, int]] = ()) -> None:
    """Why not: each member's status (mesh peers, peers with a handshake, paths, counters); for
    each pair left, what each side holds of the other (wg show dump: endpoint, allowed IPs,
    handshake, transfer), its status line, its drops, and the routes to the other's address."""
    pairs = []
    # first, the check's own way once more, for these pairs only and before anything else touches
    # the daemons (status, wg show, ping): does a pair left by the check answer it now?
    few = list(dict.fromkeys(left))[:6]
    members = sorted({k for i, j, _ in few for k in (i, j)})

    def check_again() -> dict[str, object]:
        """reach_all for the pairs left, 5 s, with the kernel counters that moved meanwhile (read
        without asking the daemons anything)."""
        met: dict = {}
        taps = {}
        for k in members:
            try:
                taps[f"m{k}"] = tap_in(hosts[k].ns, f"m{k}{tag}")
            except OSError:
                pass
        before = {k: _snapshot(hosts[k], "", daemon=False) for k in members}
        took, n_left = reach_all(socks, addrs, 5.0, history=met, only=few)
        after = {k: _snapshot(hosts[k], "", daemon=False) for k in members}
        seen_on_tun = tapped(taps)
        for t in taps.values():
            t.close()
        moved = {f"m{k}": {c: v - before[k].get(c, 0) for c, v in after[k].items() if v != before[k].get(c, 0)}
                 for k in members}
        return {"done_after_s": took, "left": n_left, "met": met, "kernel_moved": moved, "on_the_tunnel": seen_on_tun}

    first = check_again()  # before anything asks the daemons (status, wg show) or pings
    for i, j, fam in few:
        row: dict[str, object] = {"from": i, "to": j, "family": ("ipv4", "ipv6")[fam], "check_again_5s": first}
        for a, b in ((i, j), (j, i)):
            st = json.loads(hosts[a].run([sys.executable, "-m", "wgdisco", "status", f"m{a}{tag}", "--json"],
                                         check=False).stdout or "{}")
            dump = hosts[a].run(["wg", "show", f"m{a}{tag}", "dump"], check=False).stdout.splitlines()
            mine = [line for line in dump[1:] if any(addrs[b][f] + "/" in line for f in (0, 1))]
            peer = [p for p in st.get("peers", []) if addrs[b][0] in str(p.get("allowed_ips"))
                    or addrs[b][1] in str(p.get("allowed_ips"))]
            route = hosts[a].run(["ip", "route", "get", addrs[b][fam]], check=False).stdout.strip()
            row[f"m{a} about m{b}"] = {"wg_dump": mine, "status": peer, "dropped": st.get("dropped"),
                                      "route": route, "addrs_of_other": addrs[b]}
        row["check_again_after_status"] = check_again()  # did asking the daemons change anything?
        try:
            before = [_snapshot(hosts[k], f"m{k}{tag}") for k in (i, j)]
            row["echo_once"] = echo_once(socks, addrs, i, j, fam)
            after = [_snapshot(hosts[k], f"m{k}{tag}") for k in (i, j)]
            row["echo_once"][f"m{i} moved"], row["echo_once"][f"m{j} moved"] = (  # e.g. Udp6InCsumErrors
                {k: v - b.get(k, 0) for k, v in a.items() if v != b.get(k, 0)} for b, a in zip(before, after))
        except Exception as e:  # a diagnosis must not lose the rest of the record
            row["echo_once"] = f"failed: {e!r}"
        row["probe"] = probe_pair(hosts, tag, addrs, i, j, fam)
        pairs.append(row)
    rows = []
    for i, h in enumerate(hosts):
        r = h.run([sys.executable, "-m", "wgdisco", "status", f"m{i}{tag}", "--json"], check=False)
        try:
            st = json.loads(r.stdout)
        except ValueError:
            rows.append({"node": i, "error": r.stderr[-300:]})
            continue
        peers = st.get("peers", [])
        rows.append({"node": i, "mesh_peers": st["mesh"]["peers"],
                     "handshaken": sum(1 for p in peers if p["latest_handshake"]),
                     "paths": collections.Counter(p["path"] for p in peers),
                     "reasons": collections.Counter(p["reason"] for p in peers if p["reason"]),
                     "counters": st.get("counters") or st.get("discovery") or {}})
    path.write_text(json.dumps({"members": rows, "pairs_left": pairs}, indent=1, default=str))
    print(f"diagnosis in {path}: mesh peers per node {[r.get('mesh_peers') for r in rows]}; "
          f"with a handshake {[r.get('handshaken') for r in rows]}", flush=True)


def socket_drops(hosts: list) -> dict[str, int]:  # type: ignore[type-arg]
    """UDP datagrams the kernel dropped at a full receive buffer (/proc/net/udp{,6} "drops"),
    summed over the hosts, for the mDNS and tunnel ports."""
    out: dict = {"mdns": 0, "tunnel": 0}
    ports = {0x14E9: "mdns", 51820: "tunnel"}
    for k, h in enumerate(hosts):
        text = h.run(["cat", "/proc/net/udp", "/proc/net/udp6"], check=False).stdout
        for line in text.splitlines():
            f = line.split()
            if len(f) > 12 and ":" in f[1] and f[0].rstrip(":").isdigit():
                port = int(f[1].rsplit(":", 1)[1], 16)
                if port in ports:
                    out[ports[port]] += int(f[-1])
                    if k == 0:  # host 0's sockets one by one: local address, receive queue, drops
                        out.setdefault("host0", []).append((f[1], f[4].split(":")[1], f[-1]))
    return out


COUNTED = ("probes-", "triggered-probes", "pmtu-", "candidate-probes", "probe-drop-",
           "handshake-tries", "probe-answers-late", "initiations-crossed", "mesh-peers-admitted", "mdns-", "mesh-records-")


def shutdown_counters(logs: list[str]) -> dict[str, int]:
    """The probe-related counters of the daemons' shutdown lines, summed over the daemons."""
    total: collections.Counter[str] = collections.Counter()
    for log in logs:
        for line in log.splitlines():
            if "discovery: " not in line and "nat traversal: " not in line:
                continue
            for m in re.finditer(r"([a-z][\w-]*)=(\d+)", line):
                if m.group(1).startswith(COUNTED) or m.group(1) == "sent":
                    total["probes sent" if m.group(1) == "sent" else m.group(1)] += int(m.group(2))
    return dict(sorted(total.items()))


NEIGH = [f"/proc/sys/net/{fam}/neigh/default/gc_thresh{i}" for fam in ("ipv4", "ipv6") for i in (1, 2, 3)]


class NeighbourRoom:
    """The kernel's ARP and ND tables are one table each for ALL network namespaces (the
    gc_thresh sysctls exist only in the initial namespace; default hard limit gc_thresh3 = 1024
    entries). N lab hosts on one LAN, each talking to N-1 LAN neighbours and N-1 tunnel
    destinations (a NOARP device still makes an entry), need about 2·N·(N-1) entries per
    family: 3,120 for 40 nodes. Past the limit the kernel logs "neighbor table overflow" and
    sends fail with ENOBUFS, in every namespace. A real LAN of 40 machines has 40 small
    tables, so for the run the limits are raised (never lowered) and put back afterwards if
    nobody changed them meanwhile."""

    def __init__(self, nodes: int) -> None:
        need = 4 * nodes * nodes
        self.wanted = {p: v for p, v in zip(NEIGH, [need // 4, need // 2, need] * 2)}
        self.saved: dict[str, int] = {}

    def __enter__(self) -> "NeighbourRoom":
        for path, value in self.wanted.items():
            old = int(Path(path).read_text())
            if old < value:
                self.saved[path] = old
                Path(path).write_text(str(value))
        return self

    def __exit__(self, *exc: object) -> None:
        for path, old in self.saved.items():
            if int(Path(path).read_text()) == self.wanted[path]:
                Path(path).write_text(str(old))


PROFILE_IDLE = bool(os.environ.get("WGDISCO_PROFILE_IDLE"))  # profile the idle window instead


def start_spy(pid: int, seconds: float, raw: Path) -> subprocess.Popen[bytes]:
    """py-spy on ``pid``: samples only while a thread holds the GIL (--gil), so the counts are
    Python work, not time spent waiting in epoll or on a lock."""
    return subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--format", "raw", "--gil",
                             "-r", "100", "-d", str(int(seconds)), "-o", str(raw), "-p", str(pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def one_run(n: int, limit: float, idle: float, window: float, profile: float, out_dir: Path) -> dict[str, object]:
    with Lab(keep_logs=bool(os.environ.get("WGDISCO_KEEP_LOGS"))) as lab:
        lan = lab.lan("lan")
        tag = lab.prefix[3:9]
        hosts = [lab.host(f"n{i}") for i in range(n)]
        for i, h in enumerate(hosts):
            lab.attach(h, lan, f"10.1.{i // 200}.{i % 200 + 1}/16", f"fd00:1::{i + 1}/64")
        socks = [socket_in(h.ns) for h in hosts]
        # frames sent onto the bridge, counted as they enter it (nftables bridge prerouting)
        lan.run(["nft", "-f", "-"], input="table bridge count {\n chain pre {\n"
                "  type filter hook prerouting priority 0;\n"
                "  udp dport 5353 counter\n  udp dport 51820 counter\n  udp sport 51820 udp dport != 51820 counter\n }\n}\n")
        lan.run(["nft", "-f", "-"], input=KINDS_TABLE)
        conf = lab.logdir / "mesh.conf"
        conf.write_text(CONFIG)
        conf.chmod(0o600)
        launched = time.monotonic()
        procs = []
        for i, h in enumerate(hosts):
            c = lab.logdir / f"m{i}{tag}.conf"
            c.write_bytes(conf.read_bytes())  # byte-identical; the file's stem names the interface
            c.chmod(0o600)
            # each in its own UTS namespace with its own host name (the default member name), its
            # own hosts file (WGDISCO_HOSTS_FILE) and state directory; exec keeps the pid
            argv = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', f"n{i}",
                    sys.executable, "-m", "wgdisco.lab.run_tunnel", str(c)]
            procs.append(h.popen(argv, name=f"wgdisco-m{i}", env={
                "PYTHONPATH": str(PACKAGE_ROOT), "WGDISCO_STATE_DIR": str(lab.logdir / f"state-{i}"),
                "WGDISCO_HOSTS_FILE": str(lab.logdir / f"hosts-{i}"),
                # WGDISCO_CPROFILE=/tmp/x: daemon 0 under cProfile by CPU time (/tmp/x.loop, /tmp/x.dataplane-IFACE, …)
                # (the others get it empty: they would inherit it from this process's environment)
                "WGDISCO_CPROFILE": os.environ.get("WGDISCO_CPROFILE", "") if i == 0 else ""}))
        spy = None
        addrs = []
        for k, p in enumerate(procs):
            m = p.wait_for(r"mesh \w+: our addresses (\S+), (\S+);", timeout=120, stream="stderr")
            p.wait_for(r"interface \S+ up: public key", timeout=120, stream="stderr")
            addrs.append([m.group(1).split("/")[0], m.group(2).split("/")[0]])
            if os.environ.get("WGDISCO_MESH_DIAG"):
                print(f"  seen up: m{k} at {time.monotonic() - launched:.2f} s", flush=True)
            if k == 0 and profile and not PROFILE_IDLE:  # from daemon 0's "up": its part in the convergence
                spy = start_spy(procs[0].pid, profile, out_dir / f"mesh-{n}-profile.txt")
        up = time.monotonic()
        # The check is the instrument: one process that sends every pending request and echoes every
        # request it receives. At the default priority it gets 1/(runnable processes) of a core like
        # each daemon: with 100 members starting at once (load average over 100) one of its rounds
        # of 19,800 requests took ~10 s of wall time, and it reported its own pace (pairs done in
        # waves ~12 s apart) instead of the mesh's. A higher priority (nice -10) keeps it on time;
        # its own CPU is reported (check_cpu_s) and is small against the daemons'.
        os.setpriority(os.PRIO_PROCESS, 0, CHECK_NICE)
        check_cpu = time.process_time()
        pids = [p.pid for p in procs]
        cpu_up = [cpu_seconds(pid) for pid in pids]
        main_up = [cpu_seconds_main(pid) for pid in pids]
        done_at: list[float] = []
        left_out: list[tuple[int, int, int]] = []
        done_pairs: list[tuple[float, int, int, str]] = []
        history: dict[str, dict[str, float]] = {}
        took, left = reach_all(socks, addrs, limit, done_at, left_out, done_pairs, history)
        check_cpu = time.process_time() - check_cpu
        os.setpriority(os.PRIO_PROCESS, 0, 0)
        cpu_full = [cpu_seconds(pid) for pid in pids]
        result_drops = socket_drops(hosts)
        main_full = [cpu_seconds_main(pid) for pid in pids]
        to_full = dict(zip(("mdns", "to tunnel port", "tunnel port to other"), bridge_counts(lan)))
        done_at.sort()
        spread_at = {f"p{q}": round(done_at[min(len(done_at) - 1, len(done_at) * q // 100)], 2)
                     for q in (10, 50, 90, 99)} if done_at else {}
        result: dict[str, object] = {
            "nodes": n, "pairs": n * (n - 1), "all_up_after_launch_s": round(up - launched, 2),
            "full_mesh_from_up_s": None if took is None else round(took, 2),
            "full_mesh_from_launch_s": None if took is None else round(up - launched + took, 2),
            "pairs_left": left, "loadavg_at_full": os.getloadavg()[0], "pair_done_s": spread_at,
            "check_nice": CHECK_NICE, "check_cpu_s": round(check_cpu, 2),
            # CPU seconds per daemon: to get up (imports, keys, TUN) and from up to full mesh
            "cpu_to_up_s": spread([round(c, 2) for c in cpu_up]),
            "cpu_up_to_full_s": spread([round(b - a, 2) for a, b in zip(cpu_up, cpu_full)]),
            "main_thread_cpu_up_to_full_s": spread([round(b - a, 2) for a, b in zip(main_up, main_full)]),
            "packets_launch_to_full": to_full,
            "kinds_launch_to_full": kind_counts(lan),
            "pairs_done_per_s": collections.Counter(int(t) for t in done_at),
            "pairs_left_list": [(i, j, ("ipv4", "ipv6")[f]) for i, j, f in left_out[:50]],
            "pairs_left_history": history,
            "last_pairs": done_pairs[-8:],
            "socket_drops_at_full": result_drops,  # the kernel's receive-buffer drops, by port, all hosts  # (seconds after the last up, from, to, family): the tail
        }
        print(f"{n} nodes: all up {up - launched:.1f} s after launch; "
              + (f"full mesh {took:.2f} s after the last was up" if took is not None else
                 f"NOT a full mesh after {limit:.0f} s ({left} of {2 * n * (n - 1)} pair-families left)")
              + f"; pair-families done at {spread_at}; the check used {check_cpu:.2f} CPU s at nice {CHECK_NICE}; CPU s per daemon to up {result['cpu_to_up_s']}, "
              f"up to full {result['cpu_up_to_full_s']} (event-loop thread {result['main_thread_cpu_up_to_full_s']})"
              + f"; packets on the bridge from launch to full mesh {to_full}, to tunnel ports by kind "
              f"{result['kinds_launch_to_full']}"
              + (f"; left (from, to, family): {left_out[:10]}, what their requests met: {history}" if left_out else "")
              + f"; the last pairs (s, from, to, family): {done_pairs[-6:]}; socket drops {result_drops}", flush=True)
        if took is None or os.environ.get("WGDISCO_MESH_DIAG"):
            diag(hosts, tag, addrs, socks, out_dir / f"mesh-{n}-diag.json",
                 left_out or [(i, j, ("ipv4", "ipv6").index(f)) for _, i, j, f in done_pairs[-1:]])
        if idle:
            time.sleep(max(0.0, idle - window))
            before = [cpu_seconds(pid) for pid in pids]
            main_before = [cpu_seconds_main(pid) for pid in pids]
            if profile and PROFILE_IDLE:
                spy = start_spy(pids[0], min(profile, window), out_dir / f"mesh-{n}-profile.txt")
            t0 = time.monotonic()
            counted_before = bridge_counts(lan)
            time.sleep(window)
            dt = time.monotonic() - t0
            counted = [b - a for a, b in zip(counted_before, bridge_counts(lan))]
            cpu = [100 * (cpu_seconds(pid) - b) / dt for pid, b in zip(pids, before)]
            main = [100 * (cpu_seconds_main(pid) - b) / dt for pid, b in zip(pids, main_before)]
            kinds = dict(zip(("mdns", "to tunnel port", "tunnel port to other"), counted))
            result.update(idle_main_thread_cpu_pct=spread(main),
                          idle_packets_per_s={k: round(v / dt, 1) for k, v in kinds.items()})
            print(f"idle: event-loop thread CPU % {spread(main)}; packets/s on the bridge "
                  f"{ {k: round(v / dt, 1) for k, v in kinds.items()} }", flush=True)
            rss = [rss_mb(pid) for pid in pids]
            result.update(idle_after_s=idle, cpu_window_s=window, idle_cpu_pct=spread(cpu), rss_mb=spread(rss),
                          loadavg_idle=os.getloadavg()[0])
            print(f"idle after {idle:.0f} s: CPU % per daemon {spread(cpu)}, RSS MB {spread(rss)}, "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
        for p in procs:  # their shutdown lines carry the counters ("discovery: k=v ...", "nat traversal: ...")
            p.stop(grace=10.0)
        result["probe_counters"] = shutdown_counters([p.stderr() for p in procs])
        print(f"probe counters, all daemons, launch to stop: {result['probe_counters']}", flush=True)
        result["tracebacks"] = sum("Traceback" in p.stderr() for p in procs)
        if spy is not None:
            spy.wait(timeout=profile + 60)
            summary = py_spy_summary(out_dir / f"mesh-{n}-profile.txt")
            result["profile_top"] = [{"function": f, "own_pct": round(o, 1), "total_pct": round(t, 1)} for f, o, t in summary]
            samples = sum(int(line.rpartition(" ")[2]) for line in (out_dir / f"mesh-{n}-profile.txt").read_text().splitlines() if line.strip())
            result["profile_samples"] = samples
            print(f"py-spy --gil, daemon 0, {samples} samples at 100/s (own % / total %):")
            for f, o, t in summary:
                print(f"  {o:5.1f} {t:5.1f}  {f}")
        for s in socks:
            s.close()
        return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=20)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--limit", type=float, default=120.0, help="give up after this many seconds")
    p.add_argument("--idle", type=float, default=60.0, help="seconds after full mesh before CPU/RSS (0: skip)")
    p.add_argument("--cpu-window", type=float, default=20.0)
    p.add_argument("--profile", type=float, default=0.0, help="py-spy daemon 0 for this many seconds")
    p.add_argument("--out", default=None)
    p.add_argument("--small-neighbour-tables", action="store_true",
                   help="leave the kernel's neighbour table limits alone (see NeighbourRoom)")
    args = p.parse_args()
    out = Path(args.out or f"bench/results/mesh-{args.nodes}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    with NeighbourRoom(0 if args.small_neighbour_tables else args.nodes):
        runs = [one_run(args.nodes, args.limit, args.idle, args.cpu_window, args.profile, out.parent)
                for _ in range(args.runs)]
    root = Path(__file__).resolve().parent.parent
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    if not commit and (root / ".commit").exists():  # a snapshot of a commit (git archive), named in .commit
        commit = (root / ".commit").read_text().strip()
    result = {"commit": commit, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": runs}
    times = [r["full_mesh_from_up_s"] for r in runs if r["full_mesh_from_up_s"] is not None]
    if times:
        result["median_full_mesh_from_up_s"] = statistics.median(times)  # type: ignore[type-var]
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}))
    return 0 if len(times) == len(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
