"""wgdisco.proto.pmtu: the path MTU search on a fake clock against a simulated path.

The simulated path answers a probe when its IP packet (payload + UDP + IP header) fits the path's
MTU; tests change that MTU, lose answers, and forge hints, and watch what the core enforces.
"""

from __future__ import annotations

import pytest

from wgdisco.proto import pmtu
from wgdisco.proto.pmtu import PathMtu, PmtuChanged, inner_limit, ladder

PEER = b"p" * 32
ADDR = ("2001:db8:1::2", 51820)
RTT = 0.002


class FakePath:
    """One peer's path: answers probes that fit ``mtu`` (IP packet size), after RTT."""

    def __init__(self, core: PathMtu, mtu: int, ipv6: bool = True) -> None:
        self.core, self.mtu, self.ip = core, mtu, 40 if ipv6 else 20
        self.sent: list[int] = []  # probe sizes, in order
        self.lose: set[int] = set()  # answers to these sizes are lost once
        self.dead = False  # nothing gets through
        self.now = 0.0
        self.events: list[PmtuChanged] = []
        self.traffic = True

    def deliver(self) -> None:
        for want in self.core.pop_probes():
            assert want.peer == PEER and want.addr == ADDR
            self.sent.append(want.size)
            if self.dead or want.size + 8 + self.ip > self.mtu:
                continue
            if want.size in self.lose:
                self.lose.discard(want.size)
                continue
            self.core.answered(PEER, ADDR, want.size, RTT, self.now + RTT)
        self.events += self.core.pop_events()

    def run(self, until: float) -> None:
        """Step the clock from deadline to deadline up to ``until``."""
        self.deliver()
        while True:
            due = self.core.next_deadline()
            if due is None or due > until:
                self.now = until
                return
            self.now = max(self.now, due)
            if self.traffic:
                self.core.used(PEER, self.now)  # data flows (an idle peer is not re-searched)
            self.core.handle_timer(self.now)
            self.deliver()


def start(path_mtu: int, *, ipv6: bool = True, mtu: int = 1420) -> FakePath:
    core = PathMtu(mtu)
    net = FakePath(core, path_mtu, ipv6)
    core.set_path(PEER, ADDR, ipv6, 0.0)
    return net


def test_ladder_and_inner_limit() -> None:
    sizes = ladder(1420)
    assert sizes[0] == 1312 and sizes[-1] == 1452 and sizes[-2] == 1440
    assert all(b - a == 16 for a, b in zip(sizes, sizes[1:-1]))
    assert inner_limit(1452, 1420) == 1420  # the full path: the interface MTU, padding capped by it
    assert inner_limit(1352, 1420) == 1312  # 1400-byte IPv6 path: padded to 16, within 1320
    assert inner_limit(1000, 1420) == 1280  # never below IPv6's minimum
    assert ladder(1280) == [1312] and ladder(9000)[-1] == 9032


def test_full_path_keeps_the_interface_mtu_after_one_round() -> None:
    net = start(1500)
    net.run(5.0)
    assert net.core.limit(PEER) == 1420
    view = net.core.view(PEER)
    assert view is not None and (view.inner, view.path, view.state, view.how) == (1420, 1500, "complete", "probe")
    assert net.core.counters["pmtu-probes"] == len(net.sent) == 2  # the largest size and the control probe
    assert sorted(net.sent) == [pmtu.CONTROL_SIZE, 1452]


@pytest.mark.parametrize("ipv6,path_mtu,inner", [(True, 1400, 1312), (False, 1400, 1328), (True, 1492, 1408),
                                                 (False, 1460, 1392), (True, 1360, 1280)])
def test_narrow_path_is_found_within_a_few_rounds(ipv6: bool, path_mtu: int, inner: int) -> None:
    net = start(path_mtu, ipv6=ipv6)
    net.run(0.01)
    assert net.core.limit(PEER) is None  # nothing enforced before the search completes
    net.run(5.0)
    assert net.core.limit(PEER) == inner
    view = net.core.view(PEER)
    assert view is not None and view.path is not None and view.path <= path_mtu
    assert inner + 32 + 8 + (40 if ipv6 else 20) <= path_mtu
    done = [e for e in net.events if e.inner is not None]
    assert len(done) == 1 and done[0].how == "probe"
    assert net.core.counters["pmtu-probes"] <= 20


