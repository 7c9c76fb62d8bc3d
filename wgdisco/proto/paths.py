"""Path selection per peer: candidates, hole punching, the best endpoint (pure, fake-clock testable).

Theory of operation
-------------------
Each peer has candidate endpoints (`Candidate`: an opaque address, a kind and a source). Records
are hints (ARCHITECTURE.md, "Trust model"): a candidate becomes usable only once verified, by an
authenticated probe answer (probe.py: `on_probe_result`) or an authenticated WireGuard packet
from it (`on_authenticated`). Each candidate walks

    untested ──probe sent──► probing ──answer──► verified(rtt, last_ok)
                                 │                  │  ▲
                       fail_after timeouts   fail_after timeouts (unless it is the live path)
                                 ▼                  ▼  │ answer
                               failed ──────────────────┘

The peer's *current* path is the one `decision` returns. It is *live* while something
authenticated came from it within `live_time` (15 s; WireGuard's Keepalive-Timeout + Rekey-Timeout,
whitepaper §6.1), or while it is *dormant* (below).

- Quiet when idle (issue 26; docs/nat-traversal.md "Idle peers"). While data flows (`on_data`:
  a data packet within `active_time`, 15 s) keepalive probes go to the current path every
  `keepalive_interval` (5 s), so silence means death, and the other candidates are re-probed.
  Without data nothing is re-probed, and the current path gets keepalive probes only where
  something needs keeping: one per `nat_keepalive` (25 s, below the 30 s UDP timeouts of common
  NATs, RFC 4787 REQ-5 asks for ≥ 2 min but Linux conntrack defaults to 30 s) on a path through a
  NAT while the peer is *in use* (data within `in_use_time`, 3 min; a first path counts as use;
  or pinned: a PersistentKeepalive), none on a LAN path (any other path is taken to cross a NAT). A verified current
  path that goes quiet this way is not dead: after `live_time` without an answer it becomes
  *dormant* (kept, trusted, no punching) until data wakes it (`on_data`: it must prove itself
  within `live_time` again and is probed at once) or a call from the peer does (`on_call`: a
  punching round at once, the peer's record asked for it), or its keepalive probes fail.

- No live path: hole punching (the idea of RFC 5128 §3.3 and ICE, RFC 8445 §6.1.4): every
  candidate is probed at once (LAN first, IPv4 before IPv6 there; then IPv6) at `punch_schedule` offsets 0, 0.2, 0.5, 1,
  2, 4 s, then every `punch_max_interval` (4 s) up to `punch_time` (30 s), then every
  `slow_interval` (30 s). A sighting with new candidates starts a new round at once.
- Choosing: LAN beats public, then lower smoothed RTT (RFC 6298 §2). While nothing has flowed yet
  (no authenticated WireGuard packet since the path was lost) a clearly better verified candidate
  is taken at once. Afterwards hysteresis: a candidate replaces the current path only if it is
  clearly better (a lower class, or an RTT lower by > 30 % and > 5 ms) in `switch_after` (3)
  consecutive probe answers; a candidate with a first win is re-probed every `confirm_interval`.
  A current path that missed its last keepalive probe (two for a switch to a worse class) loses
  at once to a candidate that answers: the peer moved, its old address is dead.
- A live path is never replaced by an unverified candidate: only verified ones are ever chosen.
  WireGuard's roaming rule (whitepaper §2.1) still holds: an authenticated packet from a new
  address makes it the current path at once (the device has already moved there).
- Death: nothing authenticated from the current path for `live_time` despite keepalives. It is
  marked failed, the best other verified candidate becomes current (with `live_time` to prove
  itself) and punching starts again.
- Hard NAT (RFC 4787 §4.1: mapping that is not endpoint-independent) on both sides: a punched
  hole never matches the port the other side learnt, so after one bounded punching phase the peer
  is reported "hard-nat-both-sides" and no more probes go out; at most `hard_nat_probe_budget`
  probes are spent per outage, however many sightings arrive.

- Bounds (ARCHITECTURE.md, "Trust model": whatever a stranger can create is capped and expires):
  at most `max_paths` (64) candidates per peer and `max_per_source` (32) from one source. A new
  candidate past a cap evicts the unverified one that a sighting named longest ago; the current
  path, verified paths and the sighting's own candidates are never evicted (if nothing can go,
  the new one is dropped and counted). An unverified candidate no sighting named for
  `unverified_ttl` (30 min: mDNS names a record once, unicast DNS every PollInterval) is forgotten. Probes are paid from a per-peer token bucket
  (`probe_rate` 16/s, `probe_burst` 32), so no flood of records becomes a flood of probes, and
  the work per call is bounded by the caps, whatever was sent.

`now` is monotonic seconds. Addresses are opaque hashables; `family(addr) -> 4 | 6 | 0` (default
`address_family`, for the socket's ``(host, port, ...)`` tuples) only orders probes.
"""

from __future__ import annotations

import functools
import ipaddress
import math
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from wgdisco.proto.deadlines import Deadlines
from wgdisco.proto.nat import HARD_MAPPINGS, Mapping
from wgdisco.errors import LocalError
from wgdisco.proto.ratelimiter import TokenBucket
from wgdisco.proto.timers import LIVE_TIME

