"""Per-peer path MTU discovery, the packetization-layer way (RFC 8899 DPLPMTUD) (pure).

Theory of operation
-------------------
WireGuard's inner MTU (1420 by default) assumes 1500-byte outer packets. On a narrower path
(PPPoE 1492, DS-Lite 1460, mobile and tunnelled underlays 1400–1450) whose routers' ICMP "too
big" is filtered, big packets vanish (a *black hole*). Between two wgdisco peers the path is
measured instead, with padded, authenticated path probes (proto/probe.py) sent on the peer's
current path: only a probe *answer* proves a size (RFC 8899 §4.1, §4.6.1 — an ICMP message or
a lost probe never does; ICMP is a hint that starts probing, §4.6.2).

Sizes are UDP payloads. A data packet with an inner packet of ``n`` bytes is ``32`` bytes of
WireGuard (16 header + 16 tag, whitepaper §5.4.6) plus the inner packet padded to a multiple of
16, not beyond the interface MTU. So the only sizes worth telling apart form a *ladder*:
``32 + 16k`` from ``32 + 1280`` (inner 1280, the IPv6 minimum MTU, RFC 8200 §5: the tunnel must
carry IPv6, so nothing ever goes below it; this is BASE_PLPMTU, RFC 8899 §5.1.2) up to the
largest below ``32 + MTU``, and ``32 + MTU`` itself (MAX_PLPMTU).

    (no path) ──set_path──► SEARCHING ──rounds──► COMPLETE ──every REVALIDATE──► SEARCHING
                                │  nothing ever answered            │ black hole: large probes
                                ▼                                   ▼ lost while a small one is
                           UNANSWERED (no limit:             BLACK-HOLE fallback to BASE at once,
                           a peer without probes)            then SEARCHING again (RFC 8899 §4.3)
                                │ base lost, small answered
                                ▼
                              ERROR (the path cannot carry BASE: BASE stays in use, §5.2)

A search *round* sends several sizes at once (RFC 8899 §5.3 leaves the search to the
implementation; QUIC, RFC 9000 §14.3, and Tailscale probe several): SPLIT sizes spread over
(confirmed, limit], the highest being the smallest size not yet proven too big. The first
round of a search sends only the largest size (most paths carry it: one probe completes the
search); the spread rounds follow when it is lost. The round ends
when every probe is answered or after the probe timeout (3 × the round trip, within
[MIN_TIMEOUT, MAX_TIMEOUT]). An answered size is confirmed; a size lost MAX_PROBES times
(RFC 8899 §5.1.2) is too big. The search is complete when the next ladder size above the
confirmed one is too big (or the confirmed one is MAX_PLPMTU).

What the data path enforces (``limit``): nothing until the first search of a path completes
(the packets of that second go as before, lost or not: a limit that is not yet confirmed would
be sent to hosts as ICMP "too big", and hosts keep a learnt path MTU for ten minutes, RFC 1191
§6.3 / Linux ``mtu_expires``); then the confirmed size, kept during a re-validation; BASE from
the moment a black hole is found until a new search confirms more (confirmation before use,
RFC 8899 §5.2).

Black holes (RFC 8899 §4.3). Data sent to the peer with nothing authenticated back for
SILENCE seconds (``silence``) is checked with two probes of the size in use and one small one:
the small one answered and both large ones lost is a black hole: BASE at once, a log line
(``PmtuChanged``), and a new search. A path change (``set_path``) restarts the search; the
limit in use stays until the new path's search completes. A path inside one of our connected
networks (``on_link``) is not searched: it takes the full size at once (``how`` "link"), and
only the black-hole check can lower it.

Inputs take ``now``; probes to send are ``ProbeWanted`` in ``pop_probes()``; changes of what is
enforced are ``PmtuChanged`` events in ``pop_events()``.
"""

from __future__ import annotations

import math

from dataclasses import dataclass, field
from typing import Hashable

from wgdisco.proto.core import Core
from wgdisco.proto.deadlines import Deadlines

