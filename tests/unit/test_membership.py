"""MeshMembership (proto/membership.py) on its own, on a fake clock: verdicts, the record budget,
the IPv4 plan, names, expiry, re-announcements and goodbye checks (docs/mesh.md)."""

from __future__ import annotations

import copy
import ipaddress

import pytest

from wgdisco.proto import keys, records
from wgdisco.proto import names as namesmod
from wgdisco.proto.events import AnnounceWanted, MeshAddressChanged, MeshNamesChanged, PeerAdmitted, PeerRemoved
from wgdisco.errors import LocalError
from wgdisco.proto.membership import CheckWanted, GoodbyeDue, MemberExpired, MeshMembership, RelookWanted, Timing
from wgdisco.proto.mesh import Mesh

MESH = Mesh("", master=bytes(32))  # a fixed master: no scrypt, the same plan every run
OTHER = Mesh("", master=bytes([1]) * 32)
OWN = b"\xee" * 32
WALL = 1.7e9
T0 = 1000.0


def key(i: int) -> bytes:
    return bytes([i]) * 32


def sighting(public: bytes, counter: int, cands: tuple[str, ...] = ("198.51.100.7:51820",), *,
             mesh: Mesh = MESH, name: str | None = None, srv: tuple[str, ...] = ()) -> records.Sighting:
    """A record of ``public`` with a MAC over ``cands``; ``srv``: candidates the SRV/A records add
    (not covered by the MAC)."""
    txt: dict[str, bytes | None] = {"mesh": mesh.id.encode(), "mc": str(counter).encode(),
                                    "cand": ",".join(cands).encode(),
                                    "mac": mesh.mac(public, ",".join(cands), counter, name or "").encode()}
    if name is not None:
        txt["name"] = name.encode()
    return records.Sighting(public, [records.parse_candidate(c) for c in (*srv, *cands)], txt=txt)


def membership(mesh: Mesh = MESH, own: bytes = OWN, **kw: object) -> MeshMembership:
    name = kw.pop("name", None)
    return MeshMembership(mesh, own, wall=WALL, name=name, timing=Timing(**kw))  # type: ignore[arg-type]


def run(m: MeshMembership, until: float, handshakes: dict[bytes, float | None], now: float = T0,
        ) -> list[tuple[float, object]]:
    """Step the fake clock from deadline to deadline up to ``until``; (time, event) pairs. Expired
    members are removed, as the node does."""
    out: list[tuple[float, object]] = []
    while (deadline := m.next_deadline()) is not None and deadline <= until:
        now = max(now, deadline)
        m.handle_timer(now, handshakes)
        for event in m.pop_events():
            out.append((now, event))
            if isinstance(event, MemberExpired):
                m.remove(event.peer, "expired")
    return out


# --- verdicts ----------------------------------------------------------------------------

def test_a_valid_record_comes_back_with_only_the_candidates_its_mac_covers() -> None:
    m = membership()
    s = sighting(key(1), 5, ("198.51.100.7:51820", "[2001:db8::7]:51820"), srv=("203.0.113.9:51820",),
                 name="alpha")
    verdict, kept, name = m.check(s)
    assert verdict == "valid" and name == "alpha"
    # the SRV target's address is not under the MAC: a forger could have added it
    assert kept.candidates == [(ipaddress.ip_address("198.51.100.7"), 51820),
                               (ipaddress.ip_address("2001:db8::7"), 51820)]
    assert m.counters == {}