__all__ = [
    "KINDS", "SOURCES", "STATES", "REASONS", "MAPPINGS", "HARD_MAPPINGS",
    "UNTESTED", "PROBING", "VERIFIED", "FAILED",
    "Timing", "Candidate", "PathInfo", "PathSelector", "address_family", "host_kind",
]

Addr = Hashable
Key = bytes  # a peer's public key

KINDS = ("lan", "host", "srflx", "prflx")  # RFC 8445 §5.1.1 names; "lan" = host on a shared subnet
SOURCES = ("config", "mdns", "dns", "stun", "probe", "roaming")
UNTESTED, PROBING, VERIFIED, FAILED = "untested", "probing", "verified", "failed"
STATES = (UNTESTED, PROBING, VERIFIED, FAILED)
REASONS = ("lan", "direct", "no-candidates", "probing", "probes-timed-out", "hard-nat-both-sides")
# RFC 4787 §4.1 mapping behaviours; "endpoint-dependent" stands for either dependent kind.
MAPPINGS = tuple(Mapping)  # proto/nat.py


@dataclass(frozen=True)
class Timing:
    """The selector's clock rules, in seconds (defaults in the module docstring)."""

    live_time: float = LIVE_TIME
    punch_schedule: tuple[float, ...] = (0.0, 0.2, 0.5, 1.0, 2.0, 4.0)
    punch_max_interval: float = 4.0
    punch_time: float = 30.0
    slow_interval: float = 30.0
    keepalive_interval: float = 5.0
    confirm_interval: float = 1.0
    upgrade_interval: float = 10.0
    fail_after: int = 3  # consecutive timeouts
    switch_after: int = 3  # consecutive clearly-better answers
    rtt_gain_ratio: float = 0.30
    rtt_gain_min: float = 0.005
    active_time: float = LIVE_TIME  # data within this: keepalives every keepalive_interval, re-probing
    in_use_time: float = 180.0  # data within this (or a first path): NAT mappings are kept
    nat_keepalive: float = 25.0  # one keepalive probe per this on a NATed path in use ([Discovery] NatKeepalive)
    hard_nat_probe_budget: int = 100  # probes per peer and outage when both NATs are hard
    max_paths: int = 64  # candidates kept per peer (records are hints a stranger can forge)
    max_per_source: int = 32  # of them from one source (mdns, dns, probe, …): one record's worth
    unverified_ttl: float = 1800.0  # an unverified candidate no sighting named for this long goes
    probe_rate: float = 16.0  # probes a second per peer (a token bucket) …
    probe_burst: int = 32  # … with this burst: a punching round of a full candidate list fits twice


@dataclass(frozen=True)
class Candidate:
    """A candidate endpoint as the caller knows it."""

    addr: Addr
    kind: str  # one of KINDS
    source: str  # one of SOURCES


@dataclass
class PathInfo:
    """What the selector knows about one candidate (`PathSelector.paths` gives copies)."""

    addr: Addr
    kind: str
    source: str
    family: int = 0
    state: str = UNTESTED
    rtt: float | None = None  # smoothed, RFC 6298 §2.3 (α = 1/8)
    last_ok: float | None = None  # last authenticated answer or packet
    last_sent: float | None = None
    misses: int = 0  # consecutive probe timeouts
    wins: int = 0  # consecutive answers clearly better than the current path
    next_probe: float = -math.inf  # when a live peer probes this one again
    order: int = 0
    last_seen: float = -math.inf  # the last sighting that named it (or when it was verified)


@dataclass
class _Peer:
    paths: dict[Addr, PathInfo] = field(default_factory=dict)
    mapping: str = Mapping.UNKNOWN
    current: Addr | None = None
    current_since: float = 0.0
    established: bool = False  # an authenticated WireGuard packet since the path was (re)chosen
    punch_start: float | None = None  # the punching phase, while no path is live
    next_round: float | None = None  # None while punching: gave up (hard NAT on both sides)
    hard_probes: int = 0
    budget: TokenBucket | None = None  # its probes (made at the first one)
    active_until: float = -math.inf  # data (or a call) recently: full keepalives and re-probing
    used_until: float = -math.inf  # in use: a NATed current path is kept open
    pinned: bool = False  # always in use (a PersistentKeepalive)
    dormant: bool = False  # the current path went quiet while idle: kept, not dead
    probation_until: float = -math.inf  # woken from dormancy: trusted until then unless it fails
    round_now: bool = False  # a call: every candidate is probed once at the next probe_plan


def address_family(addr: Any) -> int:
    """4 or 6 for a ``(host, port, ...)`` tuple (IPv4-mapped IPv6 is 4), 0 for anything else."""
    try:
        ip = ipaddress.ip_address(str(addr[0]).partition("%")[0])
    except (TypeError, IndexError, KeyError, ValueError):
        return 0
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return 4
    return ip.version


