"""``wgdisco netcheck``: what the network looks like from here, without a running daemon.

Theory of operation
-------------------
Synchronous on purpose (netlink must not be called from a running asyncio
loop, and a one-shot report needs no loop):

1. Local candidates: every usable interface address
   (``netlink.interface_addresses``: no loopback, no link-local).
2. STUN: one UDP socket (``udp.open_udp(0)``, dual-stack, an ephemeral port)
   and the daemon's own core, ``NatObserver(servers, refresh=None)``
   (proto/reflexive.py: ``StunClient`` and ``NatClassifier``), until every
   server answered, failed or could not be sent to, or until the timeout
   (RFC 5389 retransmissions: 0, 0.5, 1.5 s ... within it).  Only the servers
   the user named are contacted: with none, no datagram is sent at all.
   Every part is driven by one select() loop (``_drive``) around the cores'
   drive step (proto/core.py ``run_timers``/``flush``, as the data plane's).
3. Hairpinning (RFC 4787 §6): a second socket sends a token to the first
   socket's IPv4 reflexive address; "yes" if the NAT turns it back to us
   within ``HAIRPIN_WAIT``.  Only tried when an IPv4 reflexive address is known.

4. Port mapping (on with ``--stun``, or asked for with ``--port-mapping``): the IPv4 default
   route's next hop gets a PCP ANNOUNCE (RFC 6887 §14.1) and a NAT-PMP external address
   request (RFC 6886 §3.2), neither of which creates a mapping, from a socket of its own,
   sent at 0, 0.25 and 0.5 s and awaited for PORTMAP_WAIT (proto/portmap.py ``GatewayProbe``);
   then UPnP IGD is looked for with
   miniupnpc (SSDP: about 1 s when an IGD answers, 4 s when none does). Only the gateway is
   asked. This runs in a thread beside the STUN part.

The mapping behaviour is ``StunClient.mapping_behaviour()`` (RFC 4787 §4.1):
"varies by destination" is True for endpoint-dependent, False for
endpoint-independent (which needs answers from two server IPs), else unknown.
When a server names an alternate address (RFC 5780 OTHER-ADDRESS, RFC 3489
CHANGED-ADDRESS: stund, coturn with two IPs), ``proto/natclass.py``'s tests run
on the same socket as soon as the first such answer comes (``NatObserver``), beside
the STUN transactions still open: the filtering behaviour (RFC 4787 §5) and
whether a mapping that varies depends on the destination's address only or its
port too (at most ``2 × natclass.WAIT`` seconds from that answer, which may go
past the timeout).
The netcheck socket is not the tunnel's: behind a NAT that varies, the
daemon's own port is mapped differently.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import select
import socket
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from wgdisco import config
from wgdisco.errors import LocalError
from wgdisco.io import udp
from wgdisco.proto.classify import STUN, classify
from wgdisco.proto.core import Core, flush, run_timers
from wgdisco.proto.nat import Mapping
from wgdisco.proto.portmap import GatewayProbe
from wgdisco.proto.reflexive import NatObserver
from wgdisco.proto.stun import StunFailed

DEFAULT_TIMEOUT = 3.0
MAX_TIMEOUT = 60.0
HAIRPIN_WAIT = 0.3  # seconds; a hairpinned datagram never leaves the NAT box
HAIRPIN_SENDS = 2
HAIRPIN_MAGIC = b"wgdisco-hairpin\x00"
PORTMAP_WAIT = 1.0  # seconds for the gateway's PCP / NAT-PMP answers
JSON_VERSION = 1
_TRANSIENT = (errno.EAGAIN, errno.ENOBUFS, errno.EINTR)

Endpoint = tuple[str, int]


def hostport(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def parse_servers(values: Iterable[str]) -> list[str]:
    """``--stun`` values (each ``host:port``, ``[v6]:port``, a bare host for port 3478, or a
    comma-separated list of these) as normalised ``host:port`` strings, duplicates dropped.

    ValueError with a message naming the bad value.
    """
    out: list[str] = []
    for value in values:
        try:
            servers = config.parse_stun_servers(value)
        except ValueError as e:
            raise ValueError(f"--stun {value!r}: {e}") from None
        if not servers:
            raise ValueError(f"--stun {value!r}: no server (want HOST:PORT or [IPv6]:PORT)")
        out += [str(s) for s in servers]
    return list(dict.fromkeys(out))


def check_timeout(value: float) -> float:
    if not 0 < value <= MAX_TIMEOUT:
        raise ValueError(f"--timeout {value:g}: want seconds in (0, {MAX_TIMEOUT:g}]")
    return value


@dataclass
class ServerResult:
    server: str  # as given, normalised: host:port or [v6]:port
    address: Endpoint | None = None  # the resolved IP and port
    mapped: Endpoint | None = None  # the reflexive address this server saw
    rtt_ms: float | None = None  # first request to answer (retransmissions included)
    error: str | None = None  # why there is no answer

    @property
    def family(self) -> int | None:
        return None if self.address is None else ipaddress.ip_address(self.address[0]).version


@dataclass
class InterfaceAddress:
    interface: str
    address: str
    prefixlen: int


@dataclass
class PortMapReport:
    """Which port-mapping protocols the default gateway answered (None: not asked)."""

    gateway: str | None = None
    pcp: bool | None = None
    natpmp: bool | None = None
    natpmp_external: str | None = None
    upnp: bool | None = None
    upnp_external: str | None = None
    error: str | None = None  # why nothing was asked (no default route, no socket)

    @property
    def answered(self) -> list[str]:
        return [name for name, ok in (("pcp", self.pcp), ("natpmp", self.natpmp), ("upnp", self.upnp)) if ok]


@dataclass
class Report:
    servers: list[ServerResult] = field(default_factory=list)
    local_port: int | None = None
    behaviour: str = "unknown"  # RFC 4787 §4.1, as StunClient.mapping_behaviour()
    mapping_detail: str = "unknown"  # the same, endpoint-dependent refined by the RFC 5780 test
    filtering: str = "unknown"  # RFC 4787 §5, from the RFC 5780 tests (natclass.py)
    hairpinning: bool | None = None
    candidates: list[InterfaceAddress] = field(default_factory=list)
    candidates_error: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    port_mapping: PortMapReport | None = None

    @property
    def answered(self) -> list[ServerResult]:
        return [s for s in self.servers if s.mapped is not None]

    @property
    def not_answering(self) -> list[ServerResult]:
        return [s for s in self.servers if s.mapped is None]

    @property
    def udp(self) -> bool | None:
        return bool(self.answered) if self.servers else None

    def reachable(self, family: int) -> bool | None:
        """Did a server of this address family answer; None when none was asked."""
        asked = [s for s in self.servers if s.family == family]
        return any(s.mapped is not None for s in asked) if asked else None

    def reflexive(self, family: int | None = None) -> list[Endpoint]:
        """Distinct mapped addresses in server order (of one family of the mapped address)."""
        got = [s.mapped for s in self.answered if s.mapped is not None]
        if family is not None:
            got = [m for m in got if ipaddress.ip_address(m[0]).version == family]
        return list(dict.fromkeys(got))

    @property
    def mapping_varies(self) -> bool | None:
        return {"endpoint-dependent": True, "endpoint-independent": False}.get(self.behaviour)

    @property
    def behind_nat(self) -> bool | None:
        """False when every reflexive IP is one of our own addresses (no NAT on the way)."""
        reflexive = self.reflexive()
        if not reflexive:
            return None
        local = {c.address for c in self.candidates}
        return not all(ip in local for ip, _ in reflexive)


# ------------------------------------------------------------------- running


def run(servers: list[str], *, timeout: float = DEFAULT_TIMEOUT, hairpin_wait: float = HAIRPIN_WAIT,
        clock: Callable[[], float] = time.monotonic, port_mapping: bool | None = None) -> Report:
    """The whole check, blocking for at most about ``timeout + hairpin_wait`` seconds, plus
    about 2 s for the port-mapping check (``port_mapping``; None: on when ``servers`` are given).

    ``servers`` come from ``parse_servers``.  LocalError when no UDP socket can be opened.
    """
    report = Report(servers=[ServerResult(s) for s in servers], timeout=timeout)
    report.candidates, report.candidates_error = local_candidates()
    with ThreadPoolExecutor(1, thread_name_prefix="netcheck-portmap") as pool:
        # beside STUN: miniupnpc's SSDP search alone takes 4 s when no IGD answers
        pm = pool.submit(port_mapping_check, clock=clock) if port_mapping or (port_mapping is None and servers) else None
        if servers:
            _stun_part(report, servers, timeout, hairpin_wait, clock)
        if pm is not None:
            report.port_mapping = pm.result()
    return report


def _stun_part(report: Report, servers: list[str], timeout: float, hairpin_wait: float,
               clock: Callable[[], float]) -> None:
    sock = udp.open_udp(0)
    try:
        report.local_port = udp.local_port(sock)
        targets = _resolve(sock, report.servers)
        if targets:
            _stun(sock, targets, timeout, clock, report)
        v4 = report.reflexive(4)
        if v4:
            report.hairpinning = hairpin(sock, v4[0], hairpin_wait, clock)
    finally:
        sock.close()


def local_candidates() -> tuple[list[InterfaceAddress], str | None]:
    from wgdisco.io import netlink  # pyroute2 only when needed

    try:
        found = netlink.interface_addresses()
    except (LocalError, OSError) as e:
        return [], str(e)
    return [InterfaceAddress(name, str(iface.ip), iface.network.prefixlen) for name, iface in found], None


def _resolve(sock: socket.socket, results: list[ServerResult]) -> dict[Any, list[ServerResult]]:
    """Socket address -> the results it answers for (two names may be one server)."""
    targets: dict[Any, list[ServerResult]] = {}
    for result in results:
        host, _, port = result.server.rpartition(":")
        try:
            addr = udp.to_sockaddr(sock, host.strip("[]"), int(port))
        except LocalError as e:
            result.error = str(e)
            continue
        result.address = udp.from_sockaddr(addr)
        targets.setdefault(addr, []).append(result)
    return targets


def _drive(sock: socket.socket, core: Any, send: Callable[[list[tuple[bytes, Any]]], None],
           receive: Callable[[bytes, Any, float], None], finished: Callable[[float], bool],
           clock: Callable[[], float], on_event: Callable[[Any], None] = lambda event: None,
           until: Callable[[], float | None] = lambda: None) -> None:
    """netcheck's one loop: ``core``'s timers and what it queued (proto/core.py ``run_timers`` and
    ``flush``, the drive step of the data plane and the simulator), what ``sock`` receives to
    ``receive``, until ``finished(now)``; select() sleeps until the core's next deadline or
    ``until()``, whichever comes first."""
    while True:
        now = clock()
        deadline = run_timers(core, now)
        flush(core, send, on_event)
        if finished(now):
            return
        wake = min((t for t in (deadline, until()) if t is not None), default=now + 0.05)
        readable, _, _ = select.select([sock], [], [], max(0.0, wake - now))
        if readable:
            for data, src in _drain(sock):
                receive(data, src, clock())
                flush(core, send, on_event)


def _stun(sock: socket.socket, targets: dict[Any, list[ServerResult]], timeout: float,
          clock: Callable[[], float], report: Report) -> None:
    """STUN and the RFC 5780 tests on ``sock`` with the daemon's own core (``NatObserver``:
    ``StunClient`` without refresh, and ``NatClassifier`` against the first answer naming an
    alternate address); fills the results and the report's NAT behaviour in."""
    observer = NatObserver(list(targets), rng=os.urandom, refresh=None,
                           host_of=lambda addr: udp.from_sockaddr(addr)[0],
                           addr_of=lambda ip, port: udp.to_sockaddr(sock, ip, port))
    stun, classifier = observer.stun, observer.classifier
    first_sent: dict[Any, float] = {}
    done: dict[Any, str | None] = {}  # server -> None (answered) or why not
    unsendable: set[Any] = set()
    start = clock()
    deadline = start + timeout
    over = False  # the STUN part is over (every server done, or the timeout): results are kept

    def send(datagrams: list[tuple[bytes, Any]]) -> None:
        now = clock()
        for data, addr in datagrams:
            first_sent.setdefault(addr, now)
            if addr in unsendable or (over and addr in targets and addr not in stun.mapped):
                continue  # (a server that never answered gets no more requests once it is over)
            try:
                sock.sendto(data, addr)
            except OSError as e:
                if addr in targets and addr not in done and e.errno not in _TRANSIENT:
                    done[addr] = f"cannot send: {e.strerror or e}"
                    unsendable.add(addr)

    def receive(data: bytes, src: Any, at: float) -> None:
        if classify(data) != STUN:
            return
        if over:  # the results are kept as they were; the RFC 5780 tests, if they run, go on
            if classifier.get_timer() is not None:
                observer.receive(data, src, at)
            return
        errors = stun.counters.error_responses
        if not observer.receive(data, src, at) or src not in targets or src in done:
            return
        if src in stun.mapped:
            done[src] = None
            for r in targets[src]:
                r.mapped = stun.mapped[src]
                r.rtt_ms = round((at - first_sent[src]) * 1000, 1)
        elif stun.counters.error_responses > errors:
            done[src] = "error response"

    def on_event(event: Any) -> None:
        if isinstance(event, StunFailed) and not over:
            done.setdefault(event.server, f"no answer after {stun.rc} requests")

    def finished(now: float) -> bool:
        nonlocal over
        if not over and (len(done) == len(targets) or now >= deadline):
            over = True
            report.behaviour = report.mapping_detail = observer.behaviour
        return over and classifier.get_timer() is None  # the RFC 5780 tests, once begun, end

    observer.start(start)
    _drive(sock, observer, send, receive, finished, clock, on_event, until=lambda: None if over else deadline)
    for addr, rs in targets.items():
        why = done.get(addr, f"no answer within {timeout:g} s")
        for r in rs:
            if r.mapped is None:
                r.error = why
    report.filtering = observer.filtering
    if report.behaviour == Mapping.DEPENDENT and classifier.done and classifier.mapping is not None:
        report.mapping_detail = classifier.mapping


