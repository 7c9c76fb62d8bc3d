"""``wgdisco demo``: discovery and NAT traversal, shown live in a lab of network namespaces.

The lab (``wgdisco.lab``, the same code the integration tests use; it ships in the package,
so the demo runs from an installed wheel as well as from a checkout)::

                     "internet" 203.0.113.0/24
     STUN 203.0.113.10 + .11 (stund)    Knot 203.0.113.53 (zone wg.example.net, TSIG key)
          |                         |                              |
     easy NAT .1                easy NAT .2                    easy NAT .3
     site A 10.1.0.0/24         site B 10.2.0.0/24             LAN C 10.3.0.0/24
       a (Knot + STUN)            b (Knot + STUN)                c (mDNS + Knot + STUN)
                                                                 d (mDNS only)

Every node knows the public keys of its peers and nothing else: no ``Endpoint`` anywhere.
a, b and c find each other through Knot (unicast DNS-SD, RFC 2136 + TSIG), learn their
reflexive addresses with STUN and punch through the NATs; d has no DNS and no STUN, so it and c
can only find each other by mDNS, and connect over the LAN. The nodes run ``wgdisco up``.

The demo shows a live table while the pairs connect (redrawn in place on a terminal, one line
per change otherwise), pings every pair through the tunnel, prints a summary, removes the lab
(also on Ctrl-C or an error) and exits 0, or 1 naming the pair that failed.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

import wgdisco

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_NO_LAB = 2
EXIT_INTERRUPTED = 130

HANDSHAKE_TIMEOUT = 20.0  # seconds from starting the nodes until every pair must be up
POLL = 0.1  # seconds between looks at the nodes (`wg show IFACE dump` and their logs)
REFRESH = 0.5  # seconds between redraws of the live table on a terminal
PING_COUNT = 3

DOMAIN = "wg.example.net"
WAN = "203.0.113.0/24"
STUN_A, STUN_B, KNOT = "203.0.113.10", "203.0.113.11", "203.0.113.53"
PORT = 51820
TOOLS = ("ip", "nft", "sysctl", "ss", "ping", "wg", "stund", "knotd", "kdig")


@dataclass(frozen=True)
class NodeSpec:
    name: str
    site: int  # the LAN 10.<site>.0.0/24, behind the NAT 203.0.113.<site>
    index: int  # host address 10.<site>.0.<index>
    inner: str  # tunnel address (10.9.0.x)
    mdns: bool  # mDNS on the LAN
    unicast: bool  # Knot (unicast DNS-SD) and STUN

    @property
    def lan_addr(self) -> str:
        return f"10.{self.site}.0.{self.index}"

    @property
    def lan_net(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"10.{self.site}.0.0/24")

    @property
    def methods(self) -> str:
        return " + ".join(m for m, on in (("mDNS", self.mdns), ("Knot", self.unicast), ("STUN", self.unicast)) if on)


SITES = {1: "site A", 2: "site B", 3: "LAN C"}
NODES = (
    NodeSpec("a", 1, 2, "10.9.0.1", mdns=False, unicast=True),
    NodeSpec("b", 2, 2, "10.9.0.2", mdns=False, unicast=True),
    NodeSpec("c", 3, 2, "10.9.0.3", mdns=True, unicast=True),
    NodeSpec("d", 3, 3, "10.9.0.4", mdns=True, unicast=False),
)
SPEC = {n.name: n for n in NODES}


def can_reach(x: NodeSpec, y: NodeSpec) -> bool:
    """Two nodes can find each other: both use Knot, or both mDNS on one LAN."""
    return (x.unicast and y.unicast) or (x.mdns and y.mdns and x.site == y.site)


def found_by(x: NodeSpec, y: NodeSpec) -> str:
    ways = []
    if x.mdns and y.mdns and x.site == y.site:
        ways.append("mDNS")
    if x.unicast and y.unicast:
        ways.append("Knot + STUN")
    return ", ".join(ways)


PAIRS = tuple((x.name, y.name) for i, x in enumerate(NODES) for y in NODES[i + 1:] if can_reach(x, y))


# --------------------------------------------------------------------------- pure parts


@dataclass
class PairStatus:
    """What the demo knows about one pair; ``x`` and ``y`` are node names."""

    x: str
    y: str
    found_by: str = ""
    state: str = "waiting"  # waiting -> handshake (one side) -> lan | direct (both sides)
    endpoint_xy: str | None = None  # where x sends to y
    endpoint_yx: str | None = None
    t_handshake: float | None = None  # seconds from starting the nodes to the first handshake
    says: str = ""  # the nodes' latest "path:" log lines about each other
    rtt_ms: float | None = None
    ping: str = ""  # "3/3"

    @property
    def label(self) -> str:
        return f"{self.x} <-> {self.y}"

    @property
    def up(self) -> bool:
        return self.state in ("lan", "direct")


def endpoint_ip(endpoint: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """``"203.0.113.2:51820"`` or ``"[fd00::2]:51820"`` -> the address."""
    host = endpoint.rsplit(":", 1)[0].strip("[]")
    return ipaddress.ip_address(host.split("%", 1)[0])


def classify_path(endpoint: str, local: Sequence[Any]) -> str:
    """``lan`` when the endpoint is on one of the sender's own networks, else ``direct`` (through NATs)."""
    ip = endpoint_ip(endpoint)
    return "lan" if any(ip.version == net.version and ip in net for net in local) else "direct"


