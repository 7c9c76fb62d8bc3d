"""An impaired WAN link for the lab, without netem: delay, jitter, loss, reordering, duplication.

This kernel has no ``sch_netem``, so the lab impairs a link in user space. ``impair(lab, host,
ifname, lan, profile)`` cuts the veth between ``host`` and the switch ``lan`` and puts a
namespace of its own in the middle (``x<host>``): the host's veth now ends there (``near``),
and a new veth (``far``) joins that namespace to the switch. The namespace has no addresses and
no IPv6, so its kernel takes no part; a forwarder (``python -m wgdisco.lab.wan``) reads every
frame from one side with an AF_PACKET socket, decides its fate, and writes it to the other side
when its time has come. It is a layer-2 tap: addresses, ARP, NAT and routes on both sides stay
exactly as they were, so a lab is built the same way with or without it.

The policy (``Impairment``, pure, ``now`` and ``rng`` passed in), for each direction on its own:

- loss: each frame is dropped with probability ``loss``;
- delay: a frame is released ``delay ± jitter`` (uniform) after it arrived, but never before the
  frame ahead of it (a link does not reorder by itself; jitter is queueing);
- reordering: with probability ``reorder`` a frame is held back by one more ``delay`` (at least
  10 ms), outside the queue's order, so the frames behind it overtake it;
- duplication: with probability ``duplicate`` a second copy follows the first (its own delay).

Frames are passed with their virtio-net header (``PACKET_VNET_HDR``): a checksum left to the
"hardware" (veth's CHECKSUM_PARTIAL) or a GSO frame crosses the forwarder as it would cross
the veth, with no ethtool needed. ``measure`` (``send``/``recv`` below) times datagrams one way
across a link (CLOCK_MONOTONIC is one clock for every namespace): tests/netns/test_wan_lab.py
checks requested against measured delay and loss, and the forwarder's own overhead.

    python -m wgdisco.lab.wan forward --near near --far far [--delay MS] [--jitter MS]
                                      [--loss F] [--reorder F] [--duplicate F] [--seed N]
    python -m wgdisco.lab.wan send HOST:PORT --count N --interval S
    python -m wgdisco.lab.wan recv PORT --seconds S       (prints one JSON line)
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import selectors
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Profile", "PROFILES", "Impairment", "Impaired", "impair", "profile"]


@dataclass(frozen=True)
class Profile:
    """One direction's impairment (both directions get the same); times in ms, rates 0..1."""

    name: str
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    reorder: float = 0.0
    duplicate: float = 0.0

    def args(self) -> list[str]:
        return ["--delay", str(self.delay_ms), "--jitter", str(self.jitter_ms), "--loss", str(self.loss),
                "--reorder", str(self.reorder), "--duplicate", str(self.duplicate)]

    def describe(self) -> str:
        text = f"{self.delay_ms:g} ms ± {self.jitter_ms:g} ms each way, {self.loss * 100:g} % loss"
        if self.reorder:
            text += f", {self.reorder * 100:g} % reordering"
        if self.duplicate:
            text += f", {self.duplicate * 100:g} % duplication"
        return text


# issue 24's profiles: home broadband and a mobile link; "none" is the forwarder alone (its overhead)
PROFILES = {
    "none": Profile("none"),
    "home": Profile("home", delay_ms=20, jitter_ms=5, loss=0.01),
    "mobile": Profile("mobile", delay_ms=60, jitter_ms=20, loss=0.03, reorder=0.01),
}


def profile(name: str | None) -> Profile | None:
    """The profile of a ``--wan`` option (None or "off": no impairment)."""
    if name in (None, "", "off"):
        return None
    if name not in PROFILES:
        raise ValueError(f"unknown WAN profile {name!r} (one of off, {', '.join(PROFILES)})")
    return PROFILES[name]


# ---------------------------------------------------------------- the policy (pure)

REORDER_MIN_HOLD = 0.010


@dataclass
class Direction:
    """Counters of one direction."""

    received: int = 0
    lost: int = 0
    reordered: int = 0
    duplicated: int = 0
    sent: int = 0
    send_errors: int = 0
    last_release: float = 0.0