@pytest.mark.parametrize("txt, verdict, counter", [
    ({}, "none", None),
    ({"mesh": OTHER.id.encode()}, "other", "records-other-mesh"),
    ({"mac": b"A" * 24}, "invalid", "mesh-records-invalid"),  # a bad MAC
    ({"mc": b"12x"}, "invalid", "mesh-records-invalid"),
    ({"mc": b"1" * 20}, "invalid", "mesh-records-invalid"),  # more than 19 digits
    ({"mc": None}, "invalid", "mesh-records-invalid"),
    ({"name": b"a" * 64}, "invalid", "mesh-records-invalid"),  # longer than a DNS label
    ({"cand": b"198.51.100.8:51820"}, "invalid", "mesh-records-invalid"),  # a candidate added
    ({"name": b"mallory"}, "invalid", "mesh-records-invalid"),  # a name the MAC does not cover
])
def test_records_that_are_not_a_valid_one_of_our_mesh(txt: dict[str, bytes | None], verdict: str,
                                                      counter: str | None) -> None:
    m = membership()
    s = sighting(key(1), 5)
    if txt:
        s.txt.update(txt)
        if "mc" in txt and txt["mc"] is None:
            del s.txt["mc"]
    else:
        s.txt.clear()
    got, _, name = m.check(s)
    assert (got, name) == (verdict, None)
    assert m.counters == ({counter: 1} if counter else {})
    assert not m.accepted  # nothing of it is remembered


def test_an_older_counter_is_a_replay_the_same_or_a_newer_one_is_not() -> None:
    m = membership()
    assert m.check(sighting(key(1), 100))[0] == "valid"
    assert m.check(sighting(key(1), 99))[0] == "replay"
    assert m.counters == {"mesh-records-replayed": 1}
    assert m.check(sighting(key(1), 100))[0] == "valid"  # mDNS repeats the same record
    assert m.check(sighting(key(1), 101))[0] == "valid"
    assert m.check(sighting(key(1), 100))[0] == "replay"


def test_an_authenticated_name_that_is_not_a_name_is_dropped_and_counted() -> None:
    m = membership()
    verdict, _, name = m.check(sighting(key(1), 5, name="wg-abc"))  # key names cannot be claimed
    assert (verdict, name) == ("valid", None)
    assert m.counters == {"mesh-names-invalid": 1}


def test_counters_kept_after_removal_are_bounded() -> None:
    m = membership(counters_kept=2)
    for i in (1, 2, 3):
        assert m.check(sighting(key(i), 10))[0] == "valid"
    assert list(m.accepted) == [(MESH.id, key(2)), (MESH.id, key(3))]  # the oldest went
    assert m.check(sighting(key(3), 9))[0] == "replay"


# --- the record budget -------------------------------------------------------------------

def test_records_over_the_budget_wait_newest_per_key_capped_and_drain_oldest_first() -> None:
    m = membership(Mesh("", master=bytes(32), max_peers=2), records_per_second=10, records_burst=5, waiting_min=3)
    for i in range(1, 6):  # the burst
        assert m.take_budget(sighting(key(i), 1), "mdns", 0.0)
    for i in (6, 7, 8):
        assert not m.take_budget(sighting(key(i), 1), "mdns", 0.0)
    newer = sighting(key(6), 2)
    assert not m.take_budget(newer, "dns", 0.0)  # key 6's newest record waits, at the end now
    assert list(m.waiting) == [key(7), key(8), key(6)]
    assert not m.take_budget(sighting(key(9), 1), "mdns", 0.0)  # the cap, max(MeshMaxPeers 2, 3), is full
    assert list(m.waiting) == [key(8), key(6), key(9)]
    assert m.counters == {"mesh-records-deferred": 5, "mesh-records-dropped": 1}
    assert m.next_deadline() == pytest.approx(0.1)  # one token at 10 a second
    assert m.drain(0.05) == []
    assert [s.public_key for s, _ in m.drain(0.1)] == [key(8)]
    rest = m.drain(10.0)
    assert [(s.public_key, source) for s, source in rest] == [(key(6), "dns"), (key(9), "mdns")]
    assert rest[0][0] is newer
    assert m.next_deadline() is None and m.drain(20.0) == []


def test_the_waiting_cap_is_mesh_max_peers_when_that_is_larger() -> None:
    m = membership(Mesh("", master=bytes(32), max_peers=5), records_per_second=1, records_burst=1, waiting_min=3)
    assert m.take_budget(sighting(key(1), 1), "mdns", 0.0)
    for i in range(2, 12):
        assert not m.take_budget(sighting(key(i), 1), "mdns", 0.0)
    assert len(m.waiting) == 5 and m.counters["mesh-records-dropped"] == 5
    assert list(m.waiting) == [key(i) for i in range(7, 12)]