def test_search_completes_within_three_timeouts_on_a_1400_path() -> None:
    net = start(1400)
    t = 0.0
    while net.core.limit(PEER) is None:
        t += 0.05
        net.run(t)
        assert t < 3 * pmtu.MAX_TIMEOUT + 0.1
    assert net.core.limit(PEER) == 1312


def test_a_lost_answer_is_probed_again_not_taken_as_too_big() -> None:
    net = start(1500)
    net.lose = {1452}  # the largest size's first answer is lost
    net.run(10.0)
    assert net.core.limit(PEER) == 1420
    assert net.sent.count(1452) == 2


def test_a_size_counts_as_too_big_only_after_max_probes_losses() -> None:
    net = start(1400)
    net.run(10.0)
    too_big = ladder(1420).index(1360)  # 1360 + 48 > 1400
    assert net.sent.count(ladder(1420)[too_big]) == pmtu.MAX_PROBES


def test_peer_that_answers_nothing_gets_no_limit_and_is_retried_later() -> None:
    net = start(1500)
    net.dead = True
    net.run(60.0)
    view = net.core.view(PEER)
    assert view is not None and view.state == "unanswered" and net.core.limit(PEER) is None
    assert net.events == []
    probes = len(net.sent)
    assert probes <= 3 * 6
    net.dead = False
    net.run(pmtu.RETRY_UNANSWERED + 10)
    assert net.core.limit(PEER) == 1420 and len(net.sent) > probes


def test_black_hole_falls_back_to_base_at_once_then_searches_again() -> None:
    net = start(1500)
    net.run(5.0)
    assert net.core.limit(PEER) == 1420
    net.mtu = 1400  # the path narrows; no ICMP
    silence = net.now + 1.0
    net.now = silence
    net.core.silence(PEER, silence, net.now)  # data sent, nothing back
    net.run(silence + pmtu.SILENCE - 0.01)
    assert net.core.limit(PEER) == 1420  # not yet: silence shorter than SILENCE
    net.core.silence(PEER, silence, net.now)
    net.run(silence + pmtu.SILENCE + pmtu.MAX_TIMEOUT + 0.01)  # the check round ran out
    assert net.core.limit(PEER) is not None and net.core.limit(PEER) <= 1312
    hole = [e for e in net.events if e.how == "black-hole"]
    assert len(hole) == 1 and hole[0].inner == 1280 and "black hole" in hole[0].text
    net.core.silence(PEER, None, net.now)  # TCP got through at 1280
    net.run(net.now + 5.0)
    assert net.core.limit(PEER) == 1312
    view = net.core.view(PEER)
    assert view is not None and view.black_holes == 1 and view.how == "probe"


def test_silence_on_a_dead_path_is_not_a_black_hole() -> None:
    net = start(1500)
    net.run(5.0)
    net.dead = True
    net.core.silence(PEER, net.now, net.now)
    net.run(net.now + 10.0)
    assert net.core.limit(PEER) == 1420
    assert not [e for e in net.events if e.how == "black-hole"]
    assert net.core.counters["pmtu-checks"] <= 10 / pmtu.RECHECK + 1  # rate-limited while it lasts


def test_silence_with_large_probes_answered_keeps_the_size() -> None:
    net = start(1500)
    net.run(5.0)
    net.core.silence(PEER, net.now, net.now)
    net.run(net.now + 3.0)
    assert net.core.limit(PEER) == 1420 and net.core.counters["pmtu-checks"] >= 1


def test_revalidation_finds_a_wider_path_and_keeps_the_old_size_meanwhile() -> None:
    net = start(1400)
    net.run(10.0)
    assert net.core.limit(PEER) == 1312
    net.mtu = 1500
    net.run(pmtu.REVALIDATE - 1)
    assert net.core.limit(PEER) == 1312  # no probes in between
    net.run(pmtu.REVALIDATE + 20)
    assert net.core.limit(PEER) == 1420