__all__ = [
    "WG_OVERHEAD", "UDP_HEADER", "BASE_INNER", "MAX_PROBES", "SPLIT", "MIN_TIMEOUT", "MAX_TIMEOUT",
    "SILENCE", "RECHECK", "REVALIDATE", "RETRY_UNANSWERED", "CONTROL_SIZE",
    "ProbeWanted", "PmtuChanged", "PmtuView", "PathMtu", "ladder", "inner_limit", "ip_header",
]

Addr = Hashable
Key = bytes

WG_OVERHEAD = 32  # transport header (16) + Poly1305 tag (16), whitepaper §5.4.6
UDP_HEADER = 8
BASE_INNER = 1280  # RFC 8200 §5: the smallest MTU IPv6 (inside the tunnel) may meet
MAX_PROBES = 3  # RFC 8899 §5.1.2: losses of one size before it counts as too big
SPLIT = 4  # sizes probed in one search round
MIN_TIMEOUT, MAX_TIMEOUT = 0.25, 1.0  # a round's probe timeout, 3 × RTT within these
SILENCE = 0.5  # data unanswered this long: is it a black hole? (RFC 8899 §4.3)
RECHECK = 2.0  # while the silence lasts, check again at most this often
LARGE_RECENT = 10.0  # large data from the peer within this makes a silence worth a check
REVALIDATE = 600.0  # RFC 8899 §5.1.1 PMTU_RAISE_TIMER: search again after this long
IDLE_AFTER = 180.0  # … but not for a peer that carried no data this long (issue 26: quiet when idle)
RETRY_UNANSWERED = 600.0  # a peer that answered no probe: try again after this long
KNOWN_PATHS = 4  # completed searches remembered per peer, by address: a path taken again is not searched again
CONTROL_SIZE = 65  # the small probe: probe.MIN_REQUEST_SIZE + 1, so its answer is told from paths.py's

SEARCHING, COMPLETE, UNANSWERED, ERROR = "searching", "complete", "unanswered", "error"


def ip_header(ipv6: bool) -> int:
    return 40 if ipv6 else 20


def ladder(mtu: int) -> list[int]:
    """The UDP payload sizes worth telling apart for an interface MTU (module docstring)."""
    top = mtu + WG_OVERHEAD
    sizes = list(range(BASE_INNER + WG_OVERHEAD, top, 16)) if mtu > BASE_INNER else []
    return sizes + [top]


def inner_limit(payload: int, mtu: int) -> int:
    """The largest inner packet whose data packet fits in ``payload`` bytes (padding included)."""
    room = payload - WG_OVERHEAD
    return mtu if room >= mtu else max(room & ~15, min(BASE_INNER, mtu))


@dataclass(frozen=True)
class ProbeWanted:
    """Send ``peer`` a probe of ``size`` bytes (UDP payload) to ``addr``."""

    peer: Key
    addr: Addr
    size: int


@dataclass(frozen=True)
class PmtuChanged:
    """What is enforced for ``peer`` changed: inner packets up to ``inner`` bytes (None: no
    limit), learnt by ``how`` ("probe", "black-hole", ...); ``text`` says it in words."""

    peer: Key
    inner: int | None
    how: str
    text: str


@dataclass(frozen=True)
class PmtuView:
    """For ``wgdisco status``: ``inner`` the largest inner packet sent to the peer (None: no limit,
    the interface MTU), ``path`` the outer IP packet size it means, ``state`` and ``how``."""

    inner: int | None
    path: int | None
    state: str
    how: str
    black_holes: int


@dataclass
class _Path:
    addr: Addr
    ip: int  # the IP header size of the path (20 or 40)
    sizes: list[int]
    state: str = SEARCHING
    lo: int = -1  # index of the largest confirmed size (-1: none yet)
    hi: int = 0  # index of the smallest size proven too big (len(sizes): none)
    losses: dict[int, int] = field(default_factory=dict)  # index -> losses in a row
    answered_any: bool = False
    rounds: int = 0
    # the round in flight: size -> probes out; when it ends; whether it is a black-hole check
    out: dict[int, int] = field(default_factory=dict)
    got: dict[int, int] = field(default_factory=dict)
    round_end: float | None = None
    check: bool = False
    next_search: float | None = None
    silence: float | None = None  # start of the silence being watched
    silence_largest: int = 0  # the largest data datagram sent in it (UDP payload bytes)
    large_received: float | None = None  # when data larger than BASE last came from the peer
    next_check: float = 0.0


