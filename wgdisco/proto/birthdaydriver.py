"""Birthday punching, driven (proto/birthday.py does the attempt itself; docs/nat-traversal.md).

``BirthdayDriver`` decides, for each peer of the path selector, whether an attempt should start
(no live path, or data over it unanswered, and our NAT and the peer's differ in hardness), which
targets it aims at, when an attempt won (a live path over one of its sockets), and when a
punched socket is released. It turns the puncher's sends into probe datagrams (through the
prober, so they are authenticated path probes) and its events into the node's
``BirthdayChanged``. Pure: ``now`` passed in; what to send is drained by ``datagrams_to_send()``,
events by ``pop_events()``.
"""

from __future__ import annotations


from typing import Any, Callable, Collection, Hashable

from wgdisco.errors import LocalError
from wgdisco.proto.birthday import EASY, HARD, AttemptFailed, BirthdayPuncher, SocketsClosed, public_ipv4
from wgdisco.proto.birthday import Timing
from wgdisco.proto.core import Core
from wgdisco.proto.deadlines import Deadlines
from wgdisco.proto.events import BirthdayChanged
from wgdisco.proto.nat import HARD_MAPPINGS, Mapping
from wgdisco.proto.paths import Candidate, PathSelector
from wgdisco.proto.probe import ProbeRequested, ProbeResult, Prober

__all__ = ["BirthdayDriver", "Timing"]

Addr = Hashable
Key = bytes


