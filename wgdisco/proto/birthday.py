"""Birthday hole punching between a hard NAT and an easy one (pure, fake-clock testable).

Theory of operation
-------------------
A hard NAT (RFC 4787 §4.1: mapping that is not endpoint-independent) gives every destination a
new public port, so the port a STUN server saw is useless to a peer, and ordinary punching
(paths.py) fails when the other side filters (RFC 4787 §5: address-and-port-dependent
filtering, what every stateful NAT does). The birthday attack (Tailscale, "How NAT traversal
works", 2020; the idea of RFC 5128 §3.4 port prediction without the prediction) gets through:

- The *hard* side opens ``sockets`` (256) extra UDP sockets and sends one authenticated path
  probe (probe.py) from each to the easy peer's public address(es). Each opens a mapping on the
  hard NAT, a random public port, that lets the easy peer's address in.
- The *easy* side sends probes from its listen socket to random ports (never the same one twice
  in an attempt) at the hard peer's public IP, at most ``probes`` (2048) per attempt. Each opens
  its own NAT towards that port, so an answer gets back.
- With 256 of ~64,500 ports open, 2048 random probes hit one with odds 1 - (1 - 256/64512)^2048 =
  99.97 %; the expected number is ~250 (2.5 s at 100 probes a second). The probe that hits is
  answered from the hard side's extra socket (the answer proves the path, the MAC is keyed
  from both static keys); the easy side learns the path from the answer, the hard side from
  the request (a peer-reflexive candidate tagged with the socket it came in on). Both probe it,
  the path selector verifies and chooses it, WireGuard runs over it, and the hard side keeps
  that one socket (its keepalive probes, every 5 s, keep the mapping) and closes the others.

The caller (node.py) decides *who* punches: both mappings known, exactly one of them hard, no
live path after ordinary punching had ``start_after`` seconds. Both hard: never (no port on
either side can be guessed; the selector says "hard-nat-both-sides").

Bounds (docs/nat-traversal.md): the easy side's random-port probes, for all peers together,
are paid from one token bucket of ``rate`` (100) a second with a ``burst`` of 10; the hard
side's sends, which open its mappings, from another of the same rate whose burst is one round
(``sockets`` × targets), so that all 256 ports are open at once, where the odds are best.
An attempt lasts at most ``attempt_time`` (25 s): the easy side sends at most ``probes``
(2048); the hard side ``sockets`` × targets (at most ``max_targets``, 2, in practice 1) per
round, one round at the start and one after ``refresh`` (15 s) to keep the mappings open (NATs
drop an unanswered UDP mapping after 30 s or more, RFC 4787 REQ-5). A failed attempt is followed
by a pause: ``backoff`` (30 s), doubling after each failure up to ``backoff_max`` (600 s); a
success resets it. One hard-side attempt runs at a time (so at most ``sockets`` extra sockets are open, plus one
kept per peer whose path runs over one); others wait for it. Sockets are identified by small
integers ("socket ids"), allocated here;
the shell opens and closes them on ``SocketsWanted``/``SocketsClosed``.

`now` is monotonic seconds; ``rng(n) -> bytes``. Addresses are the caller's: targets come in as
opaque addresses (hard role) or IP strings (easy role), sends go out as ``Send`` values.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field

from wgdisco.errors import LocalError
from wgdisco.proto.ratelimiter import TokenBucket

__all__ = ["Timing", "Send", "SocketsWanted", "SocketsClosed", "AttemptFailed", "BirthdayPuncher", "HARD", "EASY",
           "PORT_MIN", "PORT_MAX", "public_ipv4"]

Addr = Hashable
Key = bytes
HARD, EASY = "hard", "easy"  # our role: our NAT is the hard one, or the peer's is
PORT_MIN, PORT_MAX = 1024, 65535  # Linux's NAT picks from these when the inside port is >= 1024


# addresses that never name a NAT's outside: RFC 1918, RFC 6598 (carrier NAT), link-local, loopback
_INSIDE = tuple(ipaddress.ip_network(n) for n in
                ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16", "127.0.0.0/8"))


def public_ipv4(host: str) -> bool:
    """An IPv4 address that can be a NAT's public side (birthday targets; IPv6 is not NATed)."""
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is None:
            return False
        ip = ip.ipv4_mapped
    return not any(ip in net for net in _INSIDE) and not ip.is_multicast and not ip.is_unspecified


@dataclass(frozen=True)
class Timing:
    """The bounds (defaults in the module docstring and docs/nat-traversal.md)."""

    sockets: int = 256
    probes: int = 2048
    rate: float = 100.0
    burst: int = 10
    attempt_time: float = 25.0
    refresh: float = 15.0
    max_targets: int = 2
    backoff: float = 30.0
    backoff_max: float = 600.0
    start_after: float = 2.0  # ordinary punching goes first (it suffices against a WAN host)


@dataclass(frozen=True)
class Send:
    """One birthday probe: to ``addr`` (hard role: a target of the peer) from socket ``socket``
    (None: the listen socket), or (easy role) to ``host``:``port``."""

    peer: Key
    addr: Addr | None = None
    socket: int | None = None
    host: str | None = None
    port: int | None = None