def test_records_that_wait_go_before_new_ones() -> None:
    m = membership(records_per_second=10, records_burst=1)
    assert m.take_budget(sighting(key(1), 1), "mdns", 0.0)
    assert not m.take_budget(sighting(key(2), 1), "mdns", 0.0)
    # the bucket has refilled, but key 2 waits: a new record must not overtake it
    assert not m.take_budget(sighting(key(3), 1), "mdns", 5.0)
    assert [s.public_key for s, _ in m.drain(5.0)] == [key(2)]
    m.discard_waiting(key(3))  # a goodbye: its waiting record is older than the goodbye
    assert m.drain(100.0) == []


# --- members and the IPv4 plan -------------------------------------------------------------

def colliding(mesh: Mesh) -> tuple[bytes, bytes]:
    """Two keys (lower, higher) whose first IPv4 candidate is the same host."""
    first: dict[int, bytes] = {}
    for i in range(1, 200):
        offset = next(mesh.ipv4_candidates(key(i)))
        if offset in first:
            return first[offset], key(i)
        first[offset] = key(i)
    raise AssertionError("no collision")


def test_a_lower_key_takes_the_contested_address_and_the_higher_one_moves_back_when_it_goes() -> None:
    tiny = Mesh("", "10.5.0.0/29", master=bytes(32))  # six hosts: collisions are certain
    lo, hi = colliding(tiny)
    own = b"\xff" * 32  # the highest key: our own choice never pushes a member
    m = membership(tiny, own)
    m.admit(hi, T0)
    contested = ipaddress.IPv4Address(int(tiny.ipv4.network_address) + next(tiny.ipv4_candidates(hi)))
    assert m.v4[hi] == contested
    assert PeerAdmitted(hi, (ipaddress.ip_network(f"{contested}/32"),
                             ipaddress.ip_network(f"{tiny.ipv6_of(hi)}/128"))) in m.pop_events()
    m.admit(lo, T0)
    moved = [e for e in m.pop_events() if isinstance(e, MeshAddressChanged) and e.peer == hi]
    assert m.v4[lo] == contested and m.v4[hi] != contested
    assert moved == [MeshAddressChanged(hi, contested, m.v4[hi])]
    assert m.addresses(hi)[0] == ipaddress.ip_network(f"{m.v4[hi]}/32")
    m.remove(lo, "goodbye")
    events = m.pop_events()
    assert PeerRemoved(lo, "goodbye") in events
    assert [e for e in events if isinstance(e, MeshAddressChanged) and e.peer == hi] == [
        MeshAddressChanged(hi, moved[0].new, contested)]
    assert lo not in m.v4 and not m.is_member(lo)


def test_our_own_address_moves_when_a_lower_key_claims_it() -> None:
    tiny = Mesh("", "10.5.0.0/29", master=bytes(32))
    lo, hi = colliding(tiny)
    m = membership(tiny, hi)
    ours = m.v4[hi]
    m.admit(lo, T0)
    assert MeshAddressChanged(hi, ours, m.v4[hi]) in m.pop_events() and m.v4[lo] == ours


def test_members_are_capped_at_mesh_max_peers() -> None:
    m = membership(Mesh("", master=bytes(32), max_peers=2))
    for i in (1, 2):
        assert m.has_room()
        m.admit(key(i), T0)
    assert not m.has_room()
    assert m.counters["mesh-peers-over-cap"] == 1


def test_our_record_counter_only_goes_up() -> None:
    m = membership()
    assert m.counter == int(WALL * 1000)
    assert m.next_counter(WALL - 10) == int(WALL * 1000) + 1  # the wall clock went back: still above
    assert m.next_counter(WALL + 5) == int((WALL + 5) * 1000)


# --- names ------------------------------------------------------------------------------