def observe(st: PairStatus, xy: dict | None, yx: dict | None, local_x: Sequence[Any], t: float) -> bool:
    """Update ``st`` from both sides' ``wg show dump`` rows for each other; True if it changed.

    ``xy`` is x's row for peer y (keys ``endpoint``, ``latest_handshake``), None if absent.
    """
    before = (st.state, st.endpoint_xy, st.endpoint_yx)
    st.endpoint_xy = xy["endpoint"] if xy else None
    st.endpoint_yx = yx["endpoint"] if yx else None
    hs_x = bool(xy and xy["latest_handshake"])
    hs_y = bool(yx and yx["latest_handshake"])
    if (hs_x or hs_y) and st.t_handshake is None:
        st.t_handshake = t
    if hs_x and hs_y and st.endpoint_xy and st.endpoint_yx:
        st.state = classify_path(st.endpoint_xy, local_x)
    elif hs_x or hs_y:
        st.state = "handshake"
    elif not st.up:  # a live pair stays up between two handshakes
        st.state = "waiting"
    return (st.state, st.endpoint_xy, st.endpoint_yx) != before


def latest_reason(log: str, short_key: str) -> str:
    """The last ``peer KEY: path: REASON`` of a daemon's log for one peer ("" if none yet)."""
    found = re.findall(rf"peer {re.escape(short_key)}: path: (.*)$", log, re.MULTILINE)
    return found[-1].strip() if found else ""


def parse_ping(output: str) -> tuple[int, int, float | None]:
    """(sent, received, average RTT in ms) from iputils ping's summary."""
    m = re.search(r"(\d+) packets transmitted, (\d+) received", output)
    sent, received = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    rtt = re.search(r"= [\d.]+/([\d.]+)/[\d.]+/[\d.]+ ms", output)
    return sent, received, float(rtt.group(1)) if rtt else None


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ",
                 min_widths: Sequence[int] = ()) -> list[str]:
    """Left-aligned columns, two spaces apart, no trailing blanks; ``min_widths`` keeps a live table still."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    widths = [max(w, m) for w, m in zip(widths, [*min_widths, *[0] * len(widths)])]
    return [(indent + "  ".join(str(c).ljust(w) for c, w in zip(r, widths))).rstrip() for r in [headers, *rows]]


def _secs(t: float | None) -> str:
    return "-" if t is None else f"{t:.1f} s"


def live_lines(statuses: Sequence[PairStatus], elapsed: float) -> list[str]:
    rows = [[s.label, s.state, s.endpoint_xy or "-", s.endpoint_yx or "-", _secs(s.t_handshake), s.says]
            for s in statuses]
    up = sum(s.up for s in statuses)
    return [f"  {elapsed:4.1f} s: {up}/{len(statuses)} pairs connected",
            *format_table(["pair", "state", "->", "<-", "handshake", "what the nodes say"], rows,
                          min_widths=[0, 9, 19, 19, 9])]


def change_line(st: PairStatus, elapsed: float) -> str:
    """One line per change, when the output is not a terminal."""
    if st.up:
        what = f"{st.endpoint_xy} / {st.endpoint_yx}"
    elif st.state == "handshake":
        what = " / ".join(e or "-" for e in (st.endpoint_xy, st.endpoint_yx))
    else:
        what = st.says or "no news yet"
    return f"  [{elapsed:4.1f} s] {st.label}  {st.state:<9}  {what}".rstrip()


SUMMARY_HEADERS = ["pair", "found by", "path", "->", "<-", "first handshake", f"ping (avg of {PING_COUNT})"]


def summary_lines(statuses: Sequence[PairStatus]) -> list[str]:
    rows = []
    for s in statuses:
        ping = f"{s.rtt_ms:.3f} ms ({s.ping})" if s.rtt_ms is not None else (s.ping or "-")
        rows.append([s.label, s.found_by, s.state if s.up else "none", s.endpoint_xy or "-", s.endpoint_yx or "-",
                     _secs(s.t_handshake), ping])
    return format_table(SUMMARY_HEADERS, rows)


SUMMARY_ROW = re.compile(r"^\s+(\w+) <-> (\w+)\s+(.+?)\s+(lan|direct|none)\s+(\S+)\s+(\S+)\s+([\d.]+ s|-)\s+(.*)$")


def parse_summary(text: str) -> dict[tuple[str, str], dict[str, str]]:
    """The summary table back into {(x, y): {path, xy, yx, handshake, ping}} (for tests and scripts)."""
    rows = {}
    for line in text.splitlines():
        if m := SUMMARY_ROW.match(line):
            rows[(m.group(1), m.group(2))] = {"found_by": m.group(3), "path": m.group(4), "xy": m.group(5),
                                              "yx": m.group(6), "handshake": m.group(7), "ping": m.group(8)}
    return rows


class Screen:
    """Prints progress; on a terminal, redraws the live table in place."""

    def __init__(self, out: TextIO, tty: bool) -> None:
        self.out = out
        self.tty = tty
        self.drawn = 0

    def say(self, text: str = "") -> None:
        self.drawn = 0
        print(text, file=self.out, flush=True)

    def draw(self, lines: list[str]) -> None:
        width = shutil.get_terminal_size((120, 24)).columns - 1  # no wrapping: it would break the redraw
        buf = f"\r\x1b[{self.drawn}A" if self.drawn else ""
        buf += "".join("\x1b[2K" + line[:width] + "\n" for line in lines)
        self.out.write(buf)
        self.out.flush()
        self.drawn = len(lines)


# ------------------------------------------------------------------------ the lab


def package_root() -> Path:
    """The directory holding this wgdisco package (a source checkout or site-packages): the nodes' PYTHONPATH."""
    return Path(wgdisco.__file__).resolve().parents[1]