@dataclass
class Impairment:
    """The fate of each frame: when it leaves, if at all (``now`` in seconds, ``rng`` a Random)."""

    profile: Profile
    rng: random.Random
    queue: list[tuple[float, int, int, bytes]] = field(default_factory=list)  # (release, seq, direction, frame)
    dirs: tuple[Direction, Direction] = field(default_factory=lambda: (Direction(), Direction()))
    _seq: int = 0

    def submit(self, direction: int, frame: bytes, now: float) -> None:
        d, p, rng = self.dirs[direction], self.profile, self.rng
        d.received += 1
        if p.loss and rng.random() < p.loss:
            d.lost += 1
            return
        copies = 2 if p.duplicate and rng.random() < p.duplicate else 1
        d.duplicated += copies - 1
        for _ in range(copies):
            delay = max(0.0, (p.delay_ms + rng.uniform(-p.jitter_ms, p.jitter_ms)) / 1000)
            if p.reorder and rng.random() < p.reorder:
                d.reordered += 1
                release = now + delay + max(REORDER_MIN_HOLD, p.delay_ms / 1000)  # outside the queue's order
            else:
                release = d.last_release = max(now + delay, d.last_release)
            self._seq += 1
            heapq.heappush(self.queue, (release, self._seq, direction, frame))

    def next_time(self) -> float | None:
        return self.queue[0][0] if self.queue else None

    def due(self, now: float) -> list[tuple[int, bytes]]:
        out = []
        while self.queue and self.queue[0][0] <= now:
            _, _, direction, frame = heapq.heappop(self.queue)
            out.append((direction, frame))
        return out

    def counters(self) -> dict[str, dict[str, int]]:
        return {name: {k: v for k, v in vars(d).items() if k != "last_release"}
                for name, d in zip(("up", "down"), self.dirs)}


# ---------------------------------------------------------------- the forwarder (shell)

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_OUTGOING = 4
MAX_FRAME = 65536 + 10  # a GSO frame and its virtio-net header
QUEUE_LIMIT = 10000  # frames held at most (a flood beyond it is dropped, counted as sent errors)