def claimed(plan: MeshNamesChanged, public: bytes, m: MeshMembership) -> tuple[str, ...]:
    """The names the plan gives ``public``'s IPv4 address."""
    return dict(plan.hosts)[str(m.v4[public])]


def test_names_plan_and_a_contested_name_resolves_to_nobody() -> None:
    m = membership(name="alpha")
    kn = {k: namesmod.key_name(keys.key_to_base32(k)) for k in (OWN, key(1), key(2))}
    m.admit(key(1), T0)
    m.admit(key(2), T0)
    m.pop_events()
    m.set_name(key(1), "beta")
    (plan,) = m.pop_events()
    assert isinstance(plan, MeshNamesChanged) and plan.contested == ()
    assert claimed(plan, key(1), m) == ("beta", kn[key(1)])
    assert claimed(plan, OWN, m) == ("alpha", kn[OWN])
    assert plan.hosts[0][0] == str(m.v4[OWN])  # ours first
    m.set_name(key(1), "beta")
    assert m.pop_events() == []  # unchanged: no event
    m.set_name(key(2), "beta")  # a second claim: nobody gets it
    (plan,) = m.pop_events()
    assert plan.contested == ("beta",)
    assert claimed(plan, key(1), m) == (kn[key(1)],) and claimed(plan, key(2), m) == (kn[key(2)],)
    assert m.names_of(key(1)) == [kn[key(1)]] and m.name_of(key(1)) == ("beta", True)
    m.set_name(key(2), None)  # it gave the name up: key 1 has it again
    (plan,) = m.pop_events()
    assert plan.contested == () and m.names_of(key(1)) == ["beta", kn[key(1)]]
    assert m.names_of(key(9)) == [] and m.name_of(key(9)) == (None, False)
    m.set_name(key(2), "alpha")  # our own name contested too
    assert m.pop_events()[0].contested == ("alpha",) and m.names_of(OWN) == [kn[OWN]]


def test_an_invalid_own_name_is_not_claimed() -> None:
    assert membership(name="wg-abc").name is None
    assert membership(name="Not A Name").name is None
    assert membership(name="ok-name").name == "ok-name"


# --- time: expiry, re-announcements, goodbyes ----------------------------------------------

def expired_at(events: list[tuple[float, object]], public: bytes) -> float | None:
    return next((t for t, e in events if e == MemberExpired(public)), None)


E = Timing.expire  # 600 s


@pytest.mark.parametrize("record_at, heard_at, expiry", [
    (None, None, T0 + E),  # nothing since it was admitted
    (None, T0 + 250, T0 + 250 + E),  # heard of on its path (a packet, a probe) keeps it
    (T0 + 100, None, T0 + 100 + E),  # a newer record keeps it
    (T0 + 100, T0 + 200, T0 + 200 + E),  # both must be old
    (T0 + 200, T0 + 100, T0 + 200 + E),
])
def test_a_member_expires_when_its_record_and_its_path_are_expire_old(
        record_at: float | None, heard_at: float | None, expiry: float) -> None:
    m = membership()  # expire 600 s, checked every 10 s
    m.admit(key(1), T0)
    heard: dict[bytes, float | None] = {key(1): None}
    events = run(m, T0 + 90, heard)
    if record_at is not None:
        events += run(m, record_at, heard)
        m.seen(key(1), record_at)
    if heard_at is not None:
        events += run(m, heard_at, heard)
        heard[key(1)] = heard_at
    events += run(m, T0 + 2000, heard)
    assert expired_at(events, key(1)) == expiry
    assert not m.is_member(key(1))