def import_lab() -> ModuleType:
    """``wgdisco.lab``, the namespace lab (part of the package; ImportError only from a broken install).

    Imported here, on demand: the daemon's own code never imports the lab.
    """
    import importlib

    return importlib.import_module("wgdisco.lab")


def missing_tools() -> list[str]:
    sbin = os.pathsep.join((os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"))
    return [t for t in TOOLS if shutil.which(t, path=sbin) is None]


@contextlib.contextmanager
def no_sigint() -> Iterator[None]:
    """Teardown must finish: a second Ctrl-C while namespaces are deleted is ignored."""
    try:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


class Demo:
    def __init__(self, lab: Any, screen: Screen, root: Path, timeout: float) -> None:
        self.lab = lab
        self.screen = screen
        self.root = root
        self.timeout = timeout
        self.nodes: dict[str, Any] = {}  # name -> wgdisco.lab.wg.Node
        self.statuses = [PairStatus(x, y, found_by(SPEC[x], SPEC[y])) for x, y in PAIRS]

    # -- building
    def build(self) -> None:
        from wgdisco.lab.knot import start_knot
        from wgdisco.lab.wg import Node, PeerSpec, keypair

        lab, say = self.lab, self.screen.say
        say(f"building the lab (namespaces {lab.prefix}*)...")
        wan = lab.lan("wan")
        srv = lab.host("srv")
        ifname = lab.attach(srv, wan, f"{STUN_A}/24")
        srv.add_addr(ifname, f"{STUN_B}/24")
        srv.add_addr(ifname, f"{KNOT}/24")
        stund = srv.popen(["stund", "-v", "-h", STUN_A, "-a", STUN_B], name="stund")
        say(f"  internet {WAN}: STUN at {STUN_A}:3478 and {STUN_B}:3478 (stund), "
            f"DNS at {KNOT} (Knot, zone {DOMAIN}, TSIG key)")
        knot = start_knot(srv, [KNOT], zone=DOMAIN + ".")
        deadline = time.monotonic() + 10
        while f"{STUN_A}:3478" not in srv.run(["ss", "-Hnlu"]).stdout:
            if not stund.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"stund did not start: {stund.stdout()}{stund.stderr()}")
            time.sleep(0.05)
        hosts = {}
        for site in sorted({n.site for n in NODES}):
            members = [n for n in NODES if n.site == site]
            lan = lab.lan(f"lan{site}")
            lab.nat_router(f"nat{site}", lan=lan, wan=wan, lan_addr=f"10.{site}.0.1/24",
                           wan_addr=f"203.0.113.{site}/24", kind="easy")
            for n in members:
                hosts[n.name] = h = lab.host(n.name)
                lab.attach(h, lan, f"{n.lan_addr}/24")
                h.add_route("default", via=f"10.{site}.0.1")
            say(f"  {SITES[site]} 10.{site}.0.0/24 behind an easy NAT (203.0.113.{site}): " +
                ", ".join(f"{n.name} {n.lan_addr} ({n.methods})" for n in members))
        tag = lab.prefix[3:9]
        for n in NODES:
            disc = {"mDNS": "on" if n.mdns else "off"}
            if n.unicast:
                disc |= {"STUN": f"{STUN_A}:3478, {STUN_B}:3478", "Domain": DOMAIN, "Nameserver": KNOT,
                         "UpdateKey": knot.update_key}
            self.nodes[n.name] = Node(hosts[n.name], "wgdisco", f"w{n.name}{tag}", *keypair(), [f"{n.inner}/24"],
                                      listen_port=PORT, discovery=disc)
        for x, y in PAIRS:
            nx, ny = self.nodes[x], self.nodes[y]
            # no Endpoint: only the key and the tunnel address; a keepalive holds the NAT mappings open
            nx.peers.append(PeerSpec(ny.public, ny.host_routes(), None, 25))
            ny.peers.append(PeerSpec(nx.public, nx.host_routes(), None, 25))

    def start_nodes(self) -> float:
        """Start every node (``wgdisco up CONFIG``) at once; returns the start time."""
        self.screen.say(f"starting {len(self.nodes)} nodes (each knows its peers' public keys, no Endpoint)...")
        for name, node in self.nodes.items():
            peers = sorted({y for x, y in PAIRS if x == name} | {x for x, y in PAIRS if y == name})
            self.screen.say(f"  {name}: tunnel {node.inner4}, peers {', '.join(peers)}")
        t0 = time.monotonic()
        for node in self.nodes.values():
            conf = self.lab.logdir / f"{node.iface}.conf"  # the interface is named after the file
            conf.write_text(node.config_text())
            conf.chmod(0o600)
            node.proc = node.host.popen([sys.executable, "-m", "wgdisco", "up", str(conf)],
                                        name=f"wgdisco-{node.iface}", env={"PYTHONPATH": str(self.root)})
        for node in self.nodes.values():
            node.proc.wait_for(r"interface \S+ up:", timeout=15, stream="stderr")
        self.screen.say(f"{len(self.nodes)} nodes up after {time.monotonic() - t0:.1f} s; "
                        "they discover each other and punch through the NATs:")
        return t0

    # -- watching
    def dead_node(self) -> str | None:
        for name, node in self.nodes.items():
            if not node.proc.alive():
                tail = "\n".join(node.proc.stderr().splitlines()[-8:])
                return f"node {name} exited with {node.proc.returncode}:\n{tail}"
        return None

    def look(self, t: float) -> list[PairStatus]:
        """One look at every node; the pairs that changed."""
        dumps = {name: node.dump() for name, node in self.nodes.items()}
        logs = {name: node.proc.stderr() for name, node in self.nodes.items()}
        changed = []
        for st in self.statuses:
            nx, ny = self.nodes[st.x], self.nodes[st.y]
            says_before = st.says
            rx = latest_reason(logs[st.x], ny.public[:8] + "…")
            ry = latest_reason(logs[st.y], nx.public[:8] + "…")
            st.says = "; ".join(f"{n}: {r}" for n, r in ((st.x, rx), (st.y, ry)) if r)
            moved = observe(st, dumps[st.x].get(ny.public), dumps[st.y].get(nx.public), [SPEC[st.x].lan_net], t)
            if moved or (st.says != says_before and not st.up):
                changed.append(st)
        return changed

    def watch(self, t0: float) -> list[str]:
        """Until every pair is up or the time is over; the failures."""
        screen = self.screen
        last_draw = 0.0
        while True:
            now = time.monotonic()
            if dead := self.dead_node():
                return [dead]
            try:
                changed = self.look(now - t0)
            except subprocess.SubprocessError as e:
                if dead := self.dead_node():
                    return [dead]
                return [f"cannot read the nodes' state: {e}"]
            done = all(s.up for s in self.statuses) or now - t0 >= self.timeout
            if screen.tty:
                if now - last_draw >= REFRESH or done:
                    screen.draw(live_lines(self.statuses, now - t0))
                    last_draw = now
            else:
                for st in changed:
                    screen.say(change_line(st, now - t0))
            if done:
                break
            time.sleep(POLL)
        return [f"{s.x} -> {s.y}: no handshake within {self.timeout:.0f} s" + (f" ({s.says})" if s.says else "")
                for s in self.statuses if not s.up]

    # -- pinging
    def ping_all(self) -> list[str]:
        self.screen.say(f"pinging every pair through the tunnel ({PING_COUNT} pings each)...")

        def ping(st: PairStatus) -> None:
            node = self.nodes[st.x]
            cp = node.host.run(["ping", "-n", "-q", "-c", str(PING_COUNT), "-i", "0.2", "-W", "1",
                                self.nodes[st.y].inner4], check=False, timeout=15)
            sent, received, st.rtt_ms = parse_ping(cp.stdout)
            st.ping = f"{received}/{sent or PING_COUNT}"
            if received < PING_COUNT:
                failed.append(f"{st.x} -> {st.y}: ping through the tunnel ({self.nodes[st.y].inner4}): "
                              f"{st.ping} answered")

        failed: list[str] = []
        with concurrent.futures.ThreadPoolExecutor(len(self.statuses)) as pool:
            list(pool.map(ping, self.statuses))
        return sorted(failed)

    def stop_nodes(self) -> None:
        """Stop the nodes together, while Knot still runs (they withdraw their records)."""
        procs = [n.proc for n in self.nodes.values() if n.proc is not None]
        with concurrent.futures.ThreadPoolExecutor(max(len(procs), 1)) as pool:
            list(pool.map(lambda p: p.stop(grace=3.0), procs))


def run(out: TextIO, err: TextIO, root: Path, tty: bool, timeout: float) -> int:
    from wgdisco.lab import Lab

    started = time.monotonic()
    screen = Screen(out, tty)
    screen.say("wgdisco demo: peers with no Endpoint find each other (mDNS, Knot) and connect through NATs (STUN)")
    lab = Lab()
    failures: list[str] = []
    demo = Demo(lab, screen, root, timeout)
    try:
        t = time.monotonic()
        demo.build()
        screen.say(f"lab ready after {time.monotonic() - t:.1f} s ({len(lab.namespaces())} namespaces)")
        t0 = demo.start_nodes()
        failures = demo.watch(t0)
        if not failures:
            failures = demo.ping_all()
        screen.say()
        screen.say("summary (->: where the left node sends to the right one, <-: the other way; "
                   "first handshake: after starting the nodes):")
        for line in summary_lines(demo.statuses):
            screen.say(line)
    except (RuntimeError, subprocess.SubprocessError, OSError) as e:  # LabError is a RuntimeError
        failures = [f"lab: {e}"]
    finally:
        screen.say("removing the lab...")
        with no_sigint():
            lab.keep_logs = bool(failures)
            try:
                demo.stop_nodes()
            finally:
                try:
                    lab.close()
                except RuntimeError as e:
                    failures.append(f"removing the lab: {e} (`make lab-clean` removes what is left)")
    total = time.monotonic() - started
    if failures:
        for f in failures:
            print(f"wgdisco demo: FAILED: {f}", file=err, flush=True)
        print(f"wgdisco demo: the nodes' logs are in {lab.logdir}", file=err, flush=True)
        return EXIT_FAILED
    direct = sum(s.state == "direct" for s in demo.statuses)
    lan = sum(s.state == "lan" for s in demo.statuses)
    screen.say(f"wgdisco demo: OK: {len(demo.statuses)} pairs connected ({direct} direct through NATs, "
               f"{lan} on the LAN) and pinged; {total:.1f} s in all")
    return EXIT_OK


def main(out: TextIO | None = None, err: TextIO | None = None, *, timeout: float = HANDSHAKE_TIMEOUT) -> int:
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    root = package_root()
    try:
        import_lab()
    except ImportError as e:
        print(f"wgdisco demo: cannot import the namespace lab (wgdisco.lab) from {root}: {e}; "
              "reinstall wgdisco", file=err)
        return EXIT_NO_LAB
    if os.geteuid() != 0:
        print("wgdisco demo: needs root (it creates network namespaces): run `sudo make demo`", file=err)
        return EXIT_FAILED
    if missing := missing_tools():
        print(f"wgdisco demo: missing programs: {', '.join(missing)} (`make demo` installs them)", file=err)
        return EXIT_FAILED
    tty = out.isatty() if hasattr(out, "isatty") else False
    try:
        return run(out, err, root, tty, timeout)
    except KeyboardInterrupt:
        print("\nwgdisco demo: interrupted; the lab is removed", file=err, flush=True)
        return EXIT_INTERRUPTED
