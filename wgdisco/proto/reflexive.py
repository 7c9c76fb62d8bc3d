"""Our reflexive address and our NAT's behaviour, learnt on the tunnel's own socket.

``NatObserver`` joins the STUN client (proto/stun.py: Binding requests to every configured
server, refreshed every 25 s, which also keeps the NAT mapping warm, RFC 4787 REQ-5) and the
RFC 5780 classifier (proto/natclass.py: filtering, and whether a destination-dependent mapping
depends on the address or the port too), run once per network after an answer names an
alternate address. It emits ``ReflexiveChanged`` (the reflexive addresses or the mapping
behaviour changed), ``StunFailed``/``StunChanged`` and ``NatClassified``. Pure: ``now`` and
``rng`` passed in; datagrams out through ``datagrams_to_send()``, events through ``pop_events()``.
"""

from __future__ import annotations


from typing import Callable, Hashable, Iterable

from wgdisco.proto.nat import Filtering, Mapping
from wgdisco.proto.core import Core
from wgdisco.proto.events import NatClassified, ReflexiveChanged, StunChanged, StunFailed
from wgdisco.proto.natclass import NatClassifier
from wgdisco.proto.stun import REFRESH, StunClient

__all__ = ["NatObserver", "RESTUN_MIN_INTERVAL"]

Addr = Hashable
RESTUN_MIN_INTERVAL = 10.0  # at most one early STUN round (data unanswered) per this many seconds


class NatObserver(Core):
    """STUN and NAT classification for one socket (sans-I/O)."""

    def __init__(self, servers: Iterable[Addr], *, rng: Callable[[int], bytes], refresh: float | None = REFRESH,
                 host_of: Callable[[Addr], str], addr_of: Callable[[str, int], Addr]) -> None:
        super().__init__()
        self.stun = StunClient(list(servers), rng=rng, refresh=refresh, host_of=host_of)
        self.classifier = NatClassifier(rng=rng, addr_of=addr_of)
        self._host_of = host_of
        self._pending = True  # run the RFC 5780 tests after the next answer naming an alternate
        self._last_restun = -RESTUN_MIN_INTERVAL
        self.reflexive: list[tuple[str, int]] = []
        self.behaviour: str = Mapping.UNKNOWN

    def start(self, now: float) -> None:
        self.stun.start(now)
        self._drain(now)

    def restart(self, now: float, *, reclassify: bool = False) -> None:
        """A new STUN round now (the port or the network changed, or data went unanswered);
        ``reclassify``: the RFC 5780 tests too (another network, maybe another NAT) — not after a
        mere silence: the first round's requests to the alternate port would still be let in
        (RFC 5780 §4.4)."""
        if reclassify:
            self._pending = True
        self.stun.restart(now)
        self._last_restun = now
        self._drain(now)

    def may_restun(self, now: float) -> bool:
        return now - self._last_restun >= RESTUN_MIN_INTERVAL

    def receive(self, data: bytes | memoryview, addr: Addr, now: float) -> bool:
        """A STUN datagram: True if it answered one of our transactions."""
        raw = bytes(data)
        if self.stun.receive(raw, addr, now):
            self._drain(now)
            return True
        if self.classifier.receive(raw, addr, now):
            self._classified()
            return True
        return False

    @property
    def filtering(self) -> str:
        """Our NAT's filtering (RFC 4787 §5), "unknown" until the RFC 5780 tests tell."""
        return self.classifier.filtering if self.classifier.done else Filtering.UNKNOWN

    def is_open(self, ours: Iterable[object]) -> bool:
        """Our IPv4 address is open: STUN over IPv4 sees one of ``ours`` (our interfaces'
        addresses: no NAT) and the RFC 5780 tests found endpoint-independent filtering (no
        stateful firewall). Unknown filtering (one STUN server, or one without an alternate
        address) is not open. An IPv6 reflexive address is always one of ours (no NAT) and says
        nothing about an IPv4 NAT, so it does not count."""
        mine = {str(a) for a in ours}
        return self.filtering == Filtering.INDEPENDENT and any(
            ip in mine and ":" not in ip for ip, _ in self.reflexive)

    @property
    def mapping_detail(self) -> str:
        """The mapping in RFC 4787 §4.1 terms: endpoint-dependent refined to address- or
        address-and-port-dependent when the RFC 5780 test could tell."""
        c = self.classifier
        if self.behaviour == Mapping.DEPENDENT and c.done and c.mapping is not None:
            return c.mapping
        return self.behaviour

    def next_deadline(self) -> float | None:
        times = [t for t in (self.stun.get_timer(), self.classifier.get_timer()) if t is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        self.stun.handle_timer(now)
        self._drain(now)
        c = self.classifier
        if (due := c.get_timer()) is not None and due <= now:
            c.handle_timer(now)
            self._outbox.extend(c.datagrams_to_send())
            self._classified()

    def _classify(self, now: float) -> None:
        stun = self.stun
        if not self._pending:
            return
        for server in stun.servers:
            other, mapped = stun.alternate.get(server), stun.mapped.get(server)
            if other is not None and mapped is not None:
                self._pending = False
                if self.classifier.start(server, self._host_of(server), mapped, other, now):
                    self._outbox.extend(self.classifier.datagrams_to_send())
                return

    def _classified(self) -> None:
        c = self.classifier
        if c.done:
            self._events.append(NatClassified(c.filtering, c.mapping))

    def _drain(self, now: float) -> None:
        self._outbox.extend(self.stun.datagrams_to_send())
        events = self.stun.pop_events()
        if not events:
            return
        self._events.extend(e for e in events if isinstance(e, (StunFailed, StunChanged)))
        self._classify(now)
        reflexive, behaviour = self.stun.reflexive(), self.stun.mapping_behaviour()
        if reflexive != self.reflexive or behaviour != self.behaviour:
            # an address we had is gone (a router rebooted or was renumbered), not one more server's answer
            moved = bool(reflexive) and bool(set(self.reflexive) - set(reflexive))
            self.reflexive, self.behaviour = reflexive, behaviour
            self._events.append(ReflexiveChanged(tuple(reflexive), behaviour, moved))