@pytest.mark.parametrize("lower", [True, False])
def test_a_quiet_member_gets_one_check_probe_the_lower_key_first(lower: bool) -> None:
    # issue 26: no persistent keepalive; a member not heard of for check_after (lower key of the
    # pair; the higher waits check_after_higher, the lower one's probe refreshes both) is probed once
    own = b"\x00" * 31 + b"\x01" if lower else b"\xff" * 32
    m = membership(own=own)
    m.admit(key(1), T0)
    heard: dict[bytes, float | None] = {key(1): T0}
    events = run(m, T0 + 2000, heard)
    checks = [t for t, e in events if e == CheckWanted(key(1))]
    after = Timing.check_after if lower else Timing.check_after_higher
    assert checks == [T0 + after]  # once per silence, not every check_interval
    assert expired_at(events, key(1)) == T0 + E
    # heard of again (the probe was answered): a new silence, a new check
    m.admit(key(1), T0 + 2000)
    heard[key(1)] = T0 + 2000
    events = run(m, T0 + 2000 + after + 10, heard, now=T0 + 2000)
    assert [t for t, e in events if e == CheckWanted(key(1))] == [T0 + 2000 + after]


def test_announce_again_doubling_up_to_announce_max_then_reset_once_reached() -> None:
    m = membership(expire=1e6)  # announce after 2 s, up to 60 s apart
    m.admit(key(1), T0)
    handshakes: dict[bytes, float | None] = {key(1): None}
    events = run(m, T0 + 200, handshakes)
    times = [t - T0 for t, e in events if isinstance(e, AnnounceWanted)]
    assert times == [2, 4, 8, 16, 32, 64, 124, 184]
    assert all(e == AnnounceWanted(1) for _, e in events if isinstance(e, AnnounceWanted))
    assert m.counters["mesh-announcements"] == 8
    handshakes[key(1)] = T0 + 200  # reached at last
    assert not [e for _, e in run(m, T0 + 250, handshakes) if isinstance(e, AnnounceWanted)]
    m.admit(key(2), T0 + 250)
    m.admit(key(3), T0 + 250)
    handshakes.update({key(2): None, key(3): None})
    events = run(m, T0 + 270, handshakes)
    # the schedule starts again from announce_after for the new members
    assert [(t - T0, e) for t, e in events if isinstance(e, AnnounceWanted)] == [
        (252, AnnounceWanted(2)), (254, AnnounceWanted(2)), (258, AnnounceWanted(2)), (266, AnnounceWanted(2))]


def test_a_goodbye_is_handed_back_after_goodbye_confirm() -> None:
    m = membership()
    m.admit(key(1), T0)
    m.admit(key(2), T0)
    m.handle_timer(T0, {})
    m.pop_events()
    assert m.goodbye(key(1), T0 + 0.5)
    assert not m.goodbye(key(1), T0 + 0.6)  # already being checked: no second probe
    assert m.goodbye(key(2), T0 + 0.5)
    m.handle_timer(T0 + 1.7, {})
    assert m.next_deadline() == T0 + 2.5
    m.remove(key(2), "expired")  # removed meanwhile: nothing to hand back
    m.pop_events()
    m.handle_timer(T0 + 2.49, {})
    assert not [e for e in m.pop_events() if isinstance(e, GoodbyeDue)]
    m.handle_timer(T0 + 2.5, {})
    assert [e for e in m.pop_events() if isinstance(e, GoodbyeDue)] == [GoodbyeDue(key(1), T0 + 0.5)]
    assert not m.leaving and m.is_member(key(1))  # the node decides; the check is over
    assert m.goodbye(key(1), T0 + 3)  # a new goodbye: a new check


def state(m: MeshMembership) -> dict[str, object]:
    """Everything the membership holds (its token bucket by value), for before/after comparisons."""
    out: dict[str, object] = {}
    for name, value in vars(m).items():
        if name in ("mesh", "timing"):
            continue
        if hasattr(type(value), "__slots__"):  # the TokenBucket
            value = [getattr(value, slot) for slot in type(value).__slots__]
        out[name] = copy.deepcopy(value)
    return out