def host_kind(host: str, local_networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> str:
    """"lan" for a host candidate inside one of our own connected networks (a shared subnet,
    IPv4 or IPv6, ULA or global), else "host"."""
    ip = ipaddress.ip_address(host.partition("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return "lan" if any(ip in net for net in local_networks if net.version == ip.version) else "host"


def _class(p: PathInfo) -> int:
    return 0 if p.kind == "lan" else 1


def _rank(p: PathInfo) -> tuple[int, float, int]:
    return (_class(p), p.rtt if p.rtt is not None else math.inf, p.order)


def _replaces_failing(candidate: PathInfo, current: PathInfo) -> bool:
    """An answering candidate takes over from a current path that missed its last keepalive
    probe; a candidate of a worse class only after two misses."""
    return current.misses >= 2 or (current.misses >= 1 and _class(candidate) <= _class(current))


def _probe_order(p: PathInfo) -> tuple[bool, bool, int]:
    """LAN first, and there IPv4 first: both sides of a pair then usually verify the same family
    first and keep it (paths of one class switch only on a repeated clear gain), where each kept
    whichever family answered first and WireGuard's roaming moved each to the other's and back
    (40 members on 2 cores: 1,093 probe-driven and 782 roaming endpoint changes in one run, each
    a new path MTU search). Elsewhere IPv6 first (no NAT on the way)."""
    lan = p.kind == "lan"
    return (not lan, p.family != (4 if lan else 6), p.order)


def _touches(method: Callable[..., Any]) -> Callable[..., Any]:
    """A method ``(self, peer, …, now)`` that may change ``peer``: its wake-up time is computed
    again afterwards (the heap behind next_time and probe_plan)."""

    @functools.wraps(method)
    def wrapper(self: "PathSelector", peer: Key, *args: Any, **kw: Any) -> Any:
        try:
            return method(self, peer, *args, **kw)
        finally:
            self._touch(peer, args[-1])

    return wrapper


class PathSelector:
    """Candidates, probe schedule and the chosen endpoint of every peer (sans-I/O).

    Work per wake-up is O(log n) in the number of peers (issue 26): each peer's next wake-up
    time is computed when it changes and kept in a heap; ``next_time`` reads the heap's top,
    ``probe_plan`` works on the peers that are due, and ``pop_changed`` tells the caller which
    peers' decisions may have changed."""

    def __init__(
        self,
        *,
        own_mapping: str = Mapping.UNKNOWN,
        timing: Timing = Timing(),
        family: Callable[[Addr], int] = address_family,
    ) -> None:
        self.timing = timing
        self._own_mapping = _check_mapping(own_mapping)
        self._open = False  # set_open: our IPv4 address has no NAT and no filtering
        self._family = family
        self._peers: dict[Key, _Peer] = {}
        self._order = 0
        sched = [o for o in timing.punch_schedule if o < timing.punch_time] or [0.0]
        t = sched[-1]
        while t + timing.punch_max_interval < timing.punch_time:
            t += timing.punch_max_interval
            sched.append(t)
        self._fast = tuple(sched)  # round offsets of a punching phase
        self.probes_sent = 0
        self.probes_by: dict[str, int] = {"punching": 0, "keepalive": 0, "reprobe": 0}  # probes_sent by why
        self.candidates_dropped = 0  # new candidates refused: both caps full of protected paths
        self.probes_over_budget = 0  # probes not sent: the peer's budget was spent
        self.paths_let_go = 0  # idle paths whose keepalives went unanswered: let go, not failed
        self._wake_at: Deadlines[Key] = Deadlines()  # peer -> its wake-up time (proto/deadlines.py)
        self._changed: set[Key] = set()  # peers changed since pop_changed

    # --- configuration

    def add_peer(self, peer: Key, *, mapping: str | None = None) -> None:
        """Register `peer` (idempotent; add_candidates and on_authenticated do it too)."""
        if mapping is not None:
            _check_mapping(mapping)
        p = self._peer(peer)
        if mapping is not None:
            p.mapping = mapping
        self._changed.add(peer)  # its first decision (no candidates yet) is reported

    def remove_peer(self, peer: Key) -> None:
        self._peers.pop(peer, None)
        self._wake_at.discard(peer)
        self._changed.discard(peer)

    def set_open(self, open_: bool, now: float) -> None:
        """Our IPv4 address is open (STUN sees our own interface address, and RFC 5780 found
        endpoint-independent filtering): nothing on our side forgets a flow, so an IPv4 path in
        use gets no keepalive probes of ours (the peer keeps its own NAT's state if it has one)."""
        if open_ != self._open:
            self._open = open_
            for peer, p in self._peers.items():
                if not open_ and p.current is not None:  # keepalives again where a path in use needs them
                    cur = p.paths[p.current]
                    if cur.next_probe == math.inf and self._keepalive(p, cur, now) < math.inf:
                        cur.next_probe = now
                self._touch(peer, now)

    def set_own_mapping(self, mapping: str, now: float) -> None:
        """Our NAT's mapping behaviour (from STUN, RFC 5780 §4.3)."""
        self._own_mapping = _check_mapping(mapping)
        for peer, p in self._peers.items():
            self._mapping_changed(p, now)
            self._touch(peer, now)

    @_touches
    def set_pinned(self, peer: Key, pinned: bool, now: float) -> None:
        """Always in use (the peer has a PersistentKeepalive): its NATed path is kept open."""
        p = self._peer(peer)
        p.pinned = pinned
        if pinned and p.current is not None:
            cur = p.paths[p.current]
            if cur.next_probe == math.inf:
                cur.next_probe = now

    @_touches
    def set_peer_mapping(self, peer: Key, mapping: str, now: float) -> None:
        """The peer's NAT mapping behaviour (as it publishes it)."""
        p = self._peer(peer)
        p.mapping = _check_mapping(mapping)
        self._mapping_changed(p, now)

    def _mapping_changed(self, p: _Peer, now: float) -> None:
        if not self._hard(p):
            p.hard_probes = 0
            if p.punch_start is not None and p.next_round is None:  # had given up: try again
                self._start_punch(p, now)

    def _hard(self, p: _Peer) -> bool:
        return self._own_mapping in HARD_MAPPINGS and p.mapping in HARD_MAPPINGS

    def _peer(self, peer: Key) -> _Peer:
        p = self._peers.get(peer)
        if p is None:
            p = self._peers[peer] = _Peer()
        return p

    # --- input

    @_touches
    def add_candidates(self, peer: Key, cands: Iterable[Candidate], now: float) -> None:
        """A sighting: new candidates are untested until verified; known ones keep their state.
        If the peer has no live path, new candidates are probed at once."""
        cands = list(cands)
        for cand in cands:  # all checked before anything changes
            if cand.kind not in KINDS:
                raise LocalError(f"candidate kind {cand.kind!r} is not one of {KINDS}")
            if cand.source not in SOURCES:
                raise LocalError(f"candidate source {cand.source!r} is not one of {SOURCES}")
        p = self._peer(peer)
        new = False
        named = {cand.addr for cand in cands}
        for cand in cands:
            path = p.paths.get(cand.addr)
            if path is None:
                if not self._make_room(p, cand.source, named, now):
                    self.candidates_dropped += 1
                    continue
                path = self._add_path(p, cand.addr, cand.kind, cand.source)
                new = True
            elif cand.kind == "lan":  # a shared subnet is learnt later than the address, never lost
                path.kind = "lan"
            path.last_seen = now
        if new:
            self._update(p, now)
            if not self._live(p, now):
                if p.punch_start is None or now - p.punch_start >= self.timing.punch_time:
                    self._start_punch(p, now)  # slow phase or given up: a new phase
                elif p.next_round is not None:
                    p.next_round = now  # in the fast phase: one extra round now

    @_touches
    def remove_candidates(self, peer: Key, addrs: Iterable[Addr], now: float) -> None:
        """Hints withdrawn (e.g. an mDNS goodbye). The live path stays: it is proven, not a hint."""
        p = self._peers.get(peer)
        if p is None:
            return
        for addr in addrs:
            if addr == p.current and self._live(p, now):
                continue
            if p.paths.pop(addr, None) is not None and addr == p.current:
                p.current = None
        self._update(p, now)

    def _make_room(self, p: _Peer, source: str, named: set[Addr], now: float) -> bool:
        """Room for one more candidate from ``source``: under both caps, or after evicting the
        unverified candidate named longest ago (of that source when its cap is the full one).
        The current path, verified paths and this sighting's own candidates are never evicted;
        False when nothing can go (the new candidate is dropped)."""
        t = self.timing
        same = [x for x in p.paths.values() if x.source == source]
        if len(same) >= t.max_per_source:
            pool = same
        elif len(p.paths) >= t.max_paths:
            pool = list(p.paths.values())
        else:
            return True
        victims = [x for x in pool if x.state != VERIFIED and x.addr != p.current and x.addr not in named]
        if not victims:
            return False
        victim = min(victims, key=lambda x: (x.last_seen, x.order))
        del p.paths[victim.addr]
        return True

    def _expire(self, p: _Peer, now: float) -> None:
        """Unverified candidates that no sighting named for ``unverified_ttl`` are forgotten."""
        ttl = self.timing.unverified_ttl
        stale = [a for a, x in p.paths.items() if x.state != VERIFIED and a != p.current and now - x.last_seen >= ttl]
        for addr in stale:
            del p.paths[addr]

    @_touches
    def take_probe(self, peer: Key, now: float) -> bool:
        """One probe from ``peer``'s budget (``probe_rate`` a second, ``probe_burst``): False when
        it is spent. probe_plan charges its own probes; callers that probe on their own do too."""
        p = self._peers.get(peer)
        return p is not None and self._take(p, now)

    def _take(self, p: _Peer, now: float) -> bool:
        if p.budget is None:
            p.budget = TokenBucket(self.timing.probe_rate, self.timing.probe_burst)
        if not p.budget.take(now):
            self.probes_over_budget += 1
            return False
        return True

    def _add_path(self, p: _Peer, addr: Addr, kind: str, source: str) -> PathInfo:
        self._order += 1
        path = PathInfo(addr, kind, source, family=self._family(addr), order=self._order)
        p.paths[addr] = path
        return path

    @_touches
    def on_probe_result(self, peer: Key, addr: Addr, rtt: float, now: float) -> None:
        """An authenticated answer from `addr` (probe.ProbeResult)."""
        p = self._peers.get(peer)
        path = p.paths.get(addr) if p is not None else None
        if path is None:
            return  # forgotten meanwhile
        path.state = VERIFIED
        path.misses = 0
        path.rtt = rtt if path.rtt is None else path.rtt + (rtt - path.rtt) / 8  # RFC 6298 §2.3
        path.last_ok = now
        self._update(p, now)
        if p.current is None or addr == p.current:
            return
        cur = p.paths[p.current]
        if not self._fresh(cur, now):  # a fallback still unproven: a fresh answer beats it
            self._switch(p, path, now)
        elif _replaces_failing(path, cur):
            # the current path stopped answering (the peer's port or address changed) while this
            # one answers: waiting out live_time would lose traffic for up to 15 s
            self._switch(p, path, now)
        elif not p.established and _class(path) < _class(cur):  # nothing flows yet: a LAN path at once
            self._switch(p, path, now)
        elif self._clearly_better(path, rtt, cur):
            # between paths of one class, only a difference that holds over switch_after answers
            # (smoothed): single samples are noise, on a busy host tens of ms of it, and a switch
            # the peer does not make too has both sides roam back and forth (whitepaper §2.1),
            # each change a new path MTU search (40 members on 2 cores: 2.5 changes per peer)
            path.wins += 1
            if path.wins >= self.timing.switch_after:
                self._switch(p, path, now)
            else:
                path.next_probe = min(path.next_probe, now + self.timing.confirm_interval)
        else:
            path.wins = 0

    @_touches
    def on_probe_timeout(self, peer: Key, addr: Addr, now: float) -> None:
        """No valid answer from `addr` in time (probe.ProbeTimeout)."""
        p = self._peers.get(peer)
        path = p.paths.get(addr) if p is not None else None
        if path is None:
            return
        path.misses += 1
        path.wins = 0
        if addr == p.current and now >= p.active_until and path.state == VERIFIED:
            if path.misses >= self.timing.fail_after:
                # idle and no answer: the NATs let the flow go (the other side stopped keeping it
                # first), or the peer is away. Nothing flows and there is nothing to fail over
                # to: the path stays, dormant and no longer kept; data wakes it and must prove it
                # (then a call re-opens the far side, issue 26)
                path.misses = 0
                path.next_probe = math.inf
                p.used_until = min(p.used_until, now)
                self.paths_let_go += 1
                return
            # idle: one lost keepalive is not a dead path (nor a closed NAT mapping yet): ask
            # again soon, not a whole nat_keepalive later
            path.next_probe = min(path.next_probe, now + self.timing.confirm_interval)
        if addr == p.current:
            # the current path stopped answering: a candidate that answered lately takes over now
            # (the same rule as in on_probe_result, from the other side)
            alive = [x for x in p.paths.values() if x is not path and x.state == VERIFIED and self._fresh(x, now)
                     and _replaces_failing(x, path)]
            if alive:
                self._switch(p, min(alive, key=_rank), now)
                return
        if path.misses < self.timing.fail_after:
            return
        if addr == p.current and self._fresh(path, now):
            return  # WireGuard traffic says it works (e.g. the peer does not answer probes)
        path.state = FAILED
        self._update(p, now)

    def on_unanswered(self, peer: Key, now: float) -> None:
        """WireGuard data to the current path went unanswered (the node's suspicion): counted as
        a missed keepalive probe of that path, so a candidate that answered lately takes over."""
        p = self._peers.get(peer)
        if p is not None and p.current is not None:
            self.on_probe_timeout(peer, p.current, now)

    @_touches
    def on_probe_request(self, peer: Key, addr: Addr, now: float, *, defer: bool) -> None:
        """An authenticated probe request came from `addr` (probe.ProbeRequested). On the verified
        current path it is the peer's keepalive: the path is proven (as by a WireGuard packet,
        whitepaper §2.1). With `defer` (one side of each pair: the caller says which, alike on
        both) our own keepalive to it waits 1.5 `keepalive_interval`, so it goes out only when the
        peer's stop coming: a pair of idle peers sends one keepalive probe per interval, not two
        (a mesh of N members sent N·(N-1) of them: the idle cost that grows with N²). Without
        `defer` both would push each other's timers in lockstep and both would still send."""
        p = self._peers.get(peer)
        if p is None or p.current != addr:
            return
        path = p.paths[addr]
        if path.state != VERIFIED:
            return
        path.last_ok = path.last_seen = now
        path.misses = 0
        if defer:
            interval = self._keepalive(p, path, now)
            if interval != math.inf:
                path.next_probe = max(path.next_probe, now + 1.5 * interval)

    @_touches
    def on_authenticated(self, peer: Key, addr: Addr, now: float, *, kind: str = "prflx") -> None:
        """An authenticated WireGuard packet came from `addr`: verified, live, and the current
        path (WireGuard's roaming rule, whitepaper §2.1). `kind` names a new address."""
        if kind not in KINDS:
            raise LocalError(f"candidate kind {kind!r} is not one of {KINDS}")
        p = self._peer(peer)
        path = p.paths.get(addr)
        if path is None:
            self._make_room(p, "roaming", set(), now)  # authenticated: added even if nothing could go
            path = self._add_path(p, addr, kind, "roaming")
        path.state = VERIFIED
        path.misses = 0
        path.last_ok = path.last_seen = now
        if p.current != addr:
            self._switch(p, path, now)
        p.established = True
        p.punch_start = p.next_round = None
        p.hard_probes = 0

    @_touches
    def on_data(self, peer: Key, when: float, now: float) -> None:
        """A data packet to or from ``peer`` at ``when`` (the device's ``last_data``). Data after
        a quiet spell wakes the path: a dormant current path must prove itself within
        ``live_time`` again and is probed at once; the other candidates are re-probed again."""
        p = self._peers.get(peer)
        if p is None:
            return
        t = self.timing
        woke = when >= p.active_until
        p.active_until = max(p.active_until, when + t.active_time)
        p.used_until = max(p.used_until, when + t.in_use_time)
        if woke:
            self._wake(p, now)

    @_touches
    def on_call(self, peer: Key, now: float) -> None:
        """The peer's record asks us to call (it has data for us, and our holes may have closed):
        every candidate is probed at once, as in a new punching round."""
        p = self._peers.get(peer)
        if p is None:
            return
        p.used_until = max(p.used_until, now + self.timing.in_use_time)
        self._wake(p, now)
        for path in p.paths.values():
            path.next_probe = now
        p.round_now = True
        if not self._live(p, now):
            self._start_punch(p, now)

    def is_fresh(self, peer: Key, now: float) -> bool:
        """The current path answered within ``live_time`` (a call for it would be stale)."""
        p = self._peers.get(peer)
        return p is not None and p.current is not None and self._fresh(p.paths[p.current], now)

    def _wake(self, p: _Peer, now: float) -> None:
        for path in p.paths.values():
            if path.addr != p.current and path.next_probe == math.inf:
                path.next_probe = now + self.timing.upgrade_interval
        if p.current is None:
            return
        cur = p.paths[p.current]
        if p.dormant or not self._fresh(cur, now):
            p.dormant = False
            p.current_since = now  # prove yourself within live_time (trusted meanwhile: no punching)
            p.probation_until = now + self.timing.live_time
        cur.next_probe = min(cur.next_probe, now)

    def is_in_use(self, peer: Key, now: float) -> bool:
        p = self._peers.get(peer)
        return p is not None and (p.pinned or now < p.used_until)

    def last_ok(self, peer: Key) -> float | None:
        """The latest authenticated answer or packet from any of ``peer``'s candidates."""
        p = self._peers.get(peer)
        times = [x.last_ok for x in p.paths.values() if x.last_ok is not None] if p is not None else []
        return max(times) if times else None

    def is_dormant(self, peer: Key) -> bool:
        p = self._peers.get(peer)
        return p is not None and p.dormant

    def needs_nat(self, peer: Key) -> bool:
        """The current path may go through a NAT (it is not a LAN path): letting it go quiet may
        close holes."""
        p = self._peers.get(peer)
        return p is not None and p.current is not None and self._natted(p.paths[p.current])

    def _natted(self, path: PathInfo) -> bool:
        """The path has state on our side to keep: not a LAN path, and not an IPv4 path from an
        open address of ours (``set_open``: no NAT, nothing filtered). IPv6 has no NAT but often
        a stateful firewall that no test here can see, so its paths are kept as NATed ones."""
        return path.kind != "lan" and not (self._open and path.family == 4)

    def _keepalive(self, p: _Peer, cur: PathInfo, now: float) -> float:
        """The current path's keepalive interval now (inf: none)."""
        t = self.timing
        if now < p.active_until:
            return t.keepalive_interval
        if (p.pinned or now < p.used_until) and self._natted(cur):
            return t.nat_keepalive
        return math.inf

    # --- output

    def probe_plan(self, now: float) -> list[tuple[Key, Addr]]:
        """The probes to send now, as (peer, address); each is counted as sent."""
        out: list[tuple[Key, Addr]] = []
        for peer in self._due(now):
            p = self._peers.get(peer)
            if p is None:
                continue
            self._plan_peer(peer, p, now, out)
            self._touch(peer, now)
        self.probes_sent += len(out)
        return out

    def _due(self, now: float) -> list[Key]:
        """The peers whose wake-up time has come (taken off the heap)."""
        return self._wake_at.pop_due(now)

    def _plan_peer(self, peer: Key, p: _Peer, now: float, out: list[tuple[Key, Addr]]) -> None:
        """One due peer's probes (probe_plan)."""
        t = self.timing
        self._expire(p, now)
        self._update(p, now)
        if self._live(p, now):
            cur = p.paths[p.current]
            active, p.round_now = now < p.active_until or p.round_now, False
            # the live path's keepalive first: no flood of candidates may spend its budget
            for path in sorted(p.paths.values(), key=lambda x: (x is not cur, *_probe_order(x))):
                if path.next_probe > now:
                    continue
                if path is cur:
                    interval = self._keepalive(p, cur, now)
                    if interval == math.inf and path.misses == 0:
                        path.next_probe = math.inf  # idle, nothing to keep: quiet (on_data wakes it)
                        continue
                elif not active:
                    path.next_probe = math.inf  # idle: no re-probing (on_data, on_call wake it)
                    continue
                if not self._take(p, now):
                    break  # due again at the next call
                out.append((peer, path.addr))
                self._sent(path, now)
                self.probes_by["keepalive" if path is cur else "reprobe"] += 1
                if path is cur:
                    # after a miss, ask again within keepalive_interval even when idle
                    path.next_probe = now + (min(interval, t.keepalive_interval) if path.misses else interval)
                elif path.wins:
                    path.next_probe = now + t.confirm_interval
                elif path.state == FAILED or _class(path) > _class(cur):
                    path.next_probe = now + t.slow_interval
                else:
                    path.next_probe = now + t.upgrade_interval
        elif p.next_round is not None and p.next_round <= now:
            hard = self._hard(p)
            for path in sorted(p.paths.values(), key=_probe_order):
                if hard:
                    if p.hard_probes >= t.hard_nat_probe_budget:
                        break
                    p.hard_probes += 1
                if not self._take(p, now):
                    break  # the rest waits for the next round
                out.append((peer, path.addr))
                self._sent(path, now)
                self.probes_by["punching"] += 1
                path.next_probe = now + t.upgrade_interval
            self._next_round(p, now)
            if hard and p.hard_probes >= t.hard_nat_probe_budget:
                p.next_round = None  # budget spent: nothing more this outage

    def decision(self, peer: Key, now: float) -> tuple[Addr | None, str]:
        """The endpoint to use for `peer` (None: keep what you have) and why, one of REASONS."""
        p = self._peers.get(peer)
        if p is None or not p.paths:
            return None, "no-candidates"
        before = (p.current, p.punch_start, p.dormant)
        self._update(p, now)
        if (p.current, p.punch_start, p.dormant) != before:
            self._touch(peer, now)
        if p.current is not None:
            return p.current, "lan" if p.paths[p.current].kind == "lan" else "direct"
        punching = p.punch_start is not None and now - p.punch_start < self.timing.punch_time
        if self._hard(p) and p.punch_start is not None and p.next_round is None:
            if not punching or p.hard_probes >= self.timing.hard_nat_probe_budget:
                return None, "hard-nat-both-sides"
        if punching:
            return None, "probing"
        return None, "probes-timed-out"

    def best(self, peer: Key, now: float) -> Addr | None:
        return self.decision(peer, now)[0]

    def is_live(self, peer: Key, now: float) -> bool:
        """Something authenticated came from the current path within live_time."""
        p = self._peers.get(peer)
        return p is not None and self._live(p, now)

    def next_time(self, now: float) -> float | None:
        """When probe_plan next has work, or a path may die or go stale (>= now); None if never.
        Probe work waits for the peer's budget: a spent bucket never makes this `now`. Pure
        (time is applied by probe_plan and decision): the top of a heap of every peer's wake-up
        time, computed when the peer changed."""
        when = self._wake_at.next()
        return None if when is None else max(now, when)

    @property
    def changed(self) -> bool:
        """Some peer changed since pop_changed (its decision is due)."""
        return bool(self._changed)

    def pop_changed(self) -> set[Key]:
        """The peers changed since the last call (their decisions may have changed)."""
        out, self._changed = self._changed, set()
        return out

    def _touch(self, peer: Key, now: float) -> None:
        """``peer`` may have changed: its wake-up time again, and it joins ``pop_changed``."""
        p = self._peers.get(peer)
        if p is None:
            return
        self._changed.add(peer)
        self._wake_at.set(peer, self._peer_time(p, now))

    def _peer_time(self, p: _Peer, now: float) -> float | None:
        """When ``p`` next needs probe_plan: a transition, a death, the end of liveness, a probe
        or punching round (waiting for the budget), an unverified candidate's expiry."""
        if self._transition_due(p, now):
            return now  # _update has work (probe_plan, at the next handle_timer, does it)
        t = self.timing
        times: list[float] = []
        probes: list[float] = []
        live = self._live(p, now)
        if p.current is not None and not p.dormant:
            cur = p.paths[p.current]
            times.append(self._anchor(p, cur) + t.live_time)  # death (or dormancy)
            if live and cur.last_ok is not None:
                times.append(cur.last_ok + t.live_time)  # no longer fresh
            if live and p.probation_until > now:
                times.append(p.probation_until)
        if p.current is not None and live:
            probes.extend(path.next_probe for path in p.paths.values())
        if p.next_round is not None:
            probes.append(p.next_round)
        if probes:
            times.append(max(min(probes), p.budget.ready_at() if p.budget is not None else -math.inf))
        unverified = [x.last_seen for a, x in p.paths.items() if x.state != VERIFIED and a != p.current]
        if unverified:
            times.append(min(unverified) + t.unverified_ttl)
        times = [x for x in times if x != math.inf]
        return min(times) if times else None

    def addresses(self, peer: Key) -> frozenset[Addr]:
        """The peer's candidate addresses (no copies)."""
        p = self._peers.get(peer)
        return frozenset(p.paths) if p else frozenset()

    def paths(self, peer: Key) -> list[PathInfo]:
        """Copies of the peer's candidates, in probe order (for `status`)."""
        p = self._peers.get(peer)
        return [replace(path) for path in sorted(p.paths.values(), key=_probe_order)] if p else []

    def peer_mapping(self, peer: Key) -> str:
        """The peer's NAT mapping behaviour as last published ("unknown" if never)."""
        p = self._peers.get(peer)
        return p.mapping if p is not None else Mapping.UNKNOWN

    def punching_since(self, peer: Key) -> float | None:
        """When the peer's punching phase began (None: it has a live path, or no candidates)."""
        p = self._peers.get(peer)
        return p.punch_start if p is not None else None

    def current(self, peer: Key) -> Addr | None:
        p = self._peers.get(peer)
        return p.current if p is not None else None

    @property
    def peers(self) -> frozenset[Key]:
        return frozenset(self._peers)

    # --- internals

    def _fresh(self, path: PathInfo, now: float) -> bool:
        return path.last_ok is not None and now - path.last_ok < self.timing.live_time

    def current_until(self, peer: Key) -> float | None:
        """When the current path dies unless something answers on it (None: no current path,
        or a dormant one: it does not die of silence)."""
        p = self._peers.get(peer)
        if p is None or p.current is None or p.dormant:
            return None
        return self._anchor(p, p.paths[p.current]) + self.timing.live_time

    def _live(self, p: _Peer, now: float) -> bool:
        if p.current is None:
            return False
        cur = p.paths[p.current]
        return p.dormant or self._fresh(cur, now) or (now < p.probation_until and cur.state != FAILED)

    def _anchor(self, p: _Peer, cur: PathInfo) -> float:
        """The start of the current path's silence: its last answer, or when it was chosen."""
        return max(cur.last_ok if cur.last_ok is not None else -math.inf, p.current_since)

    def _clearly_better(self, path: PathInfo, sample: float, cur: PathInfo) -> bool:
        """A better class, or, in one class, this answer and the smoothed RTT both clearly faster."""
        if _class(path) != _class(cur):
            return _class(path) < _class(cur)
        if cur.rtt is None or path.rtt is None:
            return False
        t = self.timing
        return all(rtt < cur.rtt * (1 - t.rtt_gain_ratio) and cur.rtt - rtt > t.rtt_gain_min
                   for rtt in (sample, path.rtt))

    def _switch(self, p: _Peer, path: PathInfo, now: float) -> None:
        if p.current is None and not p.established:
            p.used_until = max(p.used_until, now + self.timing.in_use_time)  # a first path counts as use
        p.current = path.addr
        p.current_since = now
        p.dormant = False
        p.probation_until = -math.inf
        path.next_probe = now + self.timing.keepalive_interval
        for other in p.paths.values():
            other.wins = 0

    def _sent(self, path: PathInfo, now: float) -> None:
        path.last_sent = now
        if path.state == UNTESTED:
            path.state = PROBING

    def _transition_due(self, p: _Peer, now: float) -> bool:
        """Would ``_update`` change ``p`` at ``now``? (A fallback to take, punching to start or end;
        a death is a deadline of its own in next_time.)"""
        if p.current is None:
            return bool(p.paths) and (p.punch_start is None
                                      or any(x.state == VERIFIED for x in p.paths.values()))
        live = self._live(p, now)
        return (live and p.punch_start is not None) or (not live and p.punch_start is None) or \
            (p.dormant and p.paths[p.current].state == FAILED)

    def _update(self, p: _Peer, now: float) -> None:
        """Apply the passage of time: path death, fallback, the start or end of punching."""
        cur = p.paths.get(p.current) if p.current is not None else None
        if cur is not None and p.dormant and cur.state == FAILED:
            p.dormant = False  # its keepalive probes failed: dead after all
            p.current, p.established, cur = None, False, None
        elif cur is not None and not p.dormant and now >= p.active_until and cur.state == VERIFIED \
                and cur.misses == 0 and now - self._anchor(p, cur) >= self.timing.live_time:
            p.dormant = True  # quiet because idle, not because dead: kept (issue 26)
        elif cur is not None and not p.dormant:
            if now - self._anchor(p, cur) >= self.timing.live_time:
                cur.state = FAILED  # died: silent despite keepalives
                cur.wins = 0
                p.current, p.established, cur = None, False, None
            elif cur.state == FAILED and not self._fresh(cur, now):
                p.current, cur = None, None  # a fallback that did not answer
        if cur is None:
            p.current = None
            verified = (x for x in p.paths.values() if x.state == VERIFIED)
            fallback = min(verified, key=lambda x: (not self._fresh(x, now), _rank(x)), default=None)
            if fallback is not None:
                self._switch(p, fallback, now)
        if self._live(p, now):
            p.punch_start = p.next_round = None
        elif p.punch_start is None and p.paths:
            self._start_punch(p, now)

    def _start_punch(self, p: _Peer, now: float) -> None:
        p.punch_start = now
        p.next_round = now
        if self._hard(p) and p.hard_probes >= self.timing.hard_nat_probe_budget:
            p.next_round = None

    def _next_round(self, p: _Peer, now: float) -> None:
        """The first round of the schedule after `now`; None once a hard×hard phase is over."""
        start = p.punch_start
        assert start is not None
        for off in self._fast:
            if start + off > now:  # absolute times: the same floats next_round is compared with
                p.next_round = start + off
                return
        if self._hard(p):
            p.next_round = None
            return
        last = start + self._fast[-1]
        k = max(1, math.ceil((now - last) / self.timing.slow_interval))
        while last + k * self.timing.slow_interval <= now:
            k += 1
        p.next_round = last + k * self.timing.slow_interval


def _check_mapping(mapping: str) -> str:
    if mapping not in MAPPINGS:
        raise LocalError(f"NAT mapping {mapping!r} is not one of {[str(m) for m in MAPPINGS]}")
    return mapping
