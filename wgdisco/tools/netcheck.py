"""``wgdisco netcheck``: what the network looks like from here, without a running daemon.

Theory of operation
-------------------
Synchronous on purpose (netlink must not be called from a running asyncio
loop, and a one-shot report needs no loop):

1. Local candidates: every usable interface address
   (``netlink.interface_addresses``: no loopback, no link-local).
2. STUN: one UDP socket (``udp.open_udp(0)``, dual-stack, an ephemeral port)
   and ``StunClient(servers, refresh=None)`` driven by a small select() loop
   until every server answered, failed or could not be sent to, or until the
   timeout (RFC 5389 retransmissions: 0, 0.5, 1.5 s ... within it).  Only the
   servers the user named are contacted: with none, no datagram is sent at all.
3. Hairpinning (RFC 4787 §6): a second socket sends a token to the first
   socket's IPv4 reflexive address; "yes" if the NAT turns it back to us
   within ``HAIRPIN_WAIT``.  Only tried when an IPv4 reflexive address is known.

4. Port mapping (on with ``--stun``, or asked for with ``--port-mapping``): the IPv4 default
   route's next hop gets a PCP ANNOUNCE (RFC 6887 §14.1) and a NAT-PMP external address
   request (RFC 6886 §3.2), neither of which creates a mapping, from a socket of its own,
   sent at 0, 0.25 and 0.5 s and awaited for PORTMAP_WAIT; then UPnP IGD is looked for with
   miniupnpc (SSDP: about 1 s when an IGD answers, 4 s when none does). Only the gateway is
   asked. This runs in a thread beside the STUN part.

The mapping behaviour is ``StunClient.mapping_behaviour()`` (RFC 4787 §4.1):
"varies by destination" is True for endpoint-dependent, False for
endpoint-independent (which needs answers from two server IPs), else unknown.
When a server names an alternate address (RFC 5780 OTHER-ADDRESS, RFC 3489
CHANGED-ADDRESS: stund, coturn with two IPs), ``proto/natclass.py``'s tests run
on the same socket: the filtering behaviour (RFC 4787 §5) and whether a mapping
that varies depends on the destination's address only or its port too (at most
``2 × natclass.WAIT`` seconds more).
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
from wgdisco.proto.natclass import NatClassifier
from wgdisco.proto.stun import StunClient, StunFailed

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
            report.behaviour, client = _stun(sock, targets, timeout, clock)
            report.mapping_detail = report.behaviour
            _classify(sock, client, report, clock)
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


def _classify(sock: socket.socket, client: StunClient, report: Report, clock: Callable[[], float]) -> None:
    """RFC 5780 tests against the first server that named an alternate address (natclass.py)."""
    server = next((s for s in client.servers if s in client.alternate and s in client.mapped), None)
    if server is None:
        return
    c = NatClassifier(rng=os.urandom, addr_of=lambda ip, port: udp.to_sockaddr(sock, ip, port))
    if not c.start(server, udp.from_sockaddr(server)[0], client.mapped[server], client.alternate[server], clock()):
        return
    while not c.done:
        for data, addr in c.datagrams_to_send():
            try:
                sock.sendto(data, addr)
            except OSError:
                pass
        timer = c.get_timer()
        now = clock()
        readable, _, _ = select.select([sock], [], [], max(0.0, (timer or now) - now))
        if readable:
            for data, src in _drain(sock):
                if classify(data) == STUN:
                    c.receive(data, src, clock())
        now = clock()
        if (timer := c.get_timer()) is not None and timer <= now:
            c.handle_timer(now)
    report.filtering = c.filtering
    if report.behaviour == "endpoint-dependent" and c.mapping is not None:
        report.mapping_detail = c.mapping


def _stun(sock: socket.socket, targets: dict[Any, list[ServerResult]], timeout: float,
          clock: Callable[[], float]) -> tuple[str, StunClient]:
    """Drive one StunClient over ``sock``; fills the results in; the mapping behaviour."""
    client = StunClient(list(targets), rng=os.urandom, refresh=None,
                        host_of=lambda addr: udp.from_sockaddr(addr)[0])
    first_sent: dict[Any, float] = {}
    done: dict[Any, str | None] = {}  # server -> None (answered) or why not
    start = clock()
    deadline = start + timeout
    client.start(start)
    while (now := clock()) < deadline:
        for data, addr in client.datagrams_to_send():
            first_sent.setdefault(addr, now)
            if addr in done:
                continue
            try:
                sock.sendto(data, addr)
            except OSError as e:
                if e.errno not in _TRANSIENT:
                    done[addr] = f"cannot send: {e.strerror or e}"
        if len(done) == len(targets):
            break
        timer = client.get_timer()
        wake = deadline if timer is None else min(timer, deadline)
        readable, _, _ = select.select([sock], [], [], max(0.0, wake - now))
        if readable:
            for data, src in _drain(sock):
                if classify(data) != STUN:
                    continue
                at = clock()
                if client.receive(data, src, at):
                    if src in client.mapped:
                        done[src] = None
                        for r in targets[src]:
                            r.mapped = client.mapped[src]
                            r.rtt_ms = round((at - first_sent[src]) * 1000, 1)
                    else:
                        done[src] = "error response"
        client.pop_events()
        now = clock()
        if (timer := client.get_timer()) is not None and timer <= now:
            client.handle_timer(now)
            for event in client.pop_events():
                if isinstance(event, StunFailed):
                    done.setdefault(event.server, f"no answer after {client.rc} requests")
    for addr, rs in targets.items():
        why = done.get(addr, f"no answer within {timeout:g} s")
        for r in rs:
            if r.mapped is None:
                r.error = why
    return client.mapping_behaviour(), client


def port_mapping_check(*, wait: float = PORTMAP_WAIT, clock: Callable[[], float] = time.monotonic,
                       upnp: Any = None) -> PortMapReport:
    """Ask the default gateway which port-mapping protocols it speaks (nothing is mapped)."""
    from wgdisco.io import netlink
    from wgdisco.io import portmap as shell
    from wgdisco.proto import natpmp, pcp

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
    from wgdisco.errors import DecodeError
    from wgdisco.proto import natpmp, pcp

    requests = {"pcp": pcp.announce_request(source), "natpmp": natpmp.external_address_request()}
    start = clock()
    sends = [start, start + 0.25, start + 0.5]
    while (now := clock()) < start + wait and not (report.pcp and report.natpmp):
        while sends and sends[0] <= now:
            sends.pop(0)
            for name, data in requests.items():
                if not getattr(report, name):
                    try:
                        sock.sendto(data, gw)
                    except OSError:
                        pass
        wake = min(sends[0] if sends else start + wait, start + wait)
        readable, _, _ = select.select([sock], [], [], max(0.0, wake - now))
        if not readable:
            continue
        for data, src in _drain(sock):
            if src[:2] != gw or not data:
                continue
            if data[0] == pcp.VERSION:
                try:
                    report.pcp = pcp.parse_response(data).opcode == pcp.OP_ANNOUNCE or report.pcp
                except DecodeError:
                    pass
                continue
            try:
                answer = natpmp.parse_response(data)
            except DecodeError:
                continue
            report.natpmp = True  # also its "unsupported version" to our PCP request (RFC 6887 §9)
            if isinstance(answer, natpmp.ExternalAddressResponse) and answer.result == natpmp.SUCCESS:
                report.natpmp_external = answer.address


def _drain(sock: socket.socket) -> list[tuple[bytes, Any]]:
    out = []
    while True:
        try:
            out.append(sock.recvfrom(2048))
        except (BlockingIOError, InterruptedError):
            return out
        except OSError:  # an ICMP error reported on the socket: the next read goes on
            continue


def hairpin(sock: socket.socket, reflexive: Endpoint, wait: float,
            clock: Callable[[], float] = time.monotonic) -> bool:
    """Send a token from a second socket to ``sock``'s reflexive address; True if it arrives on ``sock``."""
    token = HAIRPIN_MAGIC + os.urandom(16)
    other = udp.open_udp(0)
    try:
        dest = udp.to_sockaddr(other, *reflexive)
        start = clock()
        deadline = start + wait
        sends, next_send = 0, start
        while (now := clock()) < deadline:
            if sends < HAIRPIN_SENDS and now >= next_send:
                try:
                    other.sendto(token, dest)
                except OSError:
                    return False
                sends += 1
                next_send = now + wait / (HAIRPIN_SENDS + 1)
            wake = min(next_send, deadline) if sends < HAIRPIN_SENDS else deadline
            readable, _, _ = select.select([sock], [], [], max(0.0, wake - now))
            if readable and any(data == token for data, _ in _drain(sock)):
                return True
        return False
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