def test_next_deadline_is_pure_and_handle_timer_before_it_does_nothing() -> None:
    m = membership(records_per_second=1, records_burst=1)
    m.admit(key(1), T0)
    m.handle_timer(T0, {key(1): None})
    m.goodbye(key(1), T0 + 0.2)
    assert m.take_budget(sighting(key(5), 1), "mdns", T0)
    assert not m.take_budget(sighting(key(6), 1), "mdns", T0)  # one waits for the budget
    m.pop_events()
    before = state(m)
    first = m.next_deadline()
    assert first is not None and m.next_deadline() == first and m.next_deadline() == first
    assert state(m) == before  # nothing changed, inside either
    assert m.pop_events() == []
    # before the deadline, the timer has nothing to do: no event, the same deadline
    m.handle_timer(first - 0.001, {key(1): None})
    assert m.pop_events() == [] and m.next_deadline() == first and state(m) == before
    # without members, goodbyes or waiting records there is nothing to wake up for
    empty = membership()
    assert empty.next_deadline() is None


# --- lifecycle: rotation windows, bans, stale generations (docs/mesh.md, issue 27) --------------

NEW = Mesh("", master=bytes([2]) * 32, plan=MESH.plan)  # the next mesh key, the same address plan
END = T0 + 60.0  # the previous key's window ends here


def rotated(**kw: object) -> MeshMembership:
    """A member that rotated at T0: NEW is current, MESH accepted until END."""
    m = membership(**kw)
    m.set_keys(NEW, MESH, END, T0)
    assert m.counters.pop("mesh-keys-changed") == 1
    return m


def removals(m: MeshMembership) -> list[tuple[bytes, str]]:
    return [(e.peer, e.reason) for e in m.pop_events() if isinstance(e, MemberExpired)]


def test_a_new_key_with_the_same_plan_keeps_every_address_and_the_id_changes() -> None:
    assert NEW.id != MESH.id and NEW.same_addresses(MESH)
    for i in range(1, 20):
        assert NEW.ipv6_of(key(i)) == MESH.ipv6_of(key(i))
    assert NEW.assign_ipv4([key(i) for i in range(1, 20)]) == MESH.assign_ipv4([key(i) for i in range(1, 20)])
    m = membership()
    m.admit(key(1), T0)
    before = m.hosts()
    assert m.set_keys(NEW, MESH, END, T0) is True
    assert m.hosts() == before and not [e for e in m.pop_events() if isinstance(e, MeshAddressChanged)]
    with pytest.raises(LocalError):  # another plan would renumber every member
        m.set_keys(OTHER, MESH, END, T0)
    with pytest.raises(LocalError):
        m.set_keys(NEW, NEW, END, T0)


def test_admit_under_either_key_during_the_window() -> None:
    m = rotated()
    for i, mesh in ((1, NEW), (2, MESH)):
        action, _s, _n = m.screen(sighting(key(i), 5, mesh=mesh), "mdns", T0 + 1, False)
        assert action == "admit"
        m.admit(key(i), T0 + 1)
    assert (m.generation_label(key(1)), m.generation_label(key(2))) == ("current", "previous")
    assert m.generation_label(key(3)) is None


def test_window_end_removes_members_known_only_under_the_old_key() -> None:
    m = rotated()
    for i, mesh in ((1, NEW), (2, MESH), (3, MESH)):
        m.check(sighting(key(i), 5, mesh=mesh), T0 + 1)
        m.admit(key(i), T0 + 1)
    m.screen(sighting(key(3), 6, mesh=NEW), "mdns", T0 + 2, True)  # 3 moved on to the new key
    assert m.generation_label(key(3)) == "current"
    assert m.next_deadline() <= END
    run(m, END - 0.1, {})
    assert key(2) in m.members  # not before the end
    events = run(m, END + 1, {})
    assert [(e.peer, e.reason) for _t, e in events if isinstance(e, MemberExpired)] == [(key(2), "old-key")]
    assert m.counters["mesh-peers-old-key"] == 1 and set(m.members) == {key(1), key(3)}


def test_after_the_end_an_old_key_record_is_refused_before_its_mac() -> None:
    m = rotated()
    good = sighting(key(4), 5, mesh=MESH)  # a fresh identity made with the old key
    assert m.screen(good, "mdns", END, False)[0] == "drop"
    bad = sighting(key(5), 5, mesh=MESH)
    bad.txt["mac"] = b"A" * 24  # not even checked: it costs less than an invalid record
    assert m.check(bad, END + 1)[0] == "old"
    assert m.screen(sighting(key(6), 5, mesh=MESH), "dns", END + 2, False)[0] == "reject"
    assert m.counters == {"mesh-records-old-key": 3} and not m.accepted