def port_mapping_check(*, wait: float = PORTMAP_WAIT, clock: Callable[[], float] = time.monotonic,
                       upnp: Any = None) -> PortMapReport:
    """Ask the default gateway which port-mapping protocols it speaks (nothing is mapped)."""
    from wgdisco.io import netlink
    from wgdisco.io import portmap as shell
    from wgdisco.proto import pcp

    try:
        found = netlink.default_gateway()
    except (LocalError, OSError) as e:
        return PortMapReport(error=f"cannot read the default route: {e}")
    if found is None:
        return PortMapReport(error="no IPv4 default route")
    gateway, source = found
    report = PortMapReport(gateway=gateway, pcp=False, natpmp=False)
    try:
        sock = shell.open_socket(source)
    except OSError as e:
        report.error = f"cannot open a socket on {source}: {e.strerror or e}"
        report.pcp = report.natpmp = None
    else:
        try:
            _ask_gateway(sock, (gateway, pcp.PORT), source, report, wait, clock)
        finally:
            sock.close()
    client = upnp if upnp is not None else shell.UpnpClient()
    external, why = client.probe()
    report.upnp = external is not None or why is None
    report.upnp_external = external
    return report


def _ask_gateway(sock: socket.socket, gw: tuple[str, int], source: str, report: PortMapReport, wait: float,
                 clock: Callable[[], float]) -> None:
    """PCP ANNOUNCE and NAT-PMP's external address request (proto/portmap.py ``GatewayProbe``)."""
    probe = GatewayProbe(gw, source, wait=wait)

    def send(datagrams: list[tuple[bytes, Any]]) -> None:
        for data, addr in datagrams:
            try:
                sock.sendto(data, addr)
            except OSError:
                pass

    probe.start(clock())
    _drive(sock, probe, send, lambda data, src, now: probe.receive(data, src[:2], now),
           lambda now: probe.done, clock)
    report.pcp, report.natpmp, report.natpmp_external = probe.pcp, probe.natpmp, probe.natpmp_external


