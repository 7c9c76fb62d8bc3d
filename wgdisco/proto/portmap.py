"""Port mapping on the gateway: one UDP mapping for the tunnel's listen port, by PCP (RFC 6887),
NAT-PMP (RFC 6886) or UPnP IGD, sans I/O.

Theory of operation
-------------------
``PortMapper(mode, internal_port=…)`` keeps at most one mapping: the gateway's external
address:port forwarded to our ``internal_port`` (the tunnel's listen port). The shell gives it
the gateway (the default route's next hop, an opaque address of its port 5351) and our source
address towards it (PCP puts it in the request, §8.1), sends ``datagrams_to_send()`` from a
socket of its own, feeds answers to ``receive``, calls ``handle_timer`` at ``get_timer()``, and
acts on ``pop_events()``. UPnP IGD (SSDP + SOAP) is not done here: the core asks for it with
``UpnpWanted`` and the shell answers with ``upnp_done`` (it runs miniupnpc in a thread).

- ``mode`` "auto" asks PCP and NAT-PMP and starts the UPnP search at once, and keeps the best
  protocol that maps (PCP > NAT-PMP > UPnP): an answer is taken as soon as every better protocol
  has failed (a gateway without PCP and NAT-PMP costs their 1.75 s, not 3.5 s, before UPnP). PCP
  and NAT-PMP get PROBE_TRIES requests each (0, 0.25, 0.75 s, given up at 1.75 s). A NAT-PMP-only
  gateway answers a PCP request with NAT-PMP's "unsupported version" (RFC 6887 §9): PCP has
  failed at once. At most one mapping is kept: a worse protocol's mapping that was made anyway
  (it answered first, or after the choice) is deleted (once, no retry) unless its external
  address and port are the kept mapping's (a gateway whose PCP, NAT-PMP and UPnP share one table,
  RFC 6887 Appendix A, gives the same one, and deleting it would delete ours); the worse
  protocols still asked when the choice is made get no further requests. A worse protocol that
  reports the kept mapping itself may have taken it over at the gateway (miniupnpd: UPnP's add
  rewrites the rule PCP made, and PCP's delete then finds nothing), so ``stop`` and a new listen
  port delete through it as well. "pcp", "natpmp", "upnp": only that one; "off" does nothing.
  With one protocol named, its RFC schedule holds: NAT-PMP 250 ms doubling, 9 requests (RFC 6886 §3.1); PCP IRT 3 s, doubling to MRT 1024 s with ±10 % jitter, no limit
  (RFC 6887 §8.1.1).
- The lifetime asked for is LIFETIME (7200 s, RFC 6886 §3.3's recommendation). The mapping is
  renewed at half its granted lifetime (RFC 6886 §3.3; RFC 6887 §11.2.1 says between 1/2 and
  5/8), with the same PCP nonce (§11.1); a renewal that gets no answer before the mapping
  expires loses it (``MappingChanged(None, "expired")``) and the search starts again.
- ``stop`` deletes: PCP MAP with lifetime 0 and the same nonce (§15), NAT-PMP lifetime 0 and
  external port 0 (RFC 6886 §3.4), UPnP DeletePortMapping; sent at 0 and 0.25 s, ``stopped``
  once answered or after 0.75 s.
- ``network_changed``: another gateway or source address loses the mapping and searches
  again; the same ones renew at once (the router may have restarted).
- Nothing found: ``state`` "failed", tried again after RETRY_AFTER (or at a network change).

Bounded and never raising on input: an answer from anyone but the gateway's port 5351, of
the wrong size, an unknown opcode, another nonce or internal port, an answer with no request
open, and every result code are dropped (errors end the attempt, like a timeout) and counted
in ``counters``. No answer creates state; there is one request open at a time per protocol
(auto's search: up to three, one each).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from ..errors import DecodeError, LocalError
from . import natpmp, pcp
from .core import Core

Addr = Hashable
Rng = Callable[[int], bytes]

MODES = ("auto", "pcp", "natpmp", "upnp", "off")
AUTO_ORDER = ("pcp", "natpmp", "upnp")
LIFETIME = 7200  # seconds asked for (RFC 6886 §3.3)
PROBE_FIRST, PROBE_TRIES = 0.25, 3  # auto: 0, 0.25, 0.75 s, given up at 1.75 s
PROBE_WINDOW = PROBE_FIRST * (2 ** PROBE_TRIES - 1)  # 1.75 s: a late answer after this is not awaited
NATPMP_TRIES = 9  # RFC 6886 §3.1: 250 ms, doubling, 9 attempts
NATPMP_MAX_INTERVAL = 64.0  # a renewal goes on at this interval until the mapping expires
PCP_IRT, PCP_MRT = 3.0, 1024.0  # RFC 6887 §8.1.1
UPNP_TIMEOUT = 15.0  # the shell's SSDP + SOAP must answer within this
UPNP_PERMANENT_CHECK = 3600.0  # a permanent UPnP lease (lifetime 0) is re-added hourly
DELETE_SENDS, DELETE_WAIT = 2, 0.75
RETRY_AFTER = 300.0  # nothing answered: try again after this (or at a network change)
MIN_LIFETIME = 30  # shorter grants are treated as failures (a renewal storm otherwise)


@dataclass(frozen=True)
class Mapping:
    """``external`` (ip, port) on the gateway forwards to our ``internal_port``."""

    protocol: str  # "pcp", "natpmp", "upnp"
    external: tuple[str, int]
    internal_port: int
    lifetime: int  # seconds granted; 0: permanent (UPnP)
    granted_at: float

    @property
    def expires(self) -> float | None:
        return None if self.lifetime == 0 else self.granted_at + self.lifetime


@dataclass(frozen=True)
class MappingChanged:
    """The mapping to publish changed: ``mapping`` or None (``reason``: why it went)."""

    mapping: Mapping | None
    reason: str


@dataclass(frozen=True)
class PortMapFailed:
    """``protocol`` gave no mapping: ``reason`` ("no-answer", a result code name, …)."""

    protocol: str
    reason: str


@dataclass(frozen=True)
class UpnpWanted:
    """Shell: run UPnP IGD ``action`` ("add" or "delete") and answer ``upnp_done(token, …)``
    (for "add"). ``external_port`` is a suggestion for "add", the port to delete for "delete"."""

    token: int
    action: str
    internal_port: int
    external_port: int
    lifetime: int


Event = MappingChanged | PortMapFailed | UpnpWanted


@dataclass
class _Tx:
    protocol: str
    kind: str  # "map" (first), "refresh", "delete"
    payloads: list[bytes]
    started: float
    deadline: float | None  # when it is given up
    sends: int = 0
    next_send: float | None = None
    token: int = 0  # UPnP
    ext_ip: str | None = None  # NAT-PMP: the external address answer
    map_answer: natpmp.MapResponse | None = None
    nonce: bytes = b""


@dataclass
class _Epoch:
    """The gateway's epoch (RFC 6887 §8.5, RFC 6886 §3.6): seen at ``now``."""

    epoch: int
    now: float