def _packet_socket(ifname: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    s.bind((ifname, ETH_P_ALL))
    s.setblocking(False)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    return s


def forward(near: str, far: str, imp: Impairment) -> None:
    """Frames from ``near`` go out of ``far`` (direction 0, "up") and back (1, "down"), impaired."""
    socks = (_packet_socket(near), _packet_socket(far))
    sel = selectors.DefaultSelector()
    for i, s in enumerate(socks):
        sel.register(s, selectors.EVENT_READ, i)
    stop = False

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal stop
        if signum == signal.SIGUSR1:
            print(json.dumps(imp.counters()), flush=True)
        else:
            stop = True

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(sig, on_signal)
    print(f"READY {near}<->{far}", flush=True)
    while not stop:
        due = imp.next_time()
        timeout = None if due is None else max(0.0, due - time.monotonic())
        try:
            events = sel.select(timeout)
        except InterruptedError:
            continue
        now = time.monotonic()
        for key, _ in events:
            s, direction = key.fileobj, key.data
            for _ in range(256):
                try:
                    frame, addr = s.recvfrom(MAX_FRAME)  # type: ignore[union-attr]
                except (BlockingIOError, InterruptedError):
                    break
                if addr[2] == PACKET_OUTGOING:
                    continue
                if len(imp.queue) >= QUEUE_LIMIT:
                    imp.dirs[direction].send_errors += 1
                    continue
                imp.submit(direction, frame, now)
        for direction, frame in imp.due(time.monotonic()):
            d = imp.dirs[direction]
            try:
                socks[1 - direction].send(frame)
                d.sent += 1
            except OSError:
                d.send_errors += 1
    print(json.dumps(imp.counters()), flush=True)


# ---------------------------------------------------------------- the lab side


@dataclass
class Impaired:
    """An impaired link: the namespace in the middle and its forwarder."""

    host: Any  # netns.Host: the namespace holding the forwarder
    proc: Any  # netns.Proc
    profile: Profile

    def counters(self) -> dict[str, dict[str, int]]:
        """The forwarder's counters (SIGUSR1 makes it print them)."""
        before = self.proc.stdout().count("\n")
        self.proc.popen.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while self.proc.stdout().count("\n") <= before:
            if time.monotonic() > deadline:
                raise RuntimeError("the WAN forwarder did not report its counters")
            time.sleep(0.01)
        return json.loads(self.proc.stdout().splitlines()[-1])


def _peer_ifname(host: Any, ifname: str, lan: Any) -> str:
    """The name, in ``lan``, of the other end of ``host``'s veth ``ifname``."""
    [link] = json.loads(host.ip("-j", "-d", "link", "show", "dev", ifname).stdout)
    index = link["link_index"]
    for other in json.loads(lan.ip("-j", "link", "show").stdout):
        if other["ifindex"] == index:
            return str(other["ifname"])
    raise RuntimeError(f"{host.name}/{ifname}: its veth peer is not in {lan.name}")


def impair(lab: Any, host: Any, ifname: str, lan: Any, prof: Profile, *, seed: int | None = None) -> Impaired:
    """Put a forwarder with ``prof`` between ``host``'s veth ``ifname`` and the switch ``lan``
    (see the module docstring). The lab stops the forwarder and deletes its namespace."""
    port = _peer_ifname(host, ifname, lan)
    mid = lab.host(f"x{host.name}")
    mid.sysctl("net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
    lan.ip("link", "set", port, "nomaster")
    lan.ip("link", "set", port, "netns", mid.ns)
    mid.ip("link", "set", port, "name", "near")
    lab.attach(mid, lan, ifname="far")
    for end in ("near", "far"):
        mid.ip("link", "set", end, "promisc", "on", "up")
    deadline = time.monotonic() + 5
    while mid.operstate("near") != "UP" or host.operstate(ifname) != "UP":
        if time.monotonic() > deadline:
            raise RuntimeError(f"{mid.name}/near has no carrier")
        time.sleep(0.005)
    argv = [sys.executable, "-m", "wgdisco.lab.wan", "forward", "--near", "near", "--far", "far", *prof.args()]
    if seed is not None:
        argv += ["--seed", str(seed)]
    proc = mid.popen(argv, name=f"wan-{host.name}")
    proc.wait_for(r"^READY", timeout=10)
    return Impaired(mid, proc, prof)


# ---------------------------------------------------------------- one-way timing

_PROBE = struct.Struct(">Id")  # sequence number, CLOCK_MONOTONIC at sending


def send(target: str, count: int, interval: float, size: int = 64) -> None:
    host, _, port = target.rpartition(":")
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        start = time.monotonic()
        for seq in range(count):
            while time.monotonic() < start + seq * interval:
                time.sleep(max(0.0, start + seq * interval - time.monotonic()))
            s.sendto(_PROBE.pack(seq, time.monotonic()).ljust(size, b"\0"), (host.strip("[]"), int(port)))


def recv(port: int, seconds: float, v6: bool = False) -> dict[str, Any]:
    """One-way delays (ms) of what arrives within ``seconds`` (or until 0.5 s pass without any, after
    the first); duplicates and reordering counted."""
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    delays: list[float] = []
    seen: set[int] = set()
    duplicates = reordered = highest = 0
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.bind(("::" if v6 else "0.0.0.0", port))
        print("READY", flush=True)
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            s.settimeout(min(left, 0.5) if seen else left)
            try:
                data = s.recv(2048)
            except TimeoutError:
                break
            now = time.monotonic()
            seq, sent = _PROBE.unpack_from(data)
            if seq in seen:
                duplicates += 1
                continue
            seen.add(seq)
            if seq < highest:
                reordered += 1
            highest = max(highest, seq)
            delays.append((now - sent) * 1000)
    return {"received": len(seen), "duplicates": duplicates, "reordered": reordered, "delays_ms": delays}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m wgdisco.lab.wan", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("forward")
    f.add_argument("--near", required=True)
    f.add_argument("--far", required=True)
    for name in ("delay", "jitter", "loss", "reorder", "duplicate"):
        f.add_argument(f"--{name}", type=float, default=0.0)
    f.add_argument("--seed", type=int)
    s = sub.add_parser("send")
    s.add_argument("target")
    s.add_argument("--count", type=int, default=100)
    s.add_argument("--interval", type=float, default=0.01)
    r = sub.add_parser("recv")
    r.add_argument("port", type=int)
    r.add_argument("--seconds", type=float, default=5.0)
    r.add_argument("--v6", action="store_true")
    args = ap.parse_args(argv)
    if args.cmd == "forward":
        prof = Profile("cli", args.delay, args.jitter, args.loss, args.reorder, args.duplicate)
        forward(args.near, args.far, Impairment(prof, random.Random(args.seed)))
    elif args.cmd == "send":
        send(args.target, args.count, args.interval)
    else:
        print(json.dumps(recv(args.port, args.seconds, args.v6)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