def _drain(sock: socket.socket) -> list[tuple[bytes, Any]]:
    out = []
    while True:
        try:
            out.append(sock.recvfrom(2048))
        except (BlockingIOError, InterruptedError):
            return out
        except OSError:  # an ICMP error reported on the socket: the next read goes on
            continue


class _Hairpin(Core):
    """Send ``token`` to ``dest`` HAIRPIN_SENDS times within ``wait``; ``arrived`` when it comes back."""

    def __init__(self, token: bytes, dest: Any, wait: float, now: float) -> None:
        super().__init__()
        self.token, self.dest = token, dest
        self.end, self.next_send, self.sends, self.interval = now + wait, now, 0, wait / (HAIRPIN_SENDS + 1)
        self.arrived = self.failed = False

    def next_deadline(self) -> float | None:
        return min(self.next_send, self.end) if self.sends < HAIRPIN_SENDS else self.end

    def handle_timer(self, now: float) -> None:
        if self.sends < HAIRPIN_SENDS and now >= self.next_send and now < self.end:
            self._outbox.append((self.token, self.dest))
            self.sends += 1
            self.next_send = now + self.interval

    def receive(self, data: bytes, addr: Any, now: float) -> None:
        if data == self.token:
            self.arrived = True


def hairpin(sock: socket.socket, reflexive: Endpoint, wait: float,
            clock: Callable[[], float] = time.monotonic) -> bool:
    """Send a token from a second socket to ``sock``'s reflexive address; True if it arrives on ``sock``."""
    token = HAIRPIN_MAGIC + os.urandom(16)
    other = udp.open_udp(0)
    try:
        check = _Hairpin(token, udp.to_sockaddr(other, *reflexive), wait, clock())

        def send(datagrams: list[tuple[bytes, Any]]) -> None:
            for data, addr in datagrams:
                try:
                    other.sendto(data, addr)
                except OSError:
                    check.failed = True

        _drive(sock, check, send, check.receive,
               lambda now: check.arrived or check.failed or now >= check.end, clock, until=lambda: check.end)
        return check.arrived and not check.failed
    finally:
        other.close()


