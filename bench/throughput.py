"""Throughput, CPU cost and latency of wgdisco's tunnel, against wireguard-go on the same machine.

    sudo .venv/bin/python bench/throughput.py [--rounds 3] [--seconds 10] [--out FILE] [--smoke]

Method
------
Network part (root, network namespaces from ``wgdisco/lab``).  A *session* is one fresh lab:
two namespaces ``a`` and ``b`` joined by one veth pair (198.51.100.1/.2), a WireGuard node on
each side (``wgdisco.lab.wg.pair``, inner addresses 10.9.0.1 and 10.9.0.2, MTU 1420), and an
``iperf3 -s`` in ``b``.  The configurations are

* ``wgdisco``          — wgdisco on both sides, data path as by default (``WGDISCO_DATAPATH`` unset:
  the compiled fast path when it is built, docs/tunnel.md),
* ``wgdisco-python``   — wgdisco on both sides with ``WGDISCO_DATAPATH=python`` (the reference path;
  ``--python-path``, and in smoke runs),
* ``wireguard-go-new`` — Debian 13's wireguard-go 0.0.20231211 on both sides (TUN offloads, UDP GSO/GRO),
  fetched by ``bench/anchor.py`` with apt into ``bench/cache/`` (the machine's sources untouched),
* ``wireguard-go``     — the installed wireguard-go (Debian 12: 0.0.20220316, no offloads),
* ``mixed``            — wgdisco in ``a``, the new wireguard-go in ``b`` (one session, after the rounds),
* ``wgdisco-base``     — ``--base-tree DIR``: the wgdisco source tree in DIR (e.g. ``git archive`` of an
  older commit) with ``WGDISCO_DATAPATH=python``, to show the pure-Python path did not get slower
  (``--base-datapath c``: its compiled path, built in place in DIR, against ``wgdisco``).

Round i runs one session of each configuration in turn (A B C A B C ...), so slow drifts of
the machine hit all alike; ratios are taken pair by pair (round i of A over round i of B)
and then their median is reported, wgdisco against each wireguard-go (the ratio that counts
is against the new one).  In each session:

1. ping: ``ping -i 0.01 -c 100 -q`` from ``a`` to ``b``'s veth address and then to its
   tunnel address; *added RTT* = tunnel avg - veth avg.
2. iperf3 TCP from ``a`` to ``b``'s tunnel address for ``--seconds``: one stream (``-P 1``)
   and four (``-P 4``), each "up" (a -> b) and "down" (``-R``, b -> a).  Throughput is
   iperf3's ``sum_received`` (goodput at the receiver).
3. CPU: utime + stime of each daemon process (``/proc/PID/stat``, all threads) just before
   and just after the iperf3 client, divided by the GB (1e9 bytes) of TCP payload received.
   The "sender" side is the daemon in the namespace whose iperf3 sends the data.  The pid
   is the one ``Host.popen`` started (``ip netns exec`` execs the daemon); it is verified
   from ``/proc/PID/cmdline`` (a child is searched for if ``ip`` had forked instead).

In-process part (no network, one core, this process): two ``wgdisco.proto.device.Device``
objects peered in memory as ``tests/unit/test_device.py``'s ``Pair`` does.

* handshakes/s: the initiator prepares N initiations (unmeasured); the responder's
  ``receive_datagram`` consumes each one and creates its response; N / elapsed.  The
  responder's fake clock advances 1 s per message so neither flood protection nor the
  under-load cookie path trigger: this is the normal path, DH and all.
* packets/s: after a handshake, 64-byte IPv4 packets (20-byte header + 44 bytes, so no
  padding) through ``send_packet`` (encrypt) and the resulting datagrams through the other
  device's ``receive_datagram`` (decrypt, replay check, allowed-IPs check), timed apart.

Every measurement is repeated ``--rounds`` times and the median is reported.  Raw samples,
medians, ratios and a description of the machine go to a JSON file; a table is printed.
``--smoke`` (for CI): one round of 2 s, one test per configuration, no mixed pair; without the
new wireguard-go (apt cannot reach trixie) its sessions are left out with a note; the exit
status is 1 if any measurement failed, 0 otherwise (the same rule holds for full runs).
Labs are removed on every exit path, Ctrl-C included (``wgdisco.lab.Lab``).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import platform
import re
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import anchor  # noqa: E402
from wgdisco.lab import Host, Lab, LabError, Proc  # noqa: E402
from wgdisco.lab.wg import Node, pair  # noqa: E402
from wgdisco.proto import keys  # noqa: E402
from wgdisco.proto.device import Device  # noqa: E402

WGDISCO, WGDISCO_PY, WGGO, WGGO_NEW = "wgdisco", "wgdisco-python", "wireguard-go", "wireguard-go-new"
WGDISCO_BASE = "wgdisco-base"
OURS = (WGDISCO, WGDISCO_PY)
BASELINES = (WGGO_NEW, WGGO)  # the ratio that counts is against the first
RAW_PEER = "198.51.100.2"  # b's veth address in wgdisco.lab.wg.pair
PING_ARGS = ["-i", "0.01", "-c", "100", "-q"]
CLK_TCK = os.sysconf("SC_CLK_TCK")
GB = 1e9


# ------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class Test:
    key: str  # "P1-up": used in the JSON
    label: str  # "single up": used in the table
    streams: int
    reverse: bool  # iperf3 -R: the data flows b -> a


TESTS = (
    Test("P1-up", "single up", 1, False),
    Test("P1-down", "single down", 1, True),
    Test("P4-up", "4 streams up", 4, False),
    Test("P4-down", "4 streams down", 4, True),
)


@dataclass(frozen=True)
class Config:
    key: str
    kind_a: str
    kind_b: str
    new_wggo: bool = False  # run bench/anchor.py's wireguard-go instead of the installed one
    env: tuple[tuple[str, str], ...] = ()  # extra environment for the daemons


CONFIGS = {
    WGDISCO: Config(WGDISCO, WGDISCO, WGDISCO),
    WGDISCO_PY: Config(WGDISCO_PY, WGDISCO, WGDISCO, env=(("WGDISCO_DATAPATH", "python"),)),
    WGGO_NEW: Config(WGGO_NEW, WGGO, WGGO, new_wggo=True),
    WGGO: Config(WGGO, WGGO, WGGO),
    "mixed": Config("mixed", WGDISCO, WGGO, new_wggo=True),
}
NEW_WGGO: str | None = None  # path of the new wireguard-go, set by main() (bench/anchor.py)


@dataclass(frozen=True)
class Session:
    config: Config
    round: int
    tests: tuple[Test, ...]

    @property
    def label(self) -> str:
        return f"{self.config.key} round {self.round}"

    def steps(self) -> list[str | Test]:
        return ["ping", *self.tests]


def plan(rounds: int, smoke: bool, configs: list[str], mixed: bool) -> list[Session]:
    """A B C A B C ... for ``rounds`` rounds, then the mixed pair (not in smoke runs)."""
    tests = TESTS[:1] if smoke else TESTS
    sessions = []
    for r in range(1, rounds + 1):
        sessions += [Session(CONFIGS[c], r, tests) for c in configs]
    if mixed and not smoke:
        sessions.append(Session(CONFIGS["mixed"], 1, tests))
    return sessions


MICRO_STEPS = ("handshakes", "packets")


# ------------------------------------------------------------- bookkeeping


class Progress:
    """``[3/14] wgdisco round 2 single up ... 812 Mbit/s`` lines."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.n = 0

    def start(self, what: str) -> None:
        self.n += 1
        print(f"[{self.n}/{self.total}] {what} ...", end=" ", flush=True)

    @staticmethod
    def finish(text: str) -> None:
        print(text, flush=True)