@dataclass
class _Peer:
    path: _Path | None = None
    enforced: int | None = None  # payload size in use, None: no limit
    how: str = "none"
    rtt: float | None = None
    black_holes: int = 0
    last_data: float = -math.inf  # the latest data to or from the peer (used)
    # addr -> (lo, hi, when) of the last completed search of each recent path, at most KNOWN_PATHS
    known: dict[Addr, tuple[int, int, float]] = field(default_factory=dict)


def _checkable(p: _Peer, now: float) -> bool:
    """A size to check for a black hole: one enforced, or a completed search; and a silence that
    one could explain: large packets are involved. Our data larger than BASE went unanswered (a
    path carries BASE, RFC 8899 §5.1.2), or the peer sent us large data lately: its large packets
    may be what stopped arriving (a link's MTU narrows both ways; while the peer uploads, our
    small ACKs are what goes unanswered), and the check tests our direction of the same link.
    A silence of small datagrams with no large data anywhere is loss or a dead path, not the MTU:
    no check (40 members converging on a loaded machine sent ~3,200 checks of 3 probes each for
    silences of small pings)."""
    path = p.path
    if path is None or (p.enforced is None and path.state != COMPLETE):
        return False
    return path.silence_largest > path.sizes[0] or (
        path.large_received is not None and now - path.large_received < LARGE_RECENT)