@dataclass(frozen=True)
class SocketsWanted:
    """Open these extra sockets (ids) for ``peer``'s attempt."""

    peer: Key
    ids: tuple[int, ...]


@dataclass(frozen=True)
class SocketsClosed:
    """Close these extra sockets (ids)."""

    ids: tuple[int, ...]


@dataclass(frozen=True)
class AttemptFailed:
    """``peer``'s attempt ran out; the next may start after ``pause`` seconds."""

    peer: Key
    role: str
    pause: float


@dataclass
class _Attempt:
    role: str
    started: float
    targets: list  # hard: opaque addresses; easy: IP strings
    sockets: tuple[int, ...] = ()
    next_round: float = 0.0  # hard: when the next round of sends begins
    cursor: int = 0  # hard: sends done in this round; easy: probes sent
    tried: set[int] = field(default_factory=set)  # easy: ports already probed


@dataclass
class _Peer:
    attempt: _Attempt | None = None
    kept: int | None = None  # the socket the path runs over (after a win)
    failures: int = 0
    not_before: float = -math.inf  # backoff after a failed attempt
    attempts: int = 0
    wins: int = 0


class BirthdayPuncher:
    """Attempts per peer, their probes under one rate cap, and the extra sockets (sans-I/O)."""

    def __init__(self, *, rng: Callable[[int], bytes], timing: Timing = Timing()) -> None:
        if timing.sockets < 1 or timing.probes < 1 or timing.rate <= 0:
            raise LocalError("birthday timing needs sockets, probes and rate above zero")
        self.timing = timing
        self._rng = rng
        self._peers: dict[Key, _Peer] = {}
        self._bucket = TokenBucket(timing.rate, timing.burst)  # random-port probes (easy role)
        # the hard role's sends open its mappings: one round may go out at once (a burst of
        # ``sockets`` × targets), the same sustained rate
        self._open_bucket = TokenBucket(timing.rate, timing.sockets * timing.max_targets)
        self._next_id = 1
        self._turn = 0
        self._events: list[SocketsWanted | SocketsClosed | AttemptFailed] = []
        self.probes_sent = 0  # every birthday probe, both roles
        self.over_rate = 0  # sends deferred because the bucket was empty

    # --- state

    def running(self, peer: Key) -> bool:
        p = self._peers.get(peer)
        return p is not None and p.attempt is not None

    def role(self, peer: Key) -> str | None:
        p = self._peers.get(peer)
        return p.attempt.role if p is not None and p.attempt is not None else None

    def may_start(self, peer: Key, now: float) -> bool:
        """No attempt running and the backoff after the last failure is over."""
        p = self._peers.get(peer)
        return p is None or (p.attempt is None and now >= p.not_before)

    def ready_at(self, peer: Key) -> float:
        """When the backoff after the peer's last failed attempt is over (-inf: none)."""
        p = self._peers.get(peer)
        return p.not_before if p is not None else -math.inf

    def hard_running(self) -> bool:
        """A hard-side attempt runs (there is one at a time: ``start``)."""
        return any(p.attempt is not None and p.attempt.role == HARD for p in self._peers.values())

    def sockets(self, peer: Key) -> tuple[int, ...]:
        """The peer's open extra sockets: its attempt's, and the kept one."""
        p = self._peers.get(peer)
        if p is None:
            return ()
        ids = p.attempt.sockets if p.attempt is not None else ()
        return ids if p.kept is None or p.kept in ids else (*ids, p.kept)

    def kept(self, peer: Key) -> int | None:
        p = self._peers.get(peer)
        return p.kept if p is not None else None

    def stats(self, peer: Key) -> tuple[int, int, int]:
        """(attempts, wins, failures in a row)."""
        p = self._peers.get(peer)
        return (p.attempts, p.wins, p.failures) if p is not None else (0, 0, 0)

    # --- input

    def start(self, peer: Key, role: str, targets: Iterable, now: float) -> bool:
        """Begin an attempt (``role`` HARD: ``targets`` are the peer's public addresses; EASY:
        its public IPs). False if one runs, the backoff is not over, or there is no target."""
        if role not in (HARD, EASY):
            raise LocalError(f"birthday role {role!r} is not {HARD!r} or {EASY!r}")
        targets = list(dict.fromkeys(targets))[: self.timing.max_targets]
        if not targets or not self.may_start(peer, now):
            return False
        if role == HARD and self.hard_running():
            return False  # one hard-side attempt at a time: 256 sockets, not 256 per peer (file descriptors)
        p = self._peers.setdefault(peer, _Peer())
        attempt = _Attempt(role, now, targets, next_round=now)
        if role == HARD:
            ids = tuple(range(self._next_id, self._next_id + self.timing.sockets))
            self._next_id += self.timing.sockets
            attempt.sockets = ids
            self._events.append(SocketsWanted(peer, ids))
        p.attempt = attempt
        p.attempts += 1
        return True

    def won(self, peer: Key, socket: int | None, now: float) -> None:
        """The peer's path is live: over our extra socket ``socket`` (kept), or over the listen
        socket (None). The attempt ends; every other extra socket of the peer closes."""
        p = self._peers.get(peer)
        if p is None:
            return
        if p.attempt is not None:
            p.wins += 1
            p.failures = 0
            p.not_before = -math.inf
        keep = socket if socket is not None and socket in self.sockets(peer) else None
        close = tuple(i for i in self.sockets(peer) if i != keep)
        p.attempt = None
        p.kept = keep
        if close:
            self._events.append(SocketsClosed(close))

    def release(self, peer: Key) -> None:
        """The kept socket is no longer the path (the peer moved, the path died): closed."""
        p = self._peers.get(peer)
        if p is not None and p.kept is not None and (p.attempt is None or p.kept not in p.attempt.sockets):
            self._events.append(SocketsClosed((p.kept,)))
        if p is not None:
            p.kept = None

    def abort(self, peer: Key) -> None:
        """End the running attempt without counting it as failed (its targets are stale: the
        peer published a new address); its sockets close, the next may start at once."""
        p = self._peers.get(peer)
        if p is None or p.attempt is None:
            return
        close = tuple(i for i in p.attempt.sockets if i != p.kept)
        p.attempt = None
        if close:
            self._events.append(SocketsClosed(close))

    def targets(self, peer: Key) -> list:
        p = self._peers.get(peer)
        return list(p.attempt.targets) if p is not None and p.attempt is not None else []

    def reset_backoff(self, peer: Key) -> None:
        """Something changed (a new address of the peer or ours): the next attempt may start now."""
        p = self._peers.get(peer)
        if p is not None:
            p.not_before = -math.inf
            p.failures = 0

    def remove_peer(self, peer: Key) -> None:
        p = self._peers.pop(peer, None)
        if p is not None:
            ids = (p.attempt.sockets if p.attempt is not None else ()) + ((p.kept,) if p.kept is not None else ())
            if ids:
                self._events.append(SocketsClosed(tuple(dict.fromkeys(ids))))

    # --- output

    def plan(self, now: float) -> list[Send]:
        """The probes to send now (each paid from the rate bucket); ends attempts that ran out."""
        out: list[Send] = []
        t = self.timing
        order = list(self._peers.items())
        if len(order) > 1:  # the bucket is shared: whoever went first last time goes last now
            self._turn = (self._turn + 1) % len(order)
            order = order[self._turn:] + order[:self._turn]
        for peer, p in order:
            a = p.attempt
            if a is None:
                continue
            if now - a.started >= t.attempt_time:
                self._fail(peer, p, now)
                continue
            if a.role == HARD:
                per_round = len(a.sockets) * len(a.targets)
                if a.cursor >= per_round and now >= a.next_round:
                    a.cursor = 0  # a refresh round
                while a.cursor < per_round and now >= a.next_round:
                    if not self._take(now, self._open_bucket):
                        break
                    sid = a.sockets[a.cursor % len(a.sockets)]
                    target = a.targets[a.cursor // len(a.sockets)]
                    out.append(Send(peer, addr=target, socket=sid))
                    a.cursor += 1
                    if a.cursor == per_round:
                        a.next_round = a.next_round + t.refresh
            else:
                span = PORT_MAX - PORT_MIN + 1
                while a.cursor < t.probes and len(a.tried) < span:
                    if not self._take(now, self._bucket):
                        break
                    port = self._random_port(a.tried)
                    a.tried.add(port)
                    out.append(Send(peer, host=a.targets[a.cursor % len(a.targets)], port=port))
                    a.cursor += 1
        self.probes_sent += len(out)
        return out

    def next_time(self, now: float) -> float | None:
        """When ``plan`` next has work (a send, or an attempt to end); None if never."""
        times = []
        t = self.timing
        for p in self._peers.values():
            a = p.attempt
            if a is None:
                continue
            times.append(a.started + t.attempt_time)
            if a.role == HARD:
                if a.cursor < len(a.sockets) * len(a.targets):
                    times.append(max(a.next_round, self._open_bucket.ready_at()))
                else:
                    times.append(a.next_round)
            elif a.cursor < t.probes:
                times.append(self._bucket.ready_at())
        return max(now, min(times)) if times else None

    def pop_events(self) -> list[SocketsWanted | SocketsClosed | AttemptFailed]:
        events, self._events = self._events, []
        return events

    # --- internals

    def _take(self, now: float, bucket: TokenBucket) -> bool:
        if bucket.take(now):
            return True
        self.over_rate += 1
        return False

    def _fail(self, peer: Key, p: _Peer, now: float) -> None:
        a = p.attempt
        assert a is not None
        p.failures += 1
        pause = min(self.timing.backoff * 2 ** (p.failures - 1), self.timing.backoff_max)
        p.not_before = now + pause
        p.attempt = None
        close = tuple(i for i in a.sockets if i != p.kept)
        if close:
            self._events.append(SocketsClosed(close))
        self._events.append(AttemptFailed(peer, a.role, pause))

    def _random_port(self, tried: set[int]) -> int:
        span = PORT_MAX - PORT_MIN + 1
        while True:
            port = PORT_MIN + int.from_bytes(self._rng(4), "big") % span
            if port not in tried:
                return port