def exit_code(report: Report) -> int:
    """0 when a server answered or none was given, 1 when servers were given and none answered."""
    return 1 if report.servers and not report.answered else 0


# ----------------------------------------------------------------- reporting


def _ep(addr: Endpoint | None) -> str | None:
    return None if addr is None else hostport(*addr)


def to_json(report: Report) -> dict[str, Any]:
    """The ``--json`` object; docs/cli.md documents the schema (version 1)."""
    v4, v6 = report.reflexive(4), report.reflexive(6)
    return {
        "version": JSON_VERSION,
        "stun_servers_configured": bool(report.servers),
        "timeout": report.timeout,
        "local_port": report.local_port,
        "udp": report.udp,
        "ipv4": report.reachable(4),
        "ipv4_address": _ep(v4[0]) if v4 else None,
        "ipv6": report.reachable(6),
        "ipv6_address": _ep(v6[0]) if v6 else None,
        "reflexive": [_ep(a) for a in report.reflexive()],
        "mapping_varies_by_dest_ip": report.mapping_varies,
        "mapping_behaviour": report.behaviour,
        "mapping": report.mapping_detail,
        "filtering": report.filtering,
        "behind_nat": report.behind_nat,
        "hairpinning": report.hairpinning,
        "local_candidates": [
            {"interface": c.interface, "address": c.address, "prefixlen": c.prefixlen} for c in report.candidates
        ],
        "local_candidates_error": report.candidates_error,
        "servers": [
            {
                "server": s.server,
                "address": _ep(s.address),
                "family": s.family,
                "answered": s.mapped is not None,
                "mapped": _ep(s.mapped),
                "rtt_ms": s.rtt_ms,
                "error": s.error,
            }
            for s in report.servers
        ],
        "not_answering": [s.server for s in report.not_answering],
        "port_mapping": None if (pm := report.port_mapping) is None else {
            "gateway": pm.gateway, "pcp": pm.pcp, "natpmp": pm.natpmp, "natpmp_external": pm.natpmp_external,
            "upnp": pm.upnp, "upnp_external": pm.upnp_external, "answered": pm.answered, "error": pm.error,
        },
    }