class Results:
    """Raw samples (one dict per measurement) and the failures among them."""

    def __init__(self) -> None:
        self.samples: list[dict] = []
        self.micro: dict[str, list[float]] = {}
        self.errors: list[str] = []

    def add(self, sample: dict) -> dict:
        self.samples.append(sample)
        if sample.get("error"):
            self.errors.append(f"{sample['config']} round {sample['round']} {sample['test']}: {sample['error']}")
        return sample

    def ok(self) -> list[dict]:
        return [s for s in self.samples if not s.get("error")]


def guarded(fn: Callable[[], dict]) -> dict:
    """Run a measurement; an exception becomes ``{"error": ...}`` (Ctrl-C still propagates)."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - any failure is reported, the run goes on
        return {"error": f"{type(e).__name__}: {e}".strip()}


# --------------------------------------------------------- process CPU time


def cpu_seconds(pid: int) -> float:
    """utime + stime of a whole process (all threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5)


def argv_of_pid(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            kids.append(int(stat.parent.name))
    return kids


def is_daemon(pid: int, kind: str) -> bool:
    argv = argv_of_pid(pid)
    if not argv or Path(argv[0]).name == "ip":  # still (or only) `ip netns exec`
        return False
    if kind == "wgdisco":
        return "wgdisco.lab.run_tunnel" in argv
    return Path(argv[0]).name == "wireguard-go"


def daemon_pid(node: Node) -> int:
    """The pid whose CPU time counts: the daemon itself, not an ``ip netns exec`` wrapper.

    ``ip netns exec`` execs, so this is normally ``node.proc.pid``; a child is accepted too.
    """
    proc: Proc | None = node.proc
    if proc is None:
        raise LabError(f"{node.kind} node {node.iface} has no process")
    for pid in [proc.pid, *children(proc.pid)]:
        if is_daemon(pid, node.kind):
            if pid != proc.pid:
                print(f"(note: {node.kind} runs as pid {pid}, child of {proc.pid})", end=" ", flush=True)
            return pid
    raise LabError(f"no {node.kind} daemon at pid {proc.pid} ({argv_of_pid(proc.pid)}) or among its children")


# ------------------------------------------------------------------ sessions


@dataclass
class Bed:
    """One session's lab: the two nodes, their daemon pids, the iperf3 server."""

    a: Node
    b: Node
    pids: dict[str, int]

    def cpu(self) -> dict[str, float]:
        return {side: cpu_seconds(pid) for side, pid in self.pids.items()}


def wait_for_tunnel(host: Host, target: str, tries: int = 5) -> None:
    """Ping ``target`` through a tunnel from ``host`` until the first handshake is done."""
    for _ in range(tries):
        if host.ping(target, count=1, wait=2, check=False).returncode == 0:
            return
    raise LabError(f"no ping through the tunnel from {host.name} to {target} after {tries} tries")


def build_bed(lab: Lab, config: Config) -> Bed:
    binary = "wireguard-go"
    if config.new_wggo:
        if NEW_WGGO is None:
            raise LabError("the new wireguard-go is not available (bench/anchor.py)")
        binary = NEW_WGGO
    a, b = pair(lab, config.kind_a, config.kind_b, endpoint_on="both", binary=binary, env=dict(config.env))
    wait_for_tunnel(a.host, b.inner4)
    server = b.host.popen(["iperf3", "-s", "--forceflush"], name="iperf3-server")
    server.wait_for(r"Server listening", timeout=10)
    return Bed(a, b, {"a": daemon_pid(a), "b": daemon_pid(b)})


PING_RTT = re.compile(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms")
PING_LOSS = re.compile(r"([\d.]+)% packet loss")


def ping_avg(host: Host, target: str) -> tuple[float, float]:
    """(average RTT in ms, loss in %) of 100 pings 10 ms apart."""
    cp = host.run(["ping", "-4", "-n", *PING_ARGS, target], check=False, timeout=60)
    rtt, loss = PING_RTT.search(cp.stdout), PING_LOSS.search(cp.stdout)
    if rtt is None or loss is None:
        raise RuntimeError(f"ping {target} exited {cp.returncode}: {(cp.stdout + cp.stderr).strip()}")
    return float(rtt.group(2)), float(loss.group(1))


def measure_ping(bed: Bed) -> dict:
    raw, raw_loss = ping_avg(bed.a.host, RAW_PEER)
    tunnel, tunnel_loss = ping_avg(bed.a.host, bed.b.inner4)
    return {
        "raw_ms": raw, "tunnel_ms": tunnel, "added_ms": round(tunnel - raw, 4),
        "raw_loss_pct": raw_loss, "tunnel_loss_pct": tunnel_loss,
    }


def iperf_client(host: Host, target: str, test: Test, seconds: float) -> dict:
    """One iperf3 TCP test; raises on any iperf3 error."""
    argv = ["iperf3", "-c", target, "-t", str(seconds), "-P", str(test.streams), "-J",
            "--connect-timeout", "5000", *(["-R"] if test.reverse else [])]
    cp = host.run(argv, check=False, timeout=seconds + 60)
    try:
        report = json.loads(cp.stdout)
    except ValueError:
        raise RuntimeError(f"iperf3 exited {cp.returncode}: {(cp.stderr or cp.stdout).strip()[:500]}") from None
    if report.get("error") or cp.returncode != 0:
        raise RuntimeError(f"iperf3 exited {cp.returncode}: {report.get('error', 'no error text')}")
    end = report["end"]
    received = end["sum_received"]
    if not received.get("bytes"):
        raise RuntimeError("iperf3 reports 0 bytes received")
    return {
        "bytes": received["bytes"],
        "seconds": received["seconds"],
        "mbit_s": received["bits_per_second"] / 1e6,
        "retransmits": end.get("sum_sent", {}).get("retransmits"),
    }


def measure_throughput(bed: Bed, test: Test, seconds: float) -> dict:
    before = bed.cpu()
    result = iperf_client(bed.a.host, bed.b.inner4, test, seconds)
    after = bed.cpu()
    cpu = {side: round(after[side] - before[side], 3) for side in before}
    sender, receiver = ("b", "a") if test.reverse else ("a", "b")
    gb = result["bytes"] / GB
    return {
        **result,
        "cpu_s": cpu,
        "cpu_s_per_gb_sender": cpu[sender] / gb,
        "cpu_s_per_gb_receiver": cpu[receiver] / gb,
    }


def describe(sample: dict) -> str:
    if sample.get("error"):
        return f"FAILED: {sample['error']}"
    if sample["test"] == "ping":
        return f"veth {sample['raw_ms']:.3f} ms, tunnel {sample['tunnel_ms']:.3f} ms, added {sample['added_ms']:.3f} ms"
    return (f"{sample['mbit_s']:.0f} Mbit/s, cpu s/GB sender {sample['cpu_s_per_gb_sender']:.2f} "
            f"receiver {sample['cpu_s_per_gb_receiver']:.2f}")


def record(results: Results, progress: Progress, session: Session, step: str | Test, data: dict) -> None:
    test = step if isinstance(step, str) else step.key
    sample = results.add({"config": session.config.key, "round": session.round, "test": test, **data,
                          "loadavg_1m_after": os.getloadavg()[0]})  # others' load on the box shows here
    progress.finish(describe(sample))


def step_label(session: Session, step: str | Test) -> str:
    return f"{session.label} {step if isinstance(step, str) else step.label}"


def run_session(session: Session, seconds: float, progress: Progress, results: Results) -> None:
    """Build the lab, run each step, tear the lab down; a broken lab fails its remaining steps."""
    pending = session.steps()
    try:
        with Lab() as lab:
            bed = build_bed(lab, session.config)
            while pending:
                step = pending[0]
                progress.start(step_label(session, step))
                if step == "ping":
                    data = guarded(lambda: measure_ping(bed))
                else:
                    data = guarded(lambda: measure_throughput(bed, step, seconds))  # noqa: B023
                pending.pop(0)
                data["pids"] = bed.pids
                record(results, progress, session, step, data)
    except Exception as e:  # noqa: BLE001 - setup or teardown failed
        error = f"{type(e).__name__}: {e}".strip()
        if not pending:  # every step measured; the teardown failed
            results.errors.append(f"{session.label} teardown: {error}")
            print(f"  teardown of {session.label} failed: {error}", flush=True)
        for step in pending:
            progress.start(step_label(session, step))
            record(results, progress, session, step, {"error": f"lab setup failed: {error}"})


# ------------------------------------------------------ in-process micro


A_ADDR = ("198.51.100.1", 51820)
B_ADDR = ("198.51.100.2", 51820)


def ipv4_packet(size: int = 64) -> bytes:
    """An IPv4/UDP-protocol packet of ``size`` bytes from 10.0.0.1 to 10.0.0.2."""
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, size, 0, 0, 64, 17, 0,
        ipaddress.IPv4Address("10.0.0.1").packed, ipaddress.IPv4Address("10.0.0.2").packed,
    )
    return header + bytes(size - len(header))


class MemoryPair:
    """Devices A and B peered with each other and a wire in memory (cf. tests/unit/test_device.py)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.a = Device(keys.clamp(os.urandom(32)), rng=os.urandom, now=self.now)
        self.b = Device(keys.clamp(os.urandom(32)), rng=os.urandom, now=self.now)
        self.pa = self.a.add_peer(self.b.identity.public)
        self.pb = self.b.add_peer(self.a.identity.public)
        self.a.allowed_ips.insert(ipaddress.ip_network("10.0.0.2/32"), self.pa)
        self.b.allowed_ips.insert(ipaddress.ip_network("10.0.0.1/32"), self.pb)
        self.a.set_endpoint(self.pa, B_ADDR)

    def flush(self) -> None:
        """Carry queued datagrams both ways until the wire is quiet."""
        moved = True
        while moved:
            moved = False
            for src, dst, addr in ((self.a, self.b, A_ADDR), (self.b, self.a, B_ADDR)):
                for data, _ in src.datagrams_to_send():
                    dst.receive_datagram(data, addr, self.now)
                    moved = True

    def establish(self) -> None:
        """A handshake and the first data packet, so both sides hold a current keypair."""
        self.a.send_packet(ipv4_packet(), self.now)
        self.flush()
        if self.pa.current is None or self.pb.current is None:
            raise RuntimeError(f"no session in memory (drops a={self.a.drops} b={self.b.drops})")


def prepared_initiations(mp: MemoryPair, n: int) -> list[bytes]:
    """``n`` valid initiations from A, REKEY_TIMEOUT apart on A's clock (unmeasured)."""
    messages, now = [], mp.now
    for _ in range(n):
        now += mp.a.timing.rekey_timeout + 0.1
        mp.a.send_handshake_initiation(mp.pa, now, is_retry=False)
        messages += [data for data, _ in mp.a.datagrams_to_send()]
    return messages


def handshakes_per_second(n: int) -> float:
    mp = MemoryPair()
    messages = prepared_initiations(mp, n)
    receive, take, now, responses = mp.b.receive_datagram, mp.b.datagrams_to_send, mp.now, 0
    t0 = time.perf_counter()
    for msg in messages:
        now += 1.0  # > flood interval, and a fresh under-load window each time
        receive(msg, A_ADDR, now)
        responses += len(take())
    elapsed = time.perf_counter() - t0
    if responses != n or mp.b.drops:
        raise RuntimeError(f"{responses} responses to {n} initiations, drops {mp.b.drops}")
    return n / elapsed


def packet_rates(min_seconds: float, batch: int = 2000) -> tuple[float, float]:
    """(encrypt, decrypt) packets per second of 64-byte inner packets."""
    mp = MemoryPair()
    mp.establish()
    packet, send, now = ipv4_packet(64), mp.a.send_packet, mp.now
    datagrams: list = []
    t_encrypt = 0.0
    while t_encrypt < min_seconds:
        t0 = time.perf_counter()
        out = [send(packet, now) for _ in range(batch)]
        t_encrypt += time.perf_counter() - t0
        datagrams += out
    receive = mp.b.receive_datagram
    t0 = time.perf_counter()
    inner = [receive(data, A_ADDR, now) for data, _ in datagrams]
    t_decrypt = time.perf_counter() - t0
    delivered = sum(1 for p in inner if p is not None)
    if delivered != len(datagrams):
        raise RuntimeError(f"{delivered} of {len(datagrams)} decrypted, drops {mp.b.drops}")
    return len(datagrams) / t_encrypt, len(datagrams) / t_decrypt


def run_micro(repeats: int, smoke: bool, progress: Progress, results: Results) -> None:
    n_handshakes, min_seconds = (100, 0.2) if smoke else (2000, 1.0)
    progress.start(f"in-process handshakes/s (responder, {repeats} x {n_handshakes})")
    samples = guarded(lambda: {"v": [handshakes_per_second(n_handshakes) for _ in range(repeats)]})
    micro_record(results, progress, {"handshakes_per_s": samples})
    progress.start(f"in-process 64-byte packets/s ({repeats} x >= {min_seconds} s)")
    rates = guarded(lambda: {"v": [packet_rates(min_seconds) for _ in range(repeats)]})
    if rates.get("error"):
        split = {"encrypt_pps": rates, "decrypt_pps": rates}
    else:
        split = {"encrypt_pps": {"v": [e for e, _ in rates["v"]]}, "decrypt_pps": {"v": [d for _, d in rates["v"]]}}
    micro_record(results, progress, split)


def micro_record(results: Results, progress: Progress, named: dict[str, dict]) -> None:
    """``named``: metric -> {"v": samples} or {"error": text}."""
    texts = []
    for name, outcome in named.items():
        if outcome.get("error"):
            results.errors.append(f"micro {name}: {outcome['error']}")
            texts.append(f"{name} FAILED: {outcome['error']}")
        else:
            results.micro[name] = outcome["v"]
            texts.append(f"{name} {statistics.median(outcome['v']):,.0f}")
    progress.finish(", ".join(texts))


# --------------------------------------------------------------- summaries


RATIO_METRICS = ("mbit_s", "cpu_s_per_gb_sender", "cpu_s_per_gb_receiver", "added_ms")
METRICS = (*RATIO_METRICS, "raw_ms", "tunnel_ms")


def values(samples: Iterable[dict], config: str, test: str, metric: str) -> dict[int, float]:
    """round -> value, for the successful samples of one configuration and test."""
    return {s["round"]: s[metric] for s in samples if s["config"] == config and s["test"] == test and metric in s}


def medians(results: Results) -> dict:
    out: dict = {}
    ok = results.ok()
    for config in sorted({s["config"] for s in ok}):
        for test in sorted({s["test"] for s in ok if s["config"] == config}):
            cell = {m: statistics.median(v.values()) for m in METRICS if (v := values(ok, config, test, m))}
            cell["n"] = len(values(ok, config, test, "added_ms" if test == "ping" else "mbit_s"))
            out.setdefault(config, {})[test] = cell
    out["micro"] = {name: statistics.median(v) for name, v in results.micro.items()}
    return out


def ratios(results: Results, ours_key: str = WGDISCO, theirs_key: str = WGGO_NEW) -> dict:
    """ours / theirs, round i against round i, and the median of those ratios."""
    out: dict = {}
    ok = results.ok()
    for test in sorted({s["test"] for s in ok}):
        for metric in RATIO_METRICS:
            ours, theirs = values(ok, ours_key, test, metric), values(ok, theirs_key, test, metric)
            per_round = {r: ours[r] / theirs[r] for r in sorted(ours.keys() & theirs.keys()) if theirs[r]}
            if per_round:
                out.setdefault(test, {})[metric] = {
                    "per_round": {str(r): round(v, 4) for r, v in per_round.items()},
                    "median": statistics.median(per_round.values()),
                }
    return out


def all_ratios(results: Results) -> dict:
    """"wgdisco/wireguard-go-new" -> ratios(...), for each of ours against each wireguard-go."""
    out = {f"{o}/{t}": r for o in OURS for t in BASELINES if (r := ratios(results, o, t))}
    for ours in (WGDISCO_PY, WGDISCO):  # the base tree's path is the one --base-datapath names
        if (r := ratios(results, ours, WGDISCO_BASE)):
            out[f"{ours}/{WGDISCO_BASE}"] = r
    return out


# ------------------------------------------------------------------ output


def run_text(cmd: list[str]) -> str:
    try:
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except OSError as e:
        return f"unavailable ({e})"
    return (cp.stdout or cp.stderr).strip()


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict:
    dirty = run_text(["git", "-C", str(REPO), "status", "--porcelain", "--", "wgdisco"])
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "wireguard_go": run_text(["wireguard-go", "--version"]).splitlines()[0],
        "iperf3": run_text(["iperf3", "--version"]).splitlines()[0],
        "cryptography": package_version("cryptography"),
        "wgdisco_commit": run_text(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "wgdisco_tree_modified": bool(dirty) and not dirty.startswith(("fatal", "unavailable")),
        "loadavg_at_start": os.getloadavg(),
    }


def datapath_available() -> str:
    """Whether the compiled fast path is built (docs/tunnel.md), as the daemon would find it."""
    try:
        from wgdisco.io import _fastpath  # noqa: F401
    except ImportError as e:
        return f"not built ({e})"
    return "built"


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def cell(summary: dict, config: str, test: str, metric: str) -> float | None:
    return summary.get(config, {}).get(test, {}).get(metric)


def per_round(results: Results, config: str, test: str, metric: str, spec: str) -> str:
    v = values(results.ok(), config, test, metric)
    return "[" + " ".join(format(v[r], spec) for r in sorted(v)) + "]"


def print_table(results: Results, summary: dict, rat: dict, args: argparse.Namespace) -> None:
    tests = [t for t in TESTS if any(s["test"] == t.key for s in results.samples)]
    configs = [c for c in (WGDISCO, WGDISCO_PY, WGDISCO_BASE, WGGO_NEW, WGGO, "mixed") if c in summary]
    pairs = [k for k in rat if rat[k]]
    rounds = f"median of {args.rounds} round{'s' * (args.rounds != 1)} x {args.seconds:g} s"
    print(f"\nTCP throughput through the tunnel, Mbit/s ({rounds}; per round in brackets)")
    print(f"{'test':<15} " + " ".join(f"{c:<24}" for c in configs))
    for t in tests:
        print(f"{t.label:<15} " + " ".join(
            f"{fmt(cell(summary, c, t.key, 'mbit_s'), '.0f') + ' ' + per_round(results, c, t.key, 'mbit_s', '.0f'):<24}"
            for c in configs))
    print("\nRatios, median of the per-round ratios [per round]")
    print(f"{'test':<15} " + " ".join(f"{k:<34}" for k in pairs))
    for t in tests:
        texts = []
        for k in pairs:
            r = rat[k].get(t.key, {}).get("mbit_s", {})
            texts.append(fmt(r.get("median"), ".2f") + " ["
                         + " ".join(format(v, ".2f") for v in r.get("per_round", {}).values()) + "]")
        print(f"{t.label:<15} " + " ".join(f"{x:<34}" for x in texts))
    print("\nDaemon CPU seconds per GB of payload (median), sender side / receiver side"
          "  (up = a->b, down = b->a)")
    print(f"{'test':<15} " + " ".join(f"{c:<18}" for c in configs))
    for t in tests:
        def pair_text(config: str) -> str:
            return (fmt(cell(summary, config, t.key, "cpu_s_per_gb_sender"), ".2f") + " / "
                    + fmt(cell(summary, config, t.key, "cpu_s_per_gb_receiver"), ".2f"))
        print(f"{t.label:<15} " + " ".join(f"{pair_text(c):<18}" for c in configs))
    print(f"\nAdded ping RTT, ms: tunnel avg - veth avg, ping {' '.join(PING_ARGS)} (median over rounds)")
    for config in configs:
        if "ping" in summary[config]:
            p = summary[config]["ping"]
            print(f"  {config:<17} added {fmt(p.get('added_ms'), '.3f')}  "
                  f"(tunnel {fmt(p.get('tunnel_ms'), '.3f')}, veth {fmt(p.get('raw_ms'), '.3f')}) "
                  f"{per_round(results, config, 'ping', 'added_ms', '.3f')}")
    micro = summary["micro"]
    print("\nIn-process wgdisco.proto.device (this process, one core; median)")
    print(f"  handshakes completed by a responder: {fmt(micro.get('handshakes_per_s'), ',.0f')} /s")
    print(f"  64-byte packets: encrypt {fmt(micro.get('encrypt_pps'), ',.0f')} /s, "
          f"decrypt {fmt(micro.get('decrypt_pps'), ',.0f')} /s")
    if results.errors:
        print(f"\n{len(results.errors)} measurement(s) FAILED:")
        for e in results.errors:
            print(f"  {e.splitlines()[0]}")


def write_json(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


# -------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="A/B rounds (default 3)")
    p.add_argument("--seconds", type=float, default=10, help="length of each iperf3 test (default 10)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON file (default bench/results/throughput.json, -smoke.json with --smoke)")
    p.add_argument("--smoke", action="store_true", help="CI check: 1 round of 2 s, one test each, no mixed pair")
    p.add_argument("--python-path", action="store_true",
                   help="also run wgdisco with WGDISCO_DATAPATH=python (always in smoke runs)")
    p.add_argument("--configs", default=None,
                   help=f"comma-separated configurations to run (default: {WGDISCO},{WGGO_NEW},{WGGO})")
    p.add_argument("--no-mixed", action="store_true", help="leave out the mixed pair")
    p.add_argument("--base-tree", type=Path, default=None,
                   help="also run the pure-Python path of the wgdisco source tree in this directory (wgdisco-base)")
    p.add_argument("--base-datapath", choices=("python", "c"), default="python",
                   help="the base tree's data path (c: its compiled module must be built in place; "
                        "compared with wgdisco instead of wgdisco-python)")
    args = p.parse_args(argv)
    if args.smoke:
        args.rounds, args.seconds = 1, 2.0
    if args.out is None:
        args.out = REPO / "bench" / "results" / ("throughput-smoke.json" if args.smoke else "throughput.json")
    if args.rounds < 1 or args.seconds <= 0:
        p.error("--rounds must be >= 1 and --seconds > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench/throughput.py needs root (network namespaces)", file=sys.stderr)
        return 2
    started = time.time()
    global NEW_WGGO
    configs = args.configs.split(",") if args.configs else [WGDISCO, WGGO_NEW, WGGO]
    if args.base_tree is not None:
        if not (args.base_tree / "wgdisco" / "lab" / "run_tunnel.py").exists():
            print(f"--base-tree {args.base_tree}: no wgdisco source tree there", file=sys.stderr)
            return 2
        CONFIGS[WGDISCO_BASE] = Config(WGDISCO_BASE, WGDISCO, WGDISCO, env=(
            ("PYTHONPATH", str(args.base_tree.resolve())), ("WGDISCO_DATAPATH", args.base_datapath)))
        if WGDISCO_BASE not in configs:
            configs.append(WGDISCO_BASE)
    if (args.python_path or args.smoke) and WGDISCO_PY not in configs:
        configs.insert(1, WGDISCO_PY)
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        print(f"unknown configuration(s): {', '.join(unknown)} (known: {', '.join(CONFIGS)})", file=sys.stderr)
        return 2
    new_wggo_version = "not used"
    if WGGO_NEW in configs or not args.no_mixed:
        try:
            NEW_WGGO = str(anchor.fetch())
            new_wggo_version = f"{anchor.PACKAGE_VERSION} (Debian 13 package; {NEW_WGGO})"
        except anchor.AnchorError as e:
            new_wggo_version = f"unavailable: {e}"
            print(f"note: no {WGGO_NEW} ({e}); its sessions are left out", file=sys.stderr)
            configs = [c for c in configs if c != WGGO_NEW]
            args.no_mixed = True
    sessions = plan(args.rounds, args.smoke, configs, not args.no_mixed)
    progress = Progress(len(MICRO_STEPS) + sum(len(s.steps()) for s in sessions))
    results = Results()
    info = machine_info()
    info["wireguard_go_new"] = new_wggo_version
    info["wgdisco_datapath"] = datapath_available()
    print(f"wgdisco {info['wgdisco_commit']}{' (modified)' if info['wgdisco_tree_modified'] else ''} "
          f"(fast path: {info['wgdisco_datapath']}) vs {info['wireguard_go']} and {new_wggo_version}; "
          f"{info['nproc']} x {info['cpu_model']}; kernel {info['kernel']}; "
          f"Python {info['python']}; cryptography {info['cryptography']}", flush=True)
    try:
        run_micro(args.rounds, args.smoke, progress, results)
        for session in sessions:
            run_session(session, args.seconds, progress, results)
    except KeyboardInterrupt:
        print("\ninterrupted: labs removed, nothing written", file=sys.stderr)
        return 130
    summary, rat = medians(results), all_ratios(results)
    report = {
        "machine": info,
        "params": {"rounds": args.rounds, "seconds": args.seconds, "smoke": args.smoke,
                   "tests": [t.key for t in (TESTS[:1] if args.smoke else TESTS)],
                   "ping": PING_ARGS, "micro_packet_bytes": 64},
        "started": datetime.datetime.fromtimestamp(started, datetime.UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.time() - started, 1),
        "samples": results.samples,
        "micro_samples": results.micro,
        "medians": summary,
        "ratios": rat,
        "errors": results.errors,
    }
    write_json(args.out, report)
    print_table(results, summary, rat, args)
    print(f"\n{report['duration_s']:.0f} s; results in {args.out}")
    return 1 if results.errors else 0


if __name__ == "__main__":
    sys.exit(main())