class PathMtu(Core):
    """Path MTU discovery for the peers that answer probes (sans-I/O; module docstring)."""

    def __init__(self, mtu: int) -> None:
        super().__init__()
        self.mtu = mtu
        self._peers: dict[Key, _Peer] = {}
        self._probes: list[ProbeWanted] = []
        self._due: Deadlines[Key] = Deadlines()  # peer -> its path's next wake-up (_wake_time)

    # --- inputs ------------------------------------------------------------------------

    def set_path(self, peer: Key, addr: Addr, ipv6: bool, now: float, *, on_link: bool = False) -> None:
        """The peer's current path is ``addr`` (verified: a session runs over it). A new path is
        searched at once; the same one again changes nothing. ``on_link``: ``addr`` is inside one
        of our connected networks (a LAN path): no router between can drop large packets
        silently, and our own stack knows the link's MTU (it fragments at the source: udp.py's
        PMTUDISC settings), so the full size is taken without a search (none of its probes, no
        re-validation; 100 members on 2 cores sent 119,403 path MTU probes, most over LAN
        paths). The black-hole check on unanswered large data still runs (a misconfigured link)."""
        p = self._peers.setdefault(peer, _Peer())
        if p.path is not None and p.path.addr == addr:
            return
        sizes = ladder(self.mtu)
        p.path = _Path(addr, ip_header(ipv6), sizes, hi=len(sizes))
        known = p.known.get(addr)
        if on_link:
            path = p.path
            path.lo, path.state, path.answered_any = len(sizes) - 1, COMPLETE, True
            self._count("pmtu-on-link")
            self._enforce(peer, p, sizes[-1], "link", now)
        elif known is not None and now - known[2] < REVALIDATE:
            # a path taken again (two LAN addresses, roaming back and forth while members converge:
            # 100 members on 2 cores searched 3.9 paths per peer): what its search found stands
            # until its re-validation is due, as it would have had the path stayed
            path = p.path
            path.lo, path.hi, path.state, path.answered_any = known[0], known[1], COMPLETE, True
            path.next_search = known[2] + REVALIDATE
            self._count("pmtu-searches-spared")
            self._enforce(peer, p, sizes[path.lo], "probe", now)
        else:
            self._count("pmtu-searches")
            self._start_round(peer, p, now)
        self._touch(peer, p)

    def remove_peer(self, peer: Key) -> None:
        self._peers.pop(peer, None)
        self._due.discard(peer)

    def used(self, peer: Key, when: float) -> None:
        """Data went to or came from ``peer`` at ``when``: its path is worth re-validating."""
        self._peers.setdefault(peer, _Peer()).last_data = when

    def path_of(self, peer: Key) -> Addr | None:
        p = self._peers.get(peer)
        return None if p is None or p.path is None else p.path.addr

    def answered(self, peer: Key, addr: Addr, size: int, rtt: float, now: float) -> None:
        """An authenticated answer to our probe of ``size`` bytes to ``addr`` came back."""
        p = self._peers.get(peer)
        if p is None or p.path is None or p.path.addr != addr:
            return
        p.rtt = rtt if p.rtt is None else 0.875 * p.rtt + 0.125 * rtt  # RFC 6298 §2 smoothing
        path = p.path
        path.answered_any = True
        if path.round_end is None or size not in path.out:
            if size in path.sizes:  # a late answer still proves the size
                self._confirm(path, path.sizes.index(size))
            return
        path.got[size] = path.got.get(size, 0) + 1
        if all(path.got.get(s, 0) >= n for s, n in path.out.items()):
            self._end_round(peer, p, now)
            self._touch(peer, p)

    def silence(self, peer: Key, since: float | None, now: float, largest: int | None = None,
                large_received: float | None = None) -> None:
        """Data to ``peer`` has gone unanswered since ``since`` (None: it is answered again), the
        largest datagram of it ``largest`` bytes of UDP payload (None: not known, maybe large);
        ``large_received``: when data larger than BASE last came from the peer (None: never)."""
        p = self._peers.get(peer)
        if p is None or p.path is None:
            return
        path = p.path
        if since != path.silence:
            path.silence = since
            path.next_check = 0.0 if since is None else since + SILENCE
        path.silence_largest = 0 if since is None else (1 << 16) if largest is None else largest
        path.large_received = large_received
        self._maybe_check(peer, p, now)
        self._touch(peer, p)

    def hint(self, peer: Key, mtu: int, now: float) -> None:
        """The network said (ICMP "too big", RFC 1191 / RFC 4443 §3.2) that the path takes IP packets
        of ``mtu`` bytes: a hint, never a verdict (RFC 8899 §4.6.2). If it is below what is in use,
        the size in use is checked now; nothing is enforced on the strength of it."""
        p = self._peers.get(peer)
        if p is None or p.path is None or p.enforced is None and p.path.state == SEARCHING:
            return
        path = p.path
        in_use = p.enforced if p.enforced is not None else path.sizes[-1]
        if mtu - UDP_HEADER - path.ip >= in_use or path.round_end is not None:
            return
        self._count("pmtu-hints")
        self._send_check(peer, p, now)
        self._touch(peer, p)

    # --- time --------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """The earliest wake-up of any path (the top of a heap: O(1), changes nothing)."""
        return self._due.next()

    def handle_timer(self, now: float) -> None:
        """The paths whose wake-up came, and only those (O(log n) each, issue 22)."""
        for peer in self._due.pop_due(now):
            p = self._peers.get(peer)
            if p is None or p.path is None:
                continue
            self._wake_up(peer, p, now)
            self._touch(peer, p)

    def _touch(self, peer: Key, p: _Peer) -> None:
        """``peer``'s path may have changed: its wake-up time again."""
        self._due.set(peer, self._wake_time(p))

    @staticmethod
    def _wake_time(p: _Peer) -> float | None:
        """When the path next needs ``handle_timer``: its round's end, else its next search; and
        the next black-hole check while data goes unanswered, when there is a size to check
        (``_maybe_check``: otherwise the check time stays behind and would be due at every wake-up)."""
        path = p.path
        if path is None:
            return None
        times = []
        if path.round_end is not None:
            times.append(path.round_end)
        elif path.next_search is not None:
            times.append(path.next_search)
        if path.silence is not None and path.round_end is None and _checkable(p, path.next_check):
            times.append(path.next_check)
        return min(times) if times else None

    def _wake_up(self, peer: Key, p: _Peer, now: float) -> None:
        path = p.path
        assert path is not None
        if path.round_end is not None and path.round_end <= now:
            self._count("pmtu-rounds-timed-out")
            self._end_round(peer, p, now)
        if path.round_end is None and path.next_search is not None and path.next_search <= now \
                and now - p.last_data > IDLE_AFTER:
            path.next_search = now + REVALIDATE  # idle: no probes through NATs that let go
        elif path.round_end is None and path.next_search is not None and path.next_search <= now:
            # RFC 8899 §5.1.1 PMTU_RAISE_TIMER: the path may carry more now (and a peer that
            # did not answer may have been upgraded); what is confirmed stays in use meanwhile
            path.next_search, path.hi, path.rounds = None, len(path.sizes), 0
            path.losses.clear()
            self._start_round(peer, p, now)
        self._maybe_check(peer, p, now)

    # --- outputs -----------------------------------------------------------------------

    def pop_probes(self) -> list[ProbeWanted]:
        out, self._probes = self._probes, []
        return out

    def limit(self, peer: Key) -> int | None:
        """The largest inner packet to send to ``peer`` (None: no limit)."""
        p = self._peers.get(peer)
        return None if p is None or p.enforced is None else inner_limit(p.enforced, self.mtu)

    def view(self, peer: Key) -> PmtuView | None:
        p = self._peers.get(peer)
        if p is None or p.path is None:
            return None
        inner = self.limit(peer)
        path = None if p.enforced is None else p.enforced + UDP_HEADER + p.path.ip
        return PmtuView(inner, path, p.path.state, p.how, p.black_holes)

    # --- the search ----------------------------------------------------------------------

    def _timeout(self, p: _Peer) -> float:
        return MAX_TIMEOUT if p.rtt is None else min(max(3 * p.rtt, MIN_TIMEOUT), MAX_TIMEOUT)

    def _confirm(self, path: _Path, i: int) -> None:
        if i > path.lo:
            path.lo = i
        for j in [j for j in path.losses if j <= i]:
            del path.losses[j]
        if path.hi <= path.lo:  # a lost size answered after all: it was loss, not size
            path.hi = len(path.sizes)

    def _start_round(self, peer: Key, p: _Peer, now: float) -> None:
        path = p.path
        assert path is not None
        path.check = False
        if path.hi == 0:
            # the small probe came back, BASE never did: the path is below BASE (RFC 8899 §5.2
            # ERROR); BASE stays in use (inner IPv6 cannot go lower) and we look again later
            path.state, path.next_search = ERROR, now + REVALIDATE
            return self._enforce(peer, p, path.sizes[0], "error", now)
        top = min([path.hi - 1] + [j for j in path.losses if j > path.lo])  # highest worth a probe
        if path.lo >= top:
            return self._complete(peer, p, now)
        path.state = SEARCHING
        if path.rounds == 0:
            # the largest alone first: most paths carry it (then the search is one probe, not a
            # round of six: 40 members starting at once sent ~23 probes per peer); a lost one
            # costs one round's timeout before the spread search below
            picks = [top]
        else:
            span = top - path.lo
            picks = sorted({path.lo + max(1, (span * k) // SPLIT) for k in range(1, SPLIT + 1)} | {top})
            if path.lo < 0:
                picks = sorted(set(picks) | {0})  # BASE first of all
        sizes = [path.sizes[i] for i in picks]
        if not path.answered_any:
            sizes.insert(0, CONTROL_SIZE)  # does the peer answer probes at all?
        self._send_round(peer, p, {s: 1 for s in sizes}, now)
        path.rounds += 1

    def _send_round(self, peer: Key, p: _Peer, out: dict[int, int], now: float) -> None:
        path = p.path
        assert path is not None
        path.out, path.got = out, {}
        path.round_end = now + self._timeout(p)
        for size, n in out.items():
            for _ in range(n):
                self._probes.append(ProbeWanted(peer, path.addr, size))
        self._count("pmtu-probes", sum(out.values()))

    def _end_round(self, peer: Key, p: _Peer, now: float) -> None:
        path = p.path
        assert path is not None
        out, got, check = path.out, path.got, path.check
        path.out, path.got, path.round_end, path.check = {}, {}, None, False
        if check:
            return self._end_check(peer, p, out, got, now)
        for size in sorted(out):
            if size == CONTROL_SIZE or size not in path.sizes:
                continue
            i = path.sizes.index(size)
            if got.get(size):
                self._confirm(path, i)
            elif i > path.lo:
                path.losses[i] = path.losses.get(i, 0) + 1
                if path.losses[i] >= MAX_PROBES:
                    path.hi = min(path.hi, i)
                    del path.losses[i]
        if not path.answered_any and path.rounds >= MAX_PROBES:
            # RFC 8899 §5.2: the peer does not do DPLPMTUD (not wgdisco, or probes off): no limit
            path.state, path.next_search = UNANSWERED, now + RETRY_UNANSWERED
            self._count("pmtu-unanswered")
            return
        self._start_round(peer, p, now)

    def _complete(self, peer: Key, p: _Peer, now: float) -> None:
        path = p.path
        assert path is not None
        path.state, path.round_end = COMPLETE, None
        path.next_search = now + REVALIDATE
        path.losses.clear()
        p.known.pop(path.addr, None)
        p.known[path.addr] = (path.lo, path.hi, now)
        while len(p.known) > KNOWN_PATHS:
            del p.known[next(iter(p.known))]
        self._enforce(peer, p, path.sizes[path.lo], "probe", now)

    def _enforce(self, peer: Key, p: _Peer, payload: int | None, how: str, now: float) -> None:
        if payload == p.enforced and how == p.how:
            return
        old = None if p.enforced is None else inner_limit(p.enforced, self.mtu)
        p.enforced, p.how = payload, how
        inner = None if payload is None else inner_limit(payload, self.mtu)
        path = p.path
        assert path is not None
        if inner == old and how in ("probe", "link"):
            return
        outer = None if payload is None else payload + UDP_HEADER + path.ip
        if how == "black-hole":
            text = (f"black hole: {old}-byte packets lost while small ones arrive; falling back to "
                    f"{inner} (path MTU {outer}) and searching again")
        elif how == "error":
            text = f"the path does not carry {outer}-byte packets; keeping {inner} (IPv6's minimum)"
        elif how == "link":
            text = f"on the link: inner packets up to {inner} bytes (path MTU {outer}, the link's own)"
        else:
            text = f"path MTU {outer} confirmed by probes: inner packets up to {inner} bytes"
        self._events.append(PmtuChanged(peer, inner, how, text))

    # --- black holes -------------------------------------------------------------------

    def _maybe_check(self, peer: Key, p: _Peer, now: float) -> None:
        path = p.path
        assert path is not None
        if path.silence is None or path.round_end is not None or now < path.next_check:
            return
        if not _checkable(p, now):
            if _checkable(p, path.next_check):
                path.next_check = now + RECHECK  # the peer's large data is no longer recent: not due again
            return  # nothing confirmed to check yet (the search runs, or the peer does not answer)
        path.next_check = now + RECHECK
        self._send_check(peer, p, now)

    def _send_check(self, peer: Key, p: _Peer, now: float) -> None:
        path = p.path
        assert path is not None
        in_use = p.enforced if p.enforced is not None else path.sizes[-1]
        if in_use <= path.sizes[0]:
            return  # BASE: nothing to fall back to
        path.check = True
        self._send_round(peer, p, {CONTROL_SIZE: 1, in_use: 2}, now)
        self._count("pmtu-checks")

    def _end_check(self, peer: Key, p: _Peer, out: dict[int, int], got: dict[int, int], now: float) -> None:
        path = p.path
        assert path is not None
        large = max(out)
        if got.get(large):
            if large in path.sizes:
                self._confirm(path, path.sizes.index(large))
            return  # the size in use still passes: the silence is something else
        if not got.get(CONTROL_SIZE):
            return  # nothing came back: the path is down, not narrow (paths.py deals with that)
        # RFC 8899 §4.3: a black hole. BASE at once, then search below the lost size.
        p.black_holes += 1
        self._count("pmtu-black-holes")
        p.known.pop(path.addr, None)  # what was found before no longer stands
        i = path.sizes.index(large) if large in path.sizes else len(path.sizes) - 1
        path.lo, path.hi, path.losses = -1, i, {}
        self._enforce(peer, p, path.sizes[0], "black-hole", now)
        path.next_search = None
        self._start_round(peer, p, now)