def test_nothing_a_member_sends_moves_the_end_of_the_window() -> None:
    m = rotated()
    for i in range(1, 30):
        s = sighting(key(i), 10**12 + i, mesh=MESH)
        s.txt["until"] = b"99999999999"  # whatever it claims
        m.screen(s, "mdns", T0 + i, i % 2 == 0)
    assert m.window_end == END and m.cutoff == END
    assert m.check(sighting(key(40), 5, mesh=MESH), END)[0] == "old"


def test_a_stale_generation_record_is_dropped_without_a_mac_check() -> None:
    m = rotated()
    m.check(sighting(key(1), 5, mesh=NEW), T0)
    m.admit(key(1), T0)
    forged = sighting(key(1), 10**15, mesh=MESH)  # the old key's holder forges a much newer record
    assert m.check(forged, T0 + 1)[0] == "stale"
    forged.txt["mac"] = b"A" * 24
    assert m.check(forged, T0 + 1)[0] == "stale"
    assert m.generation_label(key(1)) == "current"
    assert m.check(sighting(key(1), 6, mesh=NEW), T0 + 2)[0] == "valid"  # its real records still count
    assert m.counters == {"mesh-peers-admitted": 1, "mesh-records-stale-key": 2}


def test_replayed_old_records_and_counters_kept_per_key() -> None:
    m = rotated()
    assert m.check(sighting(key(1), 100, mesh=MESH), T0)[0] == "valid"
    assert m.check(sighting(key(1), 99, mesh=MESH), T0)[0] == "replay"  # an older record of the old key
    # a high counter under the old key does not make the new key's records replays
    assert m.check(sighting(key(1), 50, mesh=NEW), T0)[0] == "valid"
    assert m.check(sighting(key(1), 49, mesh=NEW), T0)[0] == "replay"
    assert m.counters == {"mesh-records-replayed": 2}


def test_ban_removes_a_member_at_once_and_refuses_its_records_before_the_mac() -> None:
    m = membership()
    for i in (1, 2):
        m.admit(key(i), T0)
    m.take_budget(sighting(key(3), 5), "mdns", T0)  # a waiting record of a key about to be banned
    m.pop_events()
    assert m.set_deny({key(2), key(3), key(9)}) == [key(2)]
    assert removals(m) == [(key(2), "banned")] and m.counters["mesh-peers-banned"] == 1
    assert key(3) not in m.waiting
    m.remove(key(2), "banned")
    assert key(2) not in m.v4 and key(2) not in m.members and m.names_of(key(2)) == []
    s = sighting(key(2), 10**13)
    assert m.screen(s, "mdns", T0 + 1, False)[0] == "drop"
    s.txt["mac"] = b"A" * 24
    assert m.check(s, T0 + 1)[0] == "banned"
    assert m.screen(sighting(key(9), 5), "dns", T0 + 1, False)[0] == "reject"
    assert m.counters["mesh-records-banned"] == 3 and m.counters.get("mesh-records-invalid", 0) == 0
    assert m.set_deny(set()) == [] and m.check(sighting(key(2), 10**13 + 1), T0 + 2)[0] == "valid"  # lifted


def test_a_cut_without_a_previous_key_removes_the_rest_after_the_grace() -> None:
    m = membership()
    for i in (1, 2):
        m.admit(key(i), T0)
    assert m.set_keys(NEW, None, None, T0) is True
    assert m.generation_label(key(1)) == "old"
    m.screen(sighting(key(1), 5, mesh=NEW), "mdns", T0 + 1, True)  # its cached record, checked again
    events = run(m, T0 + Timing.rekey_grace + 1, {})
    assert [(e.peer, e.reason) for _t, e in events if isinstance(e, MemberExpired)] == [(key(2), "old-key")]