class PortMapper:
    """One port mapping on the gateway for ``internal_port`` (sans I/O; see the module doc)."""

    def __init__(self, mode: str, *, rng: Rng, internal_port: int, lifetime: int = LIFETIME) -> None:
        if mode not in MODES:
            raise LocalError(f"port mapping mode {mode!r} is not one of {MODES}")
        if not 1 <= internal_port <= 65535:
            raise LocalError(f"internal port {internal_port} out of range")
        self.mode = mode
        self._rng = rng
        self.internal_port = internal_port
        self.lifetime = lifetime
        self.gateway: Addr | None = None
        self.client_ip: str | None = None
        self.mapping: Mapping | None = None
        self.state = "off" if mode == "off" else "idle"  # idle, no-gateway, probing, mapped, failed, stopped
        self.protocol: str | None = None  # being tried, or holding the mapping
        self.answered: set[str] = set()  # protocols whose server answered (any result)
        self.counters: dict[str, int] = {}
        self.last_failure: str | None = None
        self._order: list[str] = []
        self._tx: _Tx | None = None
        # auto's search (see the module doc): protocols still asked, the mappings found (external,
        # lifetime, when) whose better protocols are still asked, and after the choice the worse
        # ones still open, whose late success is deleted. At most one of each protocol.
        self._search: dict[str, _Tx] = {}
        self._found: dict[str, tuple[tuple[str, int], int, float]] = {}
        self._late: dict[str, _Tx] = {}
        self._shared: set[str] = set()  # worse protocols that reported the kept mapping itself
        self._refresh_at: float | None = None
        self._retry_at: float | None = None
        self._nonce = b""  # PCP: one per mapping (§11.1)
        self._token = 0
        self._epochs: dict[str, _Epoch] = {}
        self._out: list[tuple[bytes, Addr]] = []
        self._events: list[Event] = []

    # --- inputs --------------------------------------------------------------------

    def start(self, gateway: Addr | None, client_ip: str | None, now: float) -> None:
        """Begin with the gateway (None: no default route) and our address towards it."""
        if self.mode == "off":
            return
        self.gateway, self.client_ip = gateway, client_ip
        self._begin(now)

    def network_changed(self, gateway: Addr | None, client_ip: str | None, now: float) -> None:
        if self.mode == "off" or self.state == "stopped":
            return
        if gateway == self.gateway and client_ip == self.client_ip and self.mapping is not None:
            if self._tx is None:
                self._start_refresh(now)  # the same network: renew now (the router may have restarted)
            return
        self.gateway, self.client_ip = gateway, client_ip
        self._lose("network-changed")
        self._begin(now)

    def set_internal_port(self, port: int, now: float) -> None:
        """The listen port changed: the old mapping is deleted (one try) and a new one sought."""
        if port == self.internal_port:
            return
        if self.mode != "off" and self.state != "stopped":
            self._send_delete(now, once=True)
            self._lose("port-changed")
        self.internal_port = port
        if self.mode != "off" and self.state != "stopped" and self.gateway is not None:
            self._begin(now)

    def stop(self, now: float) -> None:
        """Clean shutdown: delete the mapping (or the one being asked for); ``stopped`` when done."""
        if self.mode == "off" or self.state == "stopped":
            return
        self._send_delete(now, once=False)
        if self.mapping is not None:
            self.mapping = None
            self._events.append(MappingChanged(None, "deleted"))
        self.state = "stopped"
        self._refresh_at = self._retry_at = None

    @property
    def stopped(self) -> bool:
        """``stop`` was called and its delete got its answer or timed out."""
        return self.state == "stopped" and self._tx is None

    def receive(self, data: bytes, addr: Addr, now: float) -> bool:
        """A datagram on the port-mapping socket; True if it answered our open request."""
        if addr != self.gateway:
            self._count("not-gateway")
            return False
        tx = self._tx
        if self._search or self._late:  # auto: PCP answers are version 2, NAT-PMP ones version 0
            proto = "natpmp" if data[:1] == b"\x00" and not natpmp.unsupported_version_answer(data) else "pcp"
            tx = next((t for t in (self._tx, self._search.get(proto), self._late_tx(proto, now))
                       if t is not None and t.protocol == proto), None)
        if tx is None or tx.protocol not in ("pcp", "natpmp"):
            self._count("unexpected")
            return False
        if tx.protocol == "pcp":
            return self._receive_pcp(tx, data, now)
        return self._receive_natpmp(tx, data, now)

    def upnp_done(self, token: int, now: float, *, found: bool, external: tuple[str, int] | None = None,
                  lifetime: int = 0, error: str | None = None) -> None:
        """The shell's answer to ``UpnpWanted(token, "add")``: ``found`` an IGD; ``external``
        (ip, port) and the lease ``lifetime`` (0: permanent) on success, else ``error``."""
        if found:
            self.answered.add("upnp")
        tx = next((t for t in (self._tx, self._search.get("upnp"), self._late_tx("upnp", now))
                   if t is not None and t.protocol == "upnp" and t.token == token and t.kind != "delete"), None)
        if tx is None:
            self._count("upnp-stale")
            return
        if external is None:
            self._fail(tx, error or "failed", now)
            return
        self._mapped(tx, "upnp", external, lifetime, now)

    # --- time ----------------------------------------------------------------------

    def get_timer(self) -> float | None:
        times = [self._refresh_at, self._retry_at]
        for tx in [self._tx, *self._search.values()]:
            if tx is not None:
                times += [tx.next_send, tx.deadline]
        times = [t for t in times if t is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        for stx in list(self._search.values()):
            if self._search.get(stx.protocol) is not stx:
                continue  # the search ended on the way
            if stx.deadline is not None and now >= stx.deadline:
                self._timeout(stx, now)
            elif stx.next_send is not None and now >= stx.next_send:
                self._transmit(stx, now)
        tx = self._tx
        if tx is not None and tx.deadline is not None and now >= tx.deadline:
            self._timeout(tx, now)
        elif tx is not None and tx.next_send is not None and now >= tx.next_send:
            self._transmit(tx, now)
        if self._tx is None and self._refresh_at is not None and now >= self._refresh_at:
            self._start_refresh(now)
        if self._retry_at is not None and now >= self._retry_at and self.state == "failed":
            self._begin(now)

    # --- outputs -------------------------------------------------------------------

    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        out, self._out = self._out, []
        return out

    def pop_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    # --- the search ----------------------------------------------------------------

    def _begin(self, now: float) -> None:
        self._tx = None
        self._search, self._found, self._late = {}, {}, {}
        self._shared = set()
        self._refresh_at = self._retry_at = None
        if self.gateway is None and self.mode != "upnp":
            self.state, self.protocol = "no-gateway", None
            return
        if self.mode == "auto":
            self._nonce = self._rng(pcp.NONCE_LEN)
            self.state = "probing"
            for proto in AUTO_ORDER:
                if proto == "upnp" or self.client_ip is not None:
                    self._search[proto] = self._new_tx(proto, "map", now)
            self._settle(now)
            return
        self._order = [self.mode]
        self._next_protocol(now)

    def _settle(self, now: float) -> None:
        """auto's search: take the best mapping found once every better protocol has failed;
        wait while a better one is still asked; nothing left: failed."""
        for proto in AUTO_ORDER:
            if proto in self._found:
                external, lifetime, granted_at = self._found.pop(proto)
                for tx in self._search.values():
                    tx.next_send = tx.deadline = None  # no more requests; a late success is deleted
                self._late, self._search = self._search, {}
                extras, self._found = self._found, {}
                self._set_mapping(proto, external, lifetime, granted_at, now)
                for other, (ext, _, _) in extras.items():
                    if ext != external:
                        self._delete_extra(other, ext[1], now)
                    else:
                        self._shared.add(other)
                return
            if proto in self._search:
                self.protocol = proto  # the best still asked: status shows it
                return
        self.state, self.protocol = "failed", None
        self._retry_at = now + RETRY_AFTER

    def _delete_extra(self, proto: str, external_port: int, now: float, *, count: bool = True) -> None:
        """Delete a mapping by ``proto`` that is not the one kept, or may have been made: one
        request, no retry (RFC 6887 §15, RFC 6886 §3.4, UPnP DeletePortMapping)."""
        if count:
            self._count("extra-deleted")
        if proto == "upnp":
            self._token += 1
            self._events.append(UpnpWanted(self._token, "delete", self.internal_port, external_port, 0))
            return
        if self.gateway is None or self.client_ip is None:
            return
        if proto == "pcp":
            payload = pcp.map_request(self._nonce, self.client_ip, self.internal_port, external_port, 0)
        else:
            payload = natpmp.map_request(self.internal_port, 0, 0)
        self._out.append((payload, self.gateway))
        self._count(f"{proto}-requests")

    def _late_tx(self, proto: str, now: float) -> _Tx | None:
        """The worse protocol's request still open after the choice, while its answer may come."""
        tx = self._late.get(proto)
        if tx is not None and now - tx.started > (UPNP_TIMEOUT if proto == "upnp" else PROBE_WINDOW):
            del self._late[proto]
            return None
        return tx

    def _abandon_search(self, now: float) -> None:
        """Stop or a new listen port during or after auto's search: delete what its open or
        found requests may have made (beside the kept mapping, which the caller deletes)."""
        late = [(p, t) for p in list(self._late) if (t := self._late_tx(p, now)) is not None]
        for proto, tx in [*self._search.items(), *late]:
            self._delete_extra(proto, tx.map_answer.external_port if tx.map_answer else self.internal_port, now,
                               count=False)
        for proto, (ext, _, _) in self._found.items():
            self._delete_extra(proto, ext[1], now, count=False)
        if self.mapping is not None:
            for proto in sorted(self._shared - {self.mapping.protocol}):
                self._delete_extra(proto, self.mapping.external[1], now, count=False)
        self._search, self._found, self._late = {}, {}, {}
        self._shared = set()

    def _next_protocol(self, now: float) -> None:
        while self._order:
            proto = self._order.pop(0)
            if proto != "upnp" and (self.gateway is None or self.client_ip is None):
                continue
            self.state, self.protocol = "probing", proto
            self._nonce = self._rng(pcp.NONCE_LEN)
            self._tx = self._new_tx(proto, "map", now)
            return
        self.state, self.protocol, self._tx = "failed", None, None
        self._retry_at = now + RETRY_AFTER

    def _new_tx(self, proto: str, kind: str, now: float) -> _Tx:
        lifetime = 0 if kind == "delete" else self.lifetime
        port = self.internal_port
        suggested = self.mapping.external[1] if self.mapping is not None else port
        if proto == "upnp":
            self._token += 1
            action = "delete" if kind == "delete" else "add"
            self._events.append(UpnpWanted(self._token, action, port, suggested, lifetime))
            deadline = now + (DELETE_WAIT if kind == "delete" else UPNP_TIMEOUT)
            return _Tx(proto, kind, [], now, deadline, token=self._token)
        if proto == "pcp":
            assert self.client_ip is not None
            payloads = [pcp.map_request(self._nonce, self.client_ip, port, suggested, lifetime)]
        elif kind == "delete":
            payloads = [natpmp.map_request(port, 0, 0)]  # RFC 6886 §3.4
        else:
            payloads = [natpmp.external_address_request(), natpmp.map_request(port, suggested, lifetime)]
        deadline = None
        if kind == "delete":
            deadline = now + DELETE_WAIT
        elif kind == "refresh" and self.mapping is not None:
            deadline = self.mapping.expires
        tx = _Tx(proto, kind, payloads, now, deadline, nonce=self._nonce)
        self._transmit(tx, now)
        return tx

    def _interval(self, tx: _Tx) -> float | None:
        """Seconds from send number ``tx.sends`` to the next one; None: no more sends."""
        n = tx.sends
        if tx.kind == "delete":
            return PROBE_FIRST if n < DELETE_SENDS else None
        if tx.kind == "map" and self.mode == "auto":
            return PROBE_FIRST * 2 ** (n - 1)  # the last interval is the wait for the last answer
        if tx.protocol == "natpmp":
            return min(PROBE_FIRST * 2 ** (n - 1), NATPMP_MAX_INTERVAL)
        rand = (int.from_bytes(self._rng(2), "big") / 65535 - 0.5) / 5  # RFC 6887 §8.1.1: -0.1..+0.1
        return min(PCP_IRT * 2 ** (n - 1), PCP_MRT) * (1 + rand)

    def _tries(self, tx: _Tx) -> int | None:
        if tx.kind == "delete":
            return DELETE_SENDS
        if tx.kind == "map" and self.mode == "auto":
            return PROBE_TRIES
        if tx.protocol == "natpmp" and tx.kind == "map":
            return NATPMP_TRIES
        return None  # PCP: MRC 0, no limit; a renewal ends at the mapping's expiry

    def _transmit(self, tx: _Tx, now: float) -> None:
        assert self.gateway is not None
        tries = self._tries(tx)
        if tries is not None and tx.sends >= tries:  # the wait for the last answer is over
            tx.next_send = None
            self._timeout(tx, now)
            return
        for payload in tx.payloads:
            self._out.append((payload, self.gateway))
        tx.sends += 1
        self._count(f"{tx.protocol}-requests")
        interval = self._interval(tx)
        tx.next_send = None if interval is None else now + interval

    def _timeout(self, tx: _Tx, now: float) -> None:
        if self._search.get(tx.protocol) is tx:
            self._fail(tx, "no-answer", now)
            return
        if tx is not self._tx:
            return
        if tx.kind == "delete":
            self._tx = None
            return
        if tx.kind == "refresh":
            if tx.protocol == "upnp" and self.mapping is not None and self.mapping.expires is not None \
                    and self.mapping.expires - now > 2 * MIN_LIFETIME:
                self._tx = None  # UPnP renewal failed: again half way to expiry
                self._refresh_at = now + (self.mapping.expires - now) / 2
                return
            self._count("expired")
            self._lose("expired")
            self._begin(now)
            return
        self._fail(tx, "no-answer", now)

    def _fail(self, tx: _Tx, reason: str, now: float) -> None:
        """The attempt with ``tx.protocol`` ended without a mapping."""
        if self._late.get(tx.protocol) is tx:  # after the choice: nothing was made
            del self._late[tx.protocol]
            return
        if self._search.get(tx.protocol) is tx:
            del self._search[tx.protocol]
            self.last_failure = f"{tx.protocol}: {reason}"
            self._events.append(PortMapFailed(tx.protocol, reason))
            self._settle(now)
            return
        self._tx = None
        self.last_failure = f"{tx.protocol}: {reason}"
        self._events.append(PortMapFailed(tx.protocol, reason))
        if tx.kind == "refresh":  # a renewal refused: the mapping is gone, search again
            self._lose(reason)
            self._begin(now)
            return
        self._next_protocol(now)

    def _mapped(self, tx: _Tx, proto: str, external: tuple[str, int], lifetime: int, now: float) -> None:
        problem = "lifetime-too-short" if lifetime != 0 and lifetime < MIN_LIFETIME else _unusable(external)
        if problem is not None:
            self._count(problem)
            self._fail(tx, problem, now)
            return
        external = (str(ipaddress.ip_address(external[0])), external[1])
        if self._search.get(proto) is tx:
            del self._search[proto]
            self._found[proto] = (external, lifetime, now)
            self._settle(now)
            return
        if self._late.get(proto) is tx:  # a worse protocol mapped after the choice
            del self._late[proto]
            if self.mapping is None or self.mapping.external != external:
                self._delete_extra(proto, external[1], now)
            else:
                self._shared.add(proto)
            return
        self._tx = None
        self._set_mapping(proto, external, lifetime, now, now)

    def _set_mapping(self, proto: str, external: tuple[str, int], lifetime: int, granted_at: float,
                     now: float) -> None:
        old = self.mapping
        self._tx = None
        self.mapping = Mapping(proto, external, self.internal_port, lifetime, granted_at)
        self.state, self.protocol, self.last_failure = "mapped", proto, None
        self._retry_at = None
        self._refresh_at = granted_at + (lifetime / 2 if lifetime else UPNP_PERMANENT_CHECK)
        if old is None or old.external != external or old.protocol != proto:
            self._events.append(MappingChanged(self.mapping, "mapped" if old is None else "changed"))

    def _lose(self, reason: str) -> None:
        self._tx = None
        self._refresh_at = None
        if self.mapping is not None:
            self.mapping = None
            self._events.append(MappingChanged(None, reason))

    def _start_refresh(self, now: float) -> None:
        assert self.mapping is not None
        self._refresh_at = None
        self._tx = self._new_tx(self.mapping.protocol, "refresh", now)

    def _send_delete(self, now: float, *, once: bool) -> None:
        """Delete the mapping we hold, or the one a request in flight may have made."""
        self._abandon_search(now)
        proto = self.mapping.protocol if self.mapping is not None else (
            self._tx.protocol if self._tx is not None and self._tx.kind != "delete" else None)
        self._tx = None
        if proto is None or (proto != "upnp" and (self.gateway is None or self.client_ip is None)):
            return
        tx = self._new_tx(proto, "delete", now)
        if once:
            self._tx = None  # fire and forget
        else:
            self._tx = tx

    # --- answers -------------------------------------------------------------------

    def _receive_pcp(self, tx: _Tx, data: bytes, now: float) -> bool:
        if natpmp.unsupported_version_answer(data):  # RFC 6887 §9: a NAT-PMP-only gateway
            self.answered.add("natpmp")
            self._count("pcp-unsupported-version")
            if tx.kind == "delete":
                self._tx = None
            else:
                self._fail(tx, "unsupported-version", now)
            return True
        try:
            r = pcp.parse_response(data)
        except DecodeError:
            self._count("malformed")
            return False
        if r.opcode != pcp.OP_MAP:
            self._count("unexpected")
            return False
        if r.result == pcp.UNSUPP_VERSION and not r.nonce:
            self.answered.add("pcp")
            self._count("pcp-unsupp-version")
            if tx.kind == "delete":
                self._tx = None
            else:
                self._fail(tx, "unsupp-version", now)
            return True
        if r.nonce != tx.nonce or r.protocol != pcp.PROTO_UDP or r.internal_port != self.internal_port:
            self._count("wrong-nonce")  # §11.3: another mapping's answer, or forged
            return False
        self.answered.add("pcp")
        self._epoch("pcp", r.epoch, now)
        if tx.kind == "delete":
            self._tx = None
            return True
        if r.result != pcp.SUCCESS:
            name = pcp.RESULT_NAMES.get(r.result, f"result-{r.result}")
            self._count(f"pcp-{name}")
            self._fail(tx, name, now)
            return True
        self._mapped(tx, "pcp", (r.external_address, r.external_port), r.lifetime, now)
        return True

    def _receive_natpmp(self, tx: _Tx, data: bytes, now: float) -> bool:
        try:
            r = natpmp.parse_response(data)
        except DecodeError:
            self._count("malformed")
            return False
        if isinstance(r, natpmp.MapResponse) and r.internal_port != self.internal_port:
            self._count("wrong-port")
            return False
        if isinstance(r, natpmp.ExternalAddressResponse) and tx.kind == "delete":
            self._count("unexpected")
            return False
        self.answered.add("natpmp")
        self._epoch("natpmp", r.epoch, now)
        if r.result != natpmp.SUCCESS:
            name = natpmp.RESULT_NAMES.get(r.result, f"result-{r.result}")
            self._count(f"natpmp-{name}")
            if tx.kind == "delete":
                self._tx = None
            else:
                self._fail(tx, name, now)
            return True
        if tx.kind == "delete":
            self._tx = None
            return True
        if isinstance(r, natpmp.ExternalAddressResponse):
            tx.ext_ip = r.address
        else:
            tx.map_answer = r
        if tx.ext_ip is not None and tx.map_answer is not None:
            self._mapped(tx, "natpmp", (tx.ext_ip, tx.map_answer.external_port), tx.map_answer.lifetime, now)
        return True

    def _epoch(self, proto: str, epoch: int, now: float) -> None:
        """RFC 6887 §8.5 / RFC 6886 §3.6: an epoch that went back means the gateway lost its
        state; our mapping was just (re)made by this answer, so this is only counted."""
        prev = self._epochs.get(proto)
        if prev is not None:
            expected = prev.epoch + (now - prev.now) * 7 / 8 - 2
            if epoch < expected:
                self._count("gateway-restarted")
        self._epochs[proto] = _Epoch(epoch, now)

    def _count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1


def _unusable(external: tuple[str, int]) -> str | None:
    """Why a gateway's external address cannot be published (a success that is not one), or None.
    A private or reserved address is fine: a router behind another NAT has one, and probes decide."""
    ip, port = external
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return "bad-external-address"
    if not 1 <= port <= 65535:
        return "bad-external-port"
    if addr.is_unspecified or addr.is_multicast or addr.is_loopback or addr.is_link_local or \
            addr == ipaddress.IPv4Address("255.255.255.255"):
        return "bad-external-address"
    return None


@dataclass(frozen=True)
class View:
    """What status shows."""

    mode: str
    state: str
    protocol: str | None
    external: tuple[str, int] | None
    expires_in: float | None
    answered: tuple[str, ...]
    last_failure: str | None
    counters: dict[str, int] = field(default_factory=dict)


def view(mapper: PortMapper, now: float) -> View:
    m = mapper.mapping
    expires = None if m is None or m.expires is None else max(0.0, m.expires - now)
    return View(mapper.mode, mapper.state, mapper.protocol, None if m is None else m.external, expires,
                tuple(sorted(mapper.answered)), mapper.last_failure, dict(mapper.counters))


class GatewayProbe(Core):
    """Which port-mapping protocols ``gateway`` speaks, without mapping anything (``wgdisco
    netcheck``): a PCP ANNOUNCE (RFC 6887 §14.1) and a NAT-PMP external address request
    (RFC 6886 §3.2), each sent at ``SENDS`` until answered, answers awaited until ``wait`` after
    the start. ``pcp``/``natpmp`` say who answered, ``natpmp_external`` the address NAT-PMP
    gave; ``done`` once both answered or the wait is over. Only ``gateway`` is listened to."""

    SENDS = (0.0, 0.25, 0.5)

    def __init__(self, gateway: Addr, client_ip: str, *, wait: float) -> None:
        super().__init__()
        self.gateway, self.wait = gateway, wait
        self._requests = {"pcp": pcp.announce_request(client_ip), "natpmp": natpmp.external_address_request()}
        self.pcp = self.natpmp = False
        self.natpmp_external: str | None = None
        self._sends: list[float] = []
        self._end: float | None = None

    def start(self, now: float) -> None:
        self._sends = [now + offset for offset in self.SENDS]
        self._end = now + self.wait
        self.handle_timer(now)

    @property
    def done(self) -> bool:
        return (self.pcp and self.natpmp) or self._end is None

    def next_deadline(self) -> float | None:
        if self.done:
            return None
        return min(self._sends[0], self._end) if self._sends else self._end

    def handle_timer(self, now: float) -> None:
        if self.done:
            return
        if now >= self._end:  # type: ignore[operator]
            self._end = None
            return
        while self._sends and self._sends[0] <= now:
            self._sends.pop(0)
            for name, data in self._requests.items():
                if not getattr(self, name):
                    self._outbox.append((data, self.gateway))

    def receive(self, data: bytes, addr: Addr, now: float) -> None:
        if addr != self.gateway or not data or self.done:
            return
        if data[0] == pcp.VERSION:
            try:
                self.pcp = pcp.parse_response(data).opcode == pcp.OP_ANNOUNCE or self.pcp
            except DecodeError:
                pass
            return
        try:
            answer = natpmp.parse_response(data)
        except DecodeError:
            return
        self.natpmp = True  # also its "unsupported version" to our PCP request (RFC 6887 §9)
        if isinstance(answer, natpmp.ExternalAddressResponse) and answer.result == natpmp.SUCCESS:
            self.natpmp_external = answer.address