def test_hint_starts_a_check_and_never_decides_alone() -> None:
    net = start(1500)
    net.run(5.0)
    sent = len(net.sent)
    net.core.hint(PEER, 576, net.now)  # forged "too big": the probes still pass
    net.run(net.now + 3.0)
    assert len(net.sent) > sent and net.core.counters["pmtu-hints"] == 1
    assert net.core.limit(PEER) == 1420
    net.core.hint(PEER, 1500, net.now)  # not below what is in use: nothing
    assert net.core.counters["pmtu-hints"] == 1


def test_hint_on_a_really_narrower_path_finds_the_black_hole() -> None:
    net = start(1500)
    net.run(5.0)
    net.mtu = 1380
    net.core.hint(PEER, 1380, net.now)
    net.run(net.now + 10.0)
    assert net.core.limit(PEER) == 1280 + 16 * ((1380 - 80 - 1280) // 16)


def test_path_below_base_keeps_base_and_says_so() -> None:
    net = start(1300)
    net.run(10.0)
    view = net.core.view(PEER)
    assert view is not None and view.state == "error" and net.core.limit(PEER) == 1280
    assert [e.how for e in net.events] == ["error"]


def test_new_path_is_searched_and_the_old_limit_holds_until_then() -> None:
    net = start(1400)
    net.run(10.0)
    assert net.core.limit(PEER) == 1312
    other = ("2001:db8:2::2", 51820)
    net.core.set_path(PEER, other, True, net.now)
    assert net.core.limit(PEER) == 1312
    wants = net.core.pop_probes()
    assert wants and all(w.addr == other for w in wants)
    for w in wants:
        net.core.answered(PEER, other, w.size, RTT, net.now)
    assert net.core.limit(PEER) == 1420
    net.core.set_path(PEER, other, True, net.now)  # the same path again: nothing
    assert net.core.pop_probes() == []


def test_answers_from_elsewhere_or_for_unknown_peers_count_for_nothing() -> None:
    net = start(1400)
    net.core.answered(PEER, ("2001:db8:9::9", 1), 1452, RTT, 0.001)
    net.core.answered(b"q" * 32, ADDR, 1452, RTT, 0.001)
    net.run(10.0)
    assert net.core.limit(PEER) == 1312
    net.core.remove_peer(PEER)
    assert net.core.limit(PEER) is None and net.core.view(PEER) is None and net.core.next_deadline() is None


def test_no_revalidation_while_the_peer_is_idle() -> None:
    # issue 26: a peer that carried no data for IDLE_AFTER gets no search round at REVALIDATE (its
    # NATs may have let the flow go); data makes it due again
    from wgdisco.proto.pmtu import IDLE_AFTER, REVALIDATE

    net = start(1400)  # narrow: a search has sizes above the confirmed one to try again
    net.run(10.0)
    searched = len(net.sent)
    assert searched and IDLE_AFTER < REVALIDATE
    net.traffic = False
    net.run(3 * REVALIDATE)
    assert len(net.sent) == searched  # idle: not one probe
    net.core.used(PEER, net.now)
    net.traffic = True
    net.run(5 * REVALIDATE)
    assert len(net.sent) > searched  # in use again: searched again


def test_a_wake_up_visits_only_the_paths_that_are_due() -> None:
    """500 completed searches and one peer's silence: the wake-up for its black-hole check looks at
    that one path (counted), and next_deadline is the heap's top, not a walk over every peer."""
    core = PathMtu(1420)
    peers = [bytes([i >> 8, i & 255]) * 16 for i in range(500)]
    for i, peer in enumerate(peers):
        core.set_path(peer, (f"2001:db8::{i + 1:x}", 51820), True, 0.0)
    for want in core.pop_probes():  # every path is 1500 wide: all answered at once
        core.answered(want.peer, want.addr, want.size, RTT, RTT)
    core.pop_events()
    assert core.next_deadline() == pmtu.REVALIDATE + RTT  # all complete: the next re-validation
    visited: list[bytes] = []
    wake_up = core._wake_up
    core._wake_up = lambda peer, p, now: (visited.append(peer), wake_up(peer, p, now))[1]  # type: ignore[method-assign]
    core.silence(peers[7], 10.0, 10.0)
    assert core.next_deadline() == 10.0 + pmtu.SILENCE
    core.handle_timer(10.0 + pmtu.SILENCE)
    assert visited == [peers[7]]
    assert {w.peer for w in core.pop_probes()} == {peers[7]}  # its check went out
    core.handle_timer(10.0 + pmtu.SILENCE + 0.1)  # nothing due: nothing visited
    assert visited == [peers[7]]
    core.handle_timer(pmtu.REVALIDATE + RTT)  # every path's re-validation is due now: each once
    assert len(visited) == 501 and len(set(visited)) == 500


def test_silence_towards_a_peer_that_never_answered_wakes_nothing() -> None:
    """A peer that answered no probe (UNANSWERED, nothing enforced) has no size to check: its
    unanswered data must not leave a deadline in the past (the data plane would wake at once,
    again and again, while the silence lasts)."""
    net = start(1500)
    net.dead = True
    net.run(10.0)
    assert net.core.view(PEER).state == pmtu.UNANSWERED
    net.core.silence(PEER, 20.0, 20.0)
    assert net.core.next_deadline() > 21  # the retry of the search, not now
    net.core.handle_timer(20.6)
    assert net.core.next_deadline() > 21 and net.core.pop_probes() == []


def test_silence_of_small_datagrams_is_not_checked_and_a_large_one_makes_it_a_check() -> None:
    """Only data larger than BASE can be lost to a black hole (a path carries BASE, RFC 8899
    §5.1.2): a silence of small datagrams (pings under load, keepalives) sends no check and
    leaves no deadline in the past; a large datagram in the same silence makes the check due."""
    net = start(1500)
    net.run(5.0)
    base = ladder(1420)[0]
    since = net.now
    net.core.silence(PEER, since, net.now, largest=84 + 32)  # a ping, sealed
    net.run(since + 3.0)
    assert net.core.counters.get("pmtu-checks", 0) == 0 and net.core.pop_probes() == []
    due = net.core.next_deadline()
    assert due is None or due > net.now  # nothing left due behind
    net.core.silence(PEER, since, net.now, largest=base)  # BASE itself: still nothing to check
    net.run(net.now + 1.0)
    assert net.core.counters.get("pmtu-checks", 0) == 0
    net.core.silence(PEER, since, net.now, largest=base + 16)  # one size above BASE
    net.run(net.now + 1.0)
    assert net.core.counters["pmtu-checks"] == 1 and net.core.limit(PEER) == 1420


def test_a_silence_of_small_datagrams_after_the_peers_large_data_is_checked() -> None:
    """The link narrows both ways while the peer uploads: its large packets stop arriving, and what
    goes unanswered here is our small ACKs. Large data from the peer within LARGE_RECENT makes that
    silence worth a check, which finds the black hole in our direction of the same link; without
    recent large data the same silence sends nothing, and leaves no deadline behind."""
    net = start(1500)
    net.run(5.0)
    net.mtu = 1400  # the link narrows; no ICMP
    since = net.now
    net.core.silence(PEER, since, net.now, largest=96, large_received=since - 0.1)  # ACKs after its upload
    net.run(since + pmtu.SILENCE + pmtu.MAX_TIMEOUT + 0.01)
    assert net.core.counters["pmtu-checks"] == 1 and net.core.limit(PEER) <= 1312
    quiet = start(1500)
    quiet.run(5.0)
    since = quiet.now
    quiet.core.silence(PEER, since, quiet.now, largest=96, large_received=since - pmtu.LARGE_RECENT)
    quiet.run(since + 5.0)
    assert quiet.core.counters.get("pmtu-checks", 0) == 0
    due = quiet.core.next_deadline()
    assert due is None or due > quiet.now
    # recent when the silence began, no longer when the check falls due: nothing sent, no spin
    late = start(1500)
    late.run(5.0)
    since = late.now
    late.core.silence(PEER, since, late.now, largest=96, large_received=since - pmtu.LARGE_RECENT + 0.2)
    late.run(since + 10.0)
    assert late.core.counters.get("pmtu-checks", 0) == 0
    due = late.core.next_deadline()
    assert due is None or due > late.now


def test_a_path_taken_again_keeps_what_its_search_found_until_revalidation() -> None:
    """Two LAN addresses of one peer, the path switching between them (roaming while members
    converge): each is searched once; switching back restores its result (no probe, the same
    limit) until its re-validation is due; a black hole found on it forgets the result."""
    net = start(1400)
    net.run(5.0)
    assert net.core.limit(PEER) == 1312 and net.core.counters["pmtu-searches"] == 1
    other = ("2001:db8:2::2", 51820)
    net.core.set_path(PEER, other, True, net.now)
    for w in net.core.pop_probes():  # the other path is 1500 wide
        net.core.answered(PEER, other, w.size, RTT, net.now)
    assert net.core.limit(PEER) == 1420 and net.core.counters["pmtu-searches"] == 2
    net.core.set_path(PEER, ADDR, True, net.now + 1.0)  # back: restored, no probe
    assert net.core.pop_probes() == [] and net.core.limit(PEER) == 1312
    assert net.core.counters["pmtu-searches-spared"] == 1 and net.core.view(PEER).state == pmtu.COMPLETE
    assert net.core.next_deadline() <= pmtu.REVALIDATE + 5.0  # re-validated on its own schedule
    net.core.set_path(PEER, other, True, net.now + 2.0)
    net.core.set_path(PEER, ADDR, True, pmtu.REVALIDATE + 10.0)  # too old: searched again
    assert net.core.counters["pmtu-searches"] == 3 and net.core.pop_probes()


def test_a_black_hole_forgets_what_the_path_was_found_to_carry() -> None:
    net = start(1500)
    net.run(5.0)
    net.mtu = 1400
    since = net.now
    net.core.silence(PEER, since, net.now, largest=1452)
    net.run(since + pmtu.SILENCE + pmtu.MIN_TIMEOUT + 0.01)  # the check found it; the new search runs
    assert net.core.counters["pmtu-black-holes"] == 1 and net.core.view(PEER).state == pmtu.SEARCHING
    other = ("2001:db8:2::2", 51820)
    net.core.set_path(PEER, other, True, net.now)
    net.core.pop_probes()
    net.core.set_path(PEER, ADDR, True, net.now)  # back: its old 1420 must not come back
    assert net.core.limit(PEER) is None or net.core.limit(PEER) <= 1312
    net.run(net.now + 5.0)
    assert net.core.limit(PEER) == 1312


def test_an_on_link_path_takes_the_full_size_without_a_search_and_a_black_hole_is_still_found() -> None:
    core = PathMtu(1420)
    net = FakePath(core, 1500)
    core.set_path(PEER, ADDR, True, 0.0, on_link=True)
    net.run(3600.0)  # an hour with data: no search, no re-validation
    assert net.sent == [] and core.limit(PEER) == 1420
    view = core.view(PEER)
    assert view is not None and view.state == pmtu.COMPLETE and view.how == "link" and view.path == 1500
    assert [e.how for e in net.events] == ["link"] and "the link's own" in net.events[0].text
    # a link that does not carry what it says (misconfigured jumbo frames, a bridge narrower than
    # its ends): large data unanswered is checked as on any path
    net.mtu = 1400
    silence = net.now
    core.silence(PEER, silence, net.now, 1452)
    net.run(silence + pmtu.SILENCE + pmtu.MAX_TIMEOUT + 0.01)
    assert [e.how for e in net.events][-1] == "black-hole" and core.limit(PEER) <= 1312