def test_members_behind_are_looked_up_again_during_the_window() -> None:
    m = rotated()
    for i, mesh in ((1, NEW), (2, MESH)):
        m.check(sighting(key(i), 5, mesh=mesh), T0)
        m.admit(key(i), T0)
    m.pop_events()
    events = run(m, T0 + 5, {})
    relooks = [(t, e.peers) for t, e in events if isinstance(e, RelookWanted)]
    assert relooks and all(peers == (key(2),) for _t, peers in relooks)
    assert [t for t, _ in relooks] == sorted(t for t, _ in relooks) and len(relooks) <= 4
    m.screen(sighting(key(2), 6, mesh=NEW), "mdns", T0 + 5, True)
    assert not [e for _t, e in run(m, T0 + 20, {}) if isinstance(e, RelookWanted)]


def test_set_keys_unchanged_sets_no_cutoff() -> None:
    m = membership()
    assert m.set_keys(Mesh("", master=bytes(32)), None, None, T0) is False
    assert m.cutoff is None and "mesh-keys-changed" not in m.counters


@pytest.mark.parametrize("block", ["10.7.0.0/27", "10.7.0.0/24", None])
def test_admitting_one_by_one_gives_the_plan_of_planning_all_at_once(block: str | None) -> None:
    # admit places a new key without planning again when nothing moves; a /27 full of members
    # (collisions, a full block) and a /24 check that the shortcut never gives another plan
    import random
    rng = random.Random(7)
    mesh = Mesh("", block, master=bytes(32))
    m = membership(mesh)
    publics = [bytes(rng.getrandbits(8) for _ in range(32)) for _ in range(40)]
    for i, public in enumerate(publics):
        m.admit(public, T0)
        if i % 7 == 3:
            m.remove(publics[i // 2], "test")
        assert m.v4 == mesh.assign_ipv4([OWN, *m.members]), i
    names = [e for e in m.pop_events() if isinstance(e, MeshNamesChanged)]
    assert len(names) == 1  # one names plan per drain, however many came and went
    assert names[0] == m.hosts() and len(names[0].hosts) == sum(len(m.addresses(p)) for p in [OWN, *m.members])


def test_a_check_looks_only_at_the_members_whose_silence_is_due() -> None:
    """200 members, all heard of every 10 s but one: a 10 s check reads the last-heard time of
    the members whose entry came due (counted through the mapping the node passes), each member
    about once per check_after, never all of them at every check."""

    class Counted(dict):
        reads = 0

        def get(self, k, default=None):  # type: ignore[override]
            Counted.reads += 1
            return super().get(k, default)

    m = membership()
    members = [bytes([i >> 8, i & 255]) * 16 for i in range(2, 202)]
    assert all(public < OWN for public in members)  # ours is the higher key: check_after_higher
    for public in members:
        m.admit(public, T0)
    m.pop_events()
    heard = Counted({public: T0 for public in members})  # each heard of at once (none to announce)
    m.handle_timer(T0, heard)
    m.pop_events()
    reads: dict[float, int] = {}
    events: list[tuple[float, object]] = []
    for step in range(1, 91):  # 900 s of checks
        now = T0 + 10 * step
        for public in members[1:]:
            heard[public] = now
        before = Counted.reads
        m.handle_timer(now, heard)
        reads[now] = Counted.reads - before
        for event in m.pop_events():
            if isinstance(event, (CheckWanted, MemberExpired)):
                events.append((now, event))
            if isinstance(event, MemberExpired):
                m.remove(event.peer, "expired")  # as the node does
    assert events == [(T0 + 510, CheckWanted(members[0])), (T0 + 600, MemberExpired(members[0]))]
    busy = {t: n for t, n in reads.items() if n}
    # the first check after admission (every entry, once), the silent member's expiry, then
    # the others' entries again only at T0 + 1020: 201 reads in 90 checks, where a scan made 18,000
    assert busy == {T0 + 510: 200, T0 + 600: 1}
