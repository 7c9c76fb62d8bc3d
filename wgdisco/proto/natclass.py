"""NAT classification beyond "easy or hard": RFC 5780 §4.3 and §4.4 tests, sans I/O.

Theory of operation
-------------------
A STUN server that supports RFC 5780 (or RFC 3489: stund, coturn with two addresses) names an
alternate address in its Binding response (OTHER-ADDRESS, RFC 5780 §7.4, or the classic
CHANGED-ADDRESS) and answers from it when a request carries CHANGE-REQUEST (§7.2). Given one
answered server and its alternate (ip, port), ``NatClassifier`` runs three transactions, the
first two at once and the third after them, from the same socket (the tunnel's, so it classifies the mapping WireGuard uses):

- ``ip+port``: CHANGE-REQUEST "change IP and port" to the server. An answer, from an address we
  never sent to, gets through only an endpoint-independent filter (RFC 4787 §5, RFC 5780 §4.4
  test II).
- ``port``: CHANGE-REQUEST "change port". An answer from the same IP and another port gets
  through an address-dependent filter; none through either: address-and-port-dependent (test III).
- ``mapping``: a plain Binding to the server's IP at the alternate port. The same mapped address
  as the primary's answer: the mapping depends on the address only (address-dependent, when it
  depends on anything: RFC 4787 §4.1, RFC 5780 §4.3 test III); another: address-and-port-dependent.

Each request is sent ``sends`` times (0, rto, 2 × rto) and a phase ends ``wait`` seconds after
its start (or when every request of it is answered); answers are matched by transaction id alone (by design they come from elsewhere),
after which the result is fixed until ``start`` runs again (a network change). An error
response (420: CHANGE-REQUEST not understood) makes the filtering "unknown".

Caveat, documented in docs/nat-traversal.md: a filter that lets in whatever comes from an IP we
have talked to (address-dependent) looks endpoint-independent when that IP is the alternate one,
e.g. the second STUN server is the first one's alternate address.

``now`` is monotonic seconds; addresses are opaque (``addr_of(ip, port)`` makes one).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

from aioice.stun import Class, Message, Method

from wgdisco.proto.nat import Filtering, Mapping
from wgdisco.errors import DecodeError, LocalError
from wgdisco.proto.stun import TRANSACTION_ID_LEN, decode_message, mapped_address

__all__ = ["NatClassifier", "FILTERINGS", "CHANGE_IP", "CHANGE_PORT", "alternate_address"]

Addr = Hashable
Endpoint = tuple[str, int]
CHANGE_IP, CHANGE_PORT = 0x04, 0x02  # RFC 5780 §7.2 (RFC 3489 §11.2.4)
FILTERINGS = tuple(Filtering)  # proto/nat.py
WAIT = 2.0


def alternate_address(msg: Message) -> Endpoint | None:
    """OTHER-ADDRESS (RFC 5780 §7.4), else CHANGED-ADDRESS (RFC 3489 §11.2.3); None if absent."""
    for name in ("OTHER-ADDRESS", "CHANGED-ADDRESS"):
        value = msg.attributes.get(name)
        if value is not None:
            ip, port = value
            return str(ip), int(port)
    return None


@dataclass
class _Test:
    name: str
    request: bytes
    addr: Addr
    answered: bool = False
    mapped: Endpoint | None = None
    error: bool = False


class NatClassifier:
    """RFC 5780 filtering and mapping tests against one server with an alternate address."""

    def __init__(self, *, rng: Callable[[int], bytes], addr_of: Callable[[str, int], Addr],
                 rto: float = 0.5, sends: int = 3, wait: float = WAIT) -> None:
        self._rng = rng
        self._addr_of = addr_of
        self.rto, self.sends, self.wait = rto, sends, wait
        self._tests: dict[bytes, _Test] = {}
        self._outbox: list[tuple[bytes, Addr]] = []
        self._started: float | None = None
        self._sent = 0
        self._primary: Endpoint | None = None
        self._phase = 1
        self.filtering: str = Filtering.UNKNOWN
        self.mapping: str | None = None  # "address-dependent" / "address-and-port-dependent", or None
        self.done = False

    def start(self, server: Addr, server_ip: str, primary_mapped: Endpoint, other: Endpoint, now: float) -> bool:
        """Begin the tests (False if the alternate address cannot be used here)."""
        try:
            alt_port = self._addr_of(server_ip, other[1])
        except (LocalError, OSError, ValueError):  # an address this socket cannot use: no test
            return False
        self._tests.clear()
        self._primary = primary_mapped
        self.filtering, self.mapping, self.done = Filtering.UNKNOWN, None, False
        # phase 1, filtering; phase 2, the mapping test: its request to the alternate port would
        # open our NAT to the change-port answer (RFC 5780 §4.4 runs the tests one after another)
        for name, change, addr in (("ip+port", CHANGE_IP | CHANGE_PORT, server), ("port", CHANGE_PORT, server),
                                   ("mapping", None, alt_port)):
            txid = self._rng(TRANSACTION_ID_LEN)
            msg = Message(Method.BINDING, Class.REQUEST, transaction_id=txid)
            if change is not None:
                msg.attributes["CHANGE-REQUEST"] = change
            msg.add_fingerprint()
            self._tests[txid] = _Test(name, bytes(msg), addr)
        self._phase = 1
        self._started = now
        self._sent = 0
        self._send(now)
        return True

    def receive(self, data: bytes, addr: Addr, now: float) -> bool:
        """A STUN datagram no ordinary transaction claimed: True if it answered one of ours."""
        try:
            msg = decode_message(data)
        except DecodeError:
            return False
        test = self._tests.get(msg.transaction_id)
        if test is None or self.done or msg.message_class not in (Class.RESPONSE, Class.ERROR):
            return False
        if msg.message_class == Class.ERROR or (test.name != "mapping" and addr == test.addr):
            test.error = True  # 420, or answered from where we sent: CHANGE-REQUEST is not supported
        else:
            try:
                test.mapped = mapped_address(msg)
            except ValueError:
                test.mapped = None
            test.answered = True
        if all(t.answered or t.error for t in self._current()):
            self._next_phase(now)
        return True

    def get_timer(self) -> float | None:
        if self._started is None or self.done:
            return None
        if self._sent < self.sends:
            return self._started + self._sent * self.rto
        return self._started + self.wait

    def handle_timer(self, now: float) -> None:
        if self._started is None or self.done:
            return
        if self._sent < self.sends and now >= self._started + self._sent * self.rto:
            self._send(now)
        if now >= self._started + self.wait:
            self._next_phase(now)

    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        out, self._outbox = self._outbox, []
        return out

    def _current(self) -> list[_Test]:
        return [t for t in self._tests.values() if (t.name == "mapping") == (self._phase == 2)]

    def _next_phase(self, now: float) -> None:
        if self._phase == 1:
            self._filtering_result()
            self._phase = 2
            self._started = now
            self._sent = 0
            self._send(now)
            return
        self.done = True
        m = next(t for t in self._tests.values() if t.name == "mapping")
        if m.answered and m.mapped is not None and self._primary is not None:
            self.mapping = Mapping.ADDRESS if m.mapped == self._primary else Mapping.ADDRESS_AND_PORT

    def _send(self, now: float) -> None:
        self._sent += 1
        for test in self._current():
            if not test.answered and not test.error:
                self._outbox.append((test.request, test.addr))

    def _filtering_result(self) -> None:
        by = {t.name: t for t in self._tests.values()}
        full, port = by["ip+port"], by["port"]
        if full.error or port.error:
            self.filtering = Filtering.UNKNOWN  # CHANGE-REQUEST not understood (420) or ignored
        elif full.answered:
            self.filtering = Filtering.INDEPENDENT
        elif port.answered:
            self.filtering = Filtering.ADDRESS
        else:
            self.filtering = Filtering.ADDRESS_AND_PORT