class BirthdayDriver(Core):
    """One node's birthday punching: the puncher plus the policy around it."""

    def __init__(
        self,
        selector: PathSelector,
        *,
        rng: Callable[[int], bytes],
        timing: Timing = Timing(),
        addr_of: Callable[[str, int], Addr],
        host_of: Callable[[Addr], str],
        format_addr: Callable[[Addr], str] = str,
        via: Callable[[Addr, int], Addr] | None = None,
        via_socket: Callable[[Addr], int | None] = lambda addr: None,
    ) -> None:
        super().__init__()
        self.selector = selector
        self.puncher = BirthdayPuncher(rng=rng, timing=timing)
        # ``via(addr, id)`` is ``addr`` reached from our extra socket ``id``, ``via_socket(addr)``
        # that id (None: the listen socket); without ``via`` this node cannot open extra sockets
        # and never takes the hard role
        self._via = via
        self._via_socket = via_socket
        self._addr_of = addr_of
        self._host_of = host_of
        self._format_addr = format_addr
        self.found: dict[Key, Addr] = {}  # peer -> the address a birthday attempt proved
        self._sent: dict[Key, set[Addr]] = {}  # easy role: this attempt's probed addresses
        # what step looks at besides the peers whose paths changed (issue 22): peers waiting for
        # their backoff or ordinary punching's start_after (a heap), peers waiting for the one
        # hard-side attempt to end, and what ``ours`` and ``suspected`` were at the last step
        self._waits: Deadlines[Key] = Deadlines()
        self._hard_waiting: set[Key] = set()
        self._ours: str | None = None
        self._suspected: frozenset[Key] = frozenset()

    def role(self, ours: str, public: Key) -> str | None:
        """HARD when our NAT is hard and the peer's easy, EASY the other way round; None when
        neither or both are hard (then nothing can be guessed, the selector says so)."""
        theirs = self.selector.peer_mapping(public)
        if ours in HARD_MAPPINGS and theirs == Mapping.INDEPENDENT and self._via is not None:
            return HARD
        if ours == Mapping.INDEPENDENT and theirs in HARD_MAPPINGS:
            return EASY
        return None

    def targets(self, public: Key, role: str) -> list[Any]:
        """The peer's public IPv4 candidates: addresses (HARD) or IPs (EASY)."""
        out: list[Any] = []
        paths = sorted(self.selector.paths(public), key=lambda p: -p.last_seen)  # the newest first
        for path in paths:  # records' candidates, and its probes' sources
            if path.kind == "lan" or path.family != 4 or self._via_socket(path.addr) is not None:
                continue
            host = self._host_of(path.addr)
            if public_ipv4(host):
                out.append(path.addr if role == HARD else host)
        out = list(dict.fromkeys(out))
        # the hard side aims at the newest address only: an easy peer has one reflexive address per
        # family, and an older one is where it was (a round at it would be wasted)
        return out[:1] if role == HARD else out

    def probe_seen(self, event: ProbeResult | ProbeRequested | None, now: float) -> None:
        """A probe answer or request: a random-port birthday probe hit names its mapped port."""
        if event is None or self.puncher.role(event.peer) != EASY or self._via_socket(event.addr) is not None \
                or event.addr not in self._sent.get(event.peer, ()):
            return
        if self.found.get(event.peer) != event.addr:
            self.found[event.peer] = event.addr
            self._count("birthday-hits")
        if event.addr not in self.selector.addresses(event.peer):
            self.selector.add_candidates(event.peer, [Candidate(event.addr, "prflx", "probe")], now)

    def step(self, now: float, prober: Prober, ours: str, suspected: Collection[Key],
             changed: Collection[Key] | None = None) -> None:
        """Wins, releases, new attempts and this moment's probes; ``ours`` is our NAT's mapping,
        ``suspected`` the peers whose data went unanswered, ``changed`` the peers whose paths
        changed since the last step (the path driver's decisions; None: look at every peer).

        With ``changed``, a step looks at those peers, the peers whose wait is over (a heap of
        backoffs and ordinary punching's start_after, taken at the first step after they end),
        the peers whose suspicion began or ended, and the peers waiting for the hard-side
        attempt once it ended (every peer when ``ours`` changed): O(log n) per wake-up, not a
        walk over every peer with probes (issue 22). A peer's liveness, current path, candidates,
        mapping and punching phase change only through the path selector, which reports it."""
        b = self.puncher
        due = self._waits.pop_due(now)
        now_suspected = frozenset(suspected)
        if changed is None or ours != self._ours:
            look: Collection[Key] = prober.peers
        else:
            look = {k for k in (*changed, *due, *(now_suspected ^ self._suspected)) if prober.has_peer(k)}
        self._ours, self._suspected = ours, now_suspected
        startable: list[Key] = []
        looked = set(look)
        for public in sorted(look):
            if self._look(public, now, suspected):
                startable.append(public)
        for send in b.plan(now):
            if not prober.has_peer(send.peer):
                continue
            if send.socket is not None:
                assert self._via is not None
                addr = self._via(send.addr, send.socket)
            else:
                try:
                    addr = self._addr_of(str(send.host), int(send.port or 0))
                except (LocalError, OSError, ValueError):
                    continue
                self._sent.setdefault(send.peer, set()).add(addr)
            self._outbox.append((prober.request(send.peer, addr, now), addr))
        if self._hard_waiting and not b.hard_running():  # the hard-side attempt ended: its waiters
            waiting, self._hard_waiting = self._hard_waiting - looked, set()
            for public in sorted(waiting):
                if prober.has_peer(public):
                    looked.add(public)
                    if self._look(public, now, suspected):
                        startable.append(public)
        # new attempts send from the next call on: the shell opens their sockets (SocketsWanted)
        # after sending what is queued now
        for public in startable:
            self._start(public, now, ours, public in suspected)
        self._collect(now, prober)
        for public in looked:
            self._wait(public, now, ours, suspected)

    def _look(self, public: Key, now: float, suspected: Collection[Key]) -> bool:
        """One peer's win, release or stale attempt; True: an attempt may start (step)."""
        b, selector = self.puncher, self.selector
        live = selector.is_live(public, now)
        current = selector.current(public)
        sid = self._via_socket(current) if current is not None else None
        if b.running(public):
            if live and public not in suspected:
                role = b.role(public) or ""
                b.won(public, sid, now)
                if role == HARD and sid is None and current is not None:
                    # the peer's random probe hit the mapping our listen socket holds towards it
                    # (one more port in the set, 1 in sockets + 1): a birthday path all the same
                    self.found[public] = current
                self._sent.pop(public, None)
                self._count("birthday-wins")
                self._events.append(BirthdayChanged(public, "won", role, b.probes_sent, (
                    f"birthday punching found the path {self._format_addr(current)}")))
                return False
        elif b.kept(public) is not None and (not live or sid != b.kept(public)):
            b.release(public)  # the path moved away from (or died on) the punched socket
            self._events.append(BirthdayChanged(public, "released", "", b.probes_sent, (
                "the birthday-punched socket is closed: " + (
                    "the path died" if not live else f"the path moved to {self._format_addr(current)}"))))
        # no live path, or data over it went unanswered (the peer or our NAT moved: a
        # punched port does not follow, a new attempt must find one)
        lost = not live or public in suspected
        role = b.role(public)
        if lost and role is not None:
            if self.targets(public, role)[:1] != b.targets(public)[:1]:
                b.abort(public)  # the peer published a new address: aim there
                b.reset_backoff(public)
        return lost and b.may_start(public, now)

    def _wait(self, public: Key, now: float, ours: str, suspected: Collection[Key]) -> None:
        """After a step looked at ``public``: what it waits for that the path selector does not
        report. Its backoff or start_after (the heap), or the hard-side attempt running for
        another peer; anything else (a path, a candidate, a mapping, a suspicion) comes as a change."""
        b, selector = self.puncher, self.selector
        self._waits.discard(public)
        if b.running(public) or (selector.is_live(public, now) and public not in suspected):
            return
        if not b.may_start(public, now):
            self._waits.set(public, b.ready_at(public))
            return
        role = self.role(ours, public)
        since = selector.punching_since(public)
        if role is None or (public not in suspected and since is None):
            return
        if public not in suspected and now - since < b.timing.start_after:  # type: ignore[operator]
            self._waits.set(public, since + b.timing.start_after)  # type: ignore[operator]
        elif role == HARD and b.hard_running():
            self._hard_waiting.add(public)

    def _start(self, public: Key, now: float, ours: str, suspected: bool) -> None:
        b = self.puncher
        role = self.role(ours, public)
        since = self.selector.punching_since(public)
        if role is None or (not suspected and (since is None or now - since < b.timing.start_after)):
            return
        targets = self.targets(public, role)
        if b.start(public, role, targets, now):
            self._count("birthday-attempts")
            self._sent[public] = set()
            t = b.timing
            what = (f"{t.sockets} extra ports towards {', '.join(self._format_addr(a) for a in targets[:t.max_targets])}"
                    if role == HARD else f"up to {t.probes} random ports at {', '.join(targets[:t.max_targets])}")
            whose = "our NAT" if role == HARD else "the peer's NAT"
            self._events.append(BirthdayChanged(public, "started", role, b.probes_sent, (
                f"birthday punching ({whose} is the hard one): {what}, at most {t.rate:g} probes/s")))

    def _collect(self, now: float, prober: Prober) -> None:
        b = self.puncher
        for event in b.pop_events():
            if isinstance(event, AttemptFailed):
                self._waits.set(event.peer, b.ready_at(event.peer))  # it may start again then
            if isinstance(event, SocketsClosed):
                # paths over closed sockets are gone: never chosen, never probed again
                closed = set(event.ids)
                for public in prober.peers:
                    stale = [p.addr for p in self.selector.paths(public) if self._via_socket(p.addr) in closed]
                    if stale:
                        self.selector.remove_candidates(public, stale, now)
            if isinstance(event, AttemptFailed):
                self._sent.pop(event.peer, None)
                self._count("birthday-failures")
                self._events.append(BirthdayChanged(event.peer, "failed", event.role, b.probes_sent, (
                    f"birthday punching found no path; next attempt in {event.pause:g} s")))
            else:
                self._events.append(event)

    def remove_peer(self, public: Key) -> None:
        self._waits.discard(public)
        self._hard_waiting.discard(public)
        self.puncher.remove_peer(public)
        self.found.pop(public, None)
        self._sent.pop(public, None)
        self._events.extend(self.puncher.pop_events())

    def next_deadline(self, now: float) -> float | None:
        return self.puncher.next_time(now)


