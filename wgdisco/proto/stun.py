"""STUN Binding client for the tunnel's own UDP socket (RFC 5389), sans I/O.

Theory of operation
-------------------
The daemon owns one UDP socket (ARCHITECTURE.md, "The one socket"); the STUN
requests go out of it so that the mapping the servers observe is the mapping
WireGuard and hole punching use.  This core never touches the socket: the
shell sends what ``datagrams_to_send()`` returns, passes datagrams classified
as STUN to ``receive(data, addr, now)``, and calls ``handle_timer(now)`` at
``get_timer()``.  Server addresses are opaque hashables compared with ``==``
(the daemon passes socket address tuples, normalised the same way as
``recvfrom`` returns them).

Per server there is at most one transaction at a time:

- ``start(now)`` sends one Binding request to every server, each with a fresh
  96-bit transaction id drawn from ``rng`` (RFC 5389 §6).
- Retransmission (RFC 5389 §7.2.1): the first retransmit after RTO (500 ms),
  the interval doubling each time, Rc = 7 requests in all; after the last,
  Rm x RTO (16 x 500 ms) more, then the transaction fails.  With the defaults
  the requests leave at 0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s, failure at 39.5 s.
- A success response from the server's address with the transaction's id ends
  the transaction.  The mapped address is XOR-MAPPED-ADDRESS (§15.2), else the
  RFC 3489 MAPPED-ADDRESS (§15.1) that classic servers send.
- ``refresh`` seconds after a transaction ends (answer or failure) the next one
  starts, with a new id: this keeps the NAT mapping alive and notices a changed
  one.  ``restart(now)`` (a network change) drops every transaction and the
  current answers and asks all servers again at once.

Everything unexpected is dropped and counted, never raised (``counters``):
garbage, a response from another address, an unknown or finished transaction
id (a late duplicate), requests and indications, a success without an address.
An error response (§7.3.4) from the right server ends the transaction as a
failure.

Results
-------
``mapped[server] = (ip, port)`` holds the answer of each server whose last
transaction did not fail.  ``events`` gets ``StunMapped(server, address)`` when a
server's entry appears, ``StunChanged(server, old, new)`` when an answer
differs from the last one that server gave (also across a failure or a
restart), and ``StunFailed(server)`` when a transaction fails (the entry is
removed).  ``mapping_behaviour()`` names the NAT's mapping in RFC 4787 §4.1
terms; ``reflexive()`` lists the distinct mapped addresses.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass

from aioice.stun import Class, Message, Method, parse_message

from ..errors import DecodeError, LocalError
from .nat import Mapping

# RFC 5389 §7.2.1 defaults.
RTO = 0.5
RC = 7
RM = 16
# Refresh well inside the shortest common NAT UDP timeout (RFC 4787 REQ-5: >= 2 min,
# many home routers use 30 s); WireGuard's persistent keepalive is usually 25 s too.
REFRESH = 25.0
TRANSACTION_ID_LEN = 12  # 96 bits (RFC 5389 §6)
_MAX_DRAWS = 8

Addr = Hashable
Endpoint = tuple[str, int]
Rng = Callable[[int], bytes]
Behaviour = Mapping  # INDEPENDENT, DEPENDENT or UNKNOWN: what STUN alone can tell (proto/nat.py)


@dataclass(frozen=True)
class StunMapped:
    """``server`` sees us at ``address`` (its first answer, or the first after a failure)."""

    server: Addr
    address: Endpoint


@dataclass(frozen=True)
class StunChanged:
    """``server`` now sees us at ``new``; its last answer said ``old``."""

    server: Addr
    old: Endpoint
    new: Endpoint


@dataclass(frozen=True)
class StunFailed:
    """A transaction with ``server`` failed (no answer after Rc requests, or an error response)."""

    server: Addr


Event = StunMapped | StunChanged | StunFailed


def default_host_of(server: Addr) -> Hashable:
    """The IP part of a server address: element 0 of a socket address tuple."""
    return server[0] if isinstance(server, tuple) and server else server


def decode_message(data: bytes) -> Message:
    """Parse a STUN message with aioice's codec; any malformation is a DecodeError.

    FINGERPRINT, when present, is checked by the codec (RFC 5389 §15.5).
    """
    try:
        return parse_message(data)
    except (ValueError, struct.error, IndexError) as e:  # UnicodeDecodeError is a ValueError
        raise DecodeError(f"malformed STUN message: {e}") from e


def binding_request(transaction_id: bytes, *, fingerprint: bool = True, software: str | None = None) -> bytes:
    """A Binding request (RFC 5389 §7.1), FINGERPRINT last when asked for (§7.1, §15.5)."""
    if len(transaction_id) != TRANSACTION_ID_LEN:
        raise LocalError(f"a transaction id is {TRANSACTION_ID_LEN} bytes, not {len(transaction_id)}")
    msg = Message(Method.BINDING, Class.REQUEST, transaction_id=transaction_id)
    if software is not None:
        msg.attributes["SOFTWARE"] = software
    if fingerprint:
        msg.add_fingerprint()
    return bytes(msg)


def mapped_address(msg: Message) -> Endpoint | None:
    """XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS, as a normalised (ip, port); None if absent."""
    for name in ("XOR-MAPPED-ADDRESS", "MAPPED-ADDRESS"):
        value = msg.attributes.get(name)
        if value is not None:
            ip, port = value
            return str(ipaddress.ip_address(ip)), int(port)
    return None


@dataclass
class StunCounters:
    sent: int = 0  # requests, first transmissions
    retransmitted: int = 0
    answered: int = 0  # success responses accepted
    error_responses: int = 0  # error responses accepted (transaction failed)
    timeouts: int = 0  # transactions failed after Rc requests
    malformed: int = 0  # undecodable, or a success without a mapped address
    wrong_source: int = 0  # our transaction id, but from another address
    unknown_transaction: int = 0  # not one of our open transactions (late duplicate, stray)
    not_response: int = 0  # requests and indications: a client does not answer them


@dataclass
class _Transaction:
    txid: bytes
    request: bytes
    sends: int  # requests sent so far (1..rc)
    interval: float  # wait after the latest send before the next one
    deadline: float  # next retransmit, or failure after the last


class StunClient:
    """Binding transactions to a fixed list of STUN servers (see the module doc)."""

    def __init__(
        self,
        servers: Iterable[Addr],
        *,
        rng: Rng,
        rto: float = RTO,
        rc: int = RC,
        rm: int = RM,
        refresh: float | None = REFRESH,
        fingerprint: bool = True,
        software: str | None = None,
        host_of: Callable[[Addr], Hashable] = default_host_of,
    ) -> None:
        self.servers: list[Addr] = list(servers)
        if len(set(self.servers)) != len(self.servers):
            raise LocalError(f"duplicate STUN server in {self.servers!r}")
        if not rto > 0 or rc < 1 or rm < 0:
            raise LocalError(f"bad retransmission parameters rto={rto} rc={rc} rm={rm}")
        if refresh is not None and not refresh > 0:
            raise LocalError(f"refresh must be positive or None, not {refresh}")
        self.rng = rng
        self.rto = rto
        self.rc = rc
        self.rm = rm
        self.refresh = refresh
        self.fingerprint = fingerprint
        self.software = software
        self.host_of = host_of
        self.mapped: dict[Addr, Endpoint] = {}
        self.alternate: dict[Addr, Endpoint] = {}  # a server's alternate address, if it names one (natclass.py)
        self.events: list[Event] = []
        self.counters = StunCounters()
        self.started = False
        self._last: dict[Addr, Endpoint] = {}  # last answer per server, kept across failures
        self._transactions: dict[Addr, _Transaction] = {}
        self._next_start: dict[Addr, float] = {}  # idle servers: when the next transaction begins
        self._by_txid: dict[bytes, Addr] = {}
        self._outbox: list[tuple[bytes, Addr]] = []

    # ---------------------------------------------------------------- control

    def start(self, now: float) -> None:
        """Begin one transaction per server."""
        if self.started:
            raise LocalError("StunClient.start() called twice; use restart() after a network change")
        self.started = True
        for server in self.servers:
            self._begin(server, now)

    def restart(self, now: float) -> None:
        """The network changed: forget open transactions and current answers, ask everyone now.

        Answers that arrive for the dropped transactions are ignored (unknown id).
        The previous answers are still remembered for ``changed`` events.
        """
        self.started = True
        self._transactions.clear()
        self._by_txid.clear()
        self._next_start.clear()
        self.mapped.clear()
        for server in self.servers:
            self._begin(server, now)

    # ------------------------------------------------------------- I/O facing

    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        """Requests to send now, as (payload, server address); the list is handed over."""
        out, self._outbox = self._outbox, []
        return out

    def get_timer(self) -> float | None:
        """The next time ``handle_timer`` must run, or None when nothing is scheduled."""
        times = [t.deadline for t in self._transactions.values()]
        times += self._next_start.values()
        return min(times, default=None)

    def handle_timer(self, now: float) -> None:
        """Retransmit, fail or refresh whatever is due at ``now``."""
        for server in self.servers:
            start_at = self._next_start.get(server)
            if start_at is not None and start_at <= now:
                del self._next_start[server]
                self._begin(server, now)
                continue
            tx = self._transactions.get(server)
            if tx is None or tx.deadline > now:
                continue
            if tx.sends < self.rc:
                # §7.2.1: retransmit, then double the interval; after the Rc-th request wait Rm x RTO.
                tx.sends += 1
                self.counters.retransmitted += 1
                self._outbox.append((tx.request, server))
                tx.interval *= 2
                tx.deadline = now + (tx.interval if tx.sends < self.rc else self.rm * self.rto)
            else:
                self.counters.timeouts += 1
                self._fail(server, now)

    def receive(self, data: bytes, addr: Addr, now: float) -> bool:
        """A datagram classified as STUN arrived from ``addr``.

        True if it answered one of our open transactions (success or error
        response); everything else is counted and ignored. Never raises.
        """
        try:
            msg = decode_message(data)
        except DecodeError:
            self.counters.malformed += 1
            return False
        if msg.message_class not in (Class.RESPONSE, Class.ERROR):
            self.counters.not_response += 1
            return False
        server = self._by_txid.get(msg.transaction_id)
        if server is None:
            self.counters.unknown_transaction += 1
            return False
        if addr != server:
            self.counters.wrong_source += 1  # §7.3.3 does not trust a stranger to end a transaction
            return False
        if msg.message_method != Method.BINDING:
            self.counters.malformed += 1
            return False
        if msg.message_class == Class.ERROR:
            self.counters.error_responses += 1
            self._fail(server, now)
            return True
        try:
            mapped = mapped_address(msg)
        except ValueError:
            mapped = None
        if mapped is None:
            self.counters.malformed += 1  # the transaction goes on: a later answer may be good
            return False
        self.counters.answered += 1
        self._end(server, now)
        self._record(server, mapped)
        other = None
        for name in ("OTHER-ADDRESS", "CHANGED-ADDRESS"):  # RFC 5780 §7.4, RFC 3489 §11.2.3
            value = msg.attributes.get(name)
            if value is not None and other is None:
                other = (str(value[0]), int(value[1]))
        if other is not None:
            self.alternate[server] = other
        return True

    # ---------------------------------------------------------------- results

    def pop_events(self) -> list[Event]:
        out, self.events = self.events, []
        return out

    def reflexive(self) -> list[Endpoint]:
        """The distinct mapped addresses, in server order."""
        return list(dict.fromkeys(self.mapped[s] for s in self.servers if s in self.mapped))

    def mapping_behaviour(self) -> Behaviour:
        """RFC 4787 §4.1 mapping behaviour from the current answers.

        Compared within one address family of the mapped address.  Two answers
        that differ prove an endpoint-dependent mapping (servers on different
        IPs: address-dependent; on one IP, different ports: address-and-port-
        dependent).  Equal answers prove an endpoint-independent mapping only
        from servers at two different IP addresses; anything less is unknown.
        """
        answers = [(self.host_of(s), self.mapped[s]) for s in self.servers if s in self.mapped]
        independent = False
        for i, (host_a, got_a) in enumerate(answers):
            for host_b, got_b in answers[i + 1 :]:
                if _family(got_a[0]) != _family(got_b[0]):
                    continue
                if got_a != got_b:
                    return Mapping.DEPENDENT
                if host_a != host_b:
                    independent = True
        return Mapping.INDEPENDENT if independent else Mapping.UNKNOWN

    # --------------------------------------------------------------- internal

    def _new_txid(self) -> bytes:
        for _ in range(_MAX_DRAWS):
            txid = self.rng(TRANSACTION_ID_LEN)
            if len(txid) != TRANSACTION_ID_LEN:
                raise LocalError(f"rng({TRANSACTION_ID_LEN}) returned {len(txid)} bytes")
            if txid not in self._by_txid:
                return txid
        raise LocalError(f"rng gave {_MAX_DRAWS} transaction ids in use in a row")

    def _begin(self, server: Addr, now: float) -> None:
        txid = self._new_txid()
        request = binding_request(txid, fingerprint=self.fingerprint, software=self.software)
        tx = _Transaction(txid, request, sends=1, interval=self.rto,
                          deadline=now + (self.rto if self.rc > 1 else self.rm * self.rto))
        self._transactions[server] = tx
        self._by_txid[txid] = server
        self.counters.sent += 1
        self._outbox.append((request, server))

    def _end(self, server: Addr, now: float) -> None:
        tx = self._transactions.pop(server)
        del self._by_txid[tx.txid]
        if self.refresh is not None:
            self._next_start[server] = now + self.refresh

    def _fail(self, server: Addr, now: float) -> None:
        self._end(server, now)
        self.mapped.pop(server, None)
        self.events.append(StunFailed(server))

    def _record(self, server: Addr, got: Endpoint) -> None:
        last = self._last.get(server)
        had = server in self.mapped
        self.mapped[server] = got
        self._last[server] = got
        if last is not None and last != got:
            self.events.append(StunChanged(server, last, got))
        elif not had:
            self.events.append(StunMapped(server, got))


def _family(ip: str) -> int:
    return 6 if ":" in ip else 4