def _yes_no(value: bool | None) -> str:
    return {True: "yes", False: "no", None: "unknown"}[value]


def format_report(report: Report) -> str:
    """The human report, in the spirit of ``tailscale netcheck``."""
    lines = ["Report:"]
    if not report.servers:
        lines.append("  * STUN: no STUN servers configured (give --stun HOST:PORT); no STUN requests sent")
    else:
        lines.append(f"  * UDP: {_yes_no(report.udp)}")
        for family in (4, 6):
            reachable = report.reachable(family)
            if reachable is None:
                text = f"not checked (no IPv{family} STUN server)"
            elif reachable:
                text = "yes, " + ", ".join(hostport(*a) for a in report.reflexive(family))
            else:
                text = "no"
            lines.append(f"  * IPv{family}: {text}")
        varies = report.mapping_varies
        if varies is None:
            why = "needs answers from STUN servers at two different IP addresses"
        elif varies:
            why = "hard NAT"
        else:
            why = "no NAT" if report.behind_nat is False else "easy NAT"
        lines.append(f"  * Mapping varies by destination IP: {_yes_no(varies)} ({why})")
        lines.append(f"  * Mapping (RFC 4787): {report.mapping_detail}")
        filtering = report.filtering
        if filtering == "unknown":
            filtering += " (needs a STUN server that names an alternate address: RFC 5780/3489)"
        lines.append(f"  * Filtering (RFC 4787): {filtering}")
        hp = _yes_no(report.hairpinning)
        if report.hairpinning is None:
            hp += " (no IPv4 reflexive address to try)"
        lines.append(f"  * Hairpinning: {hp}")
    pm = report.port_mapping
    if pm is not None:
        if pm.gateway is None:
            text = f"not checked ({pm.error})"
        else:
            def part(name: str, ok: bool | None, external: str | None) -> str:
                return f"{name} {_yes_no(ok)}" + (f" ({external})" if ok and external else "")

            text = ", ".join([part("PCP", pm.pcp, None), part("NAT-PMP", pm.natpmp, pm.natpmp_external),
                              part("UPnP IGD", pm.upnp, pm.upnp_external)]) + f" (gateway {pm.gateway})"
        lines.append(f"  * Port mapping: {text}")
    if report.candidates_error:
        cands = f"unknown ({report.candidates_error})"
    else:
        cands = ", ".join(f"{c.address} ({c.interface})" for c in report.candidates) or "none"
    lines.append(f"  * Local candidates: {cands}")
    for s in report.servers:
        if s.mapped is not None:
            text = f"{hostport(*s.mapped)} ({s.rtt_ms:.1f} ms)"
        else:
            text = f"no answer ({s.error})"
        shown = s.server
        if s.address is not None and hostport(*s.address) != s.server:
            shown += f" ({hostport(*s.address)})"
        lines.append(f"  * STUN {shown}: {text}")
    return "\n".join(lines) + "\n"
