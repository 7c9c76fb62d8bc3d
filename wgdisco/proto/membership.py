"""Mesh membership (docs/mesh.md): which keys a mesh key admitted, the IPv4 plan over them, their
names, the record budget, goodbyes under check, expiry and re-announcements. Pure.

Theory of operation
-------------------
The node (proto/node.py) owns the peer set; this core owns what the mesh knows about it. A
sighting goes through ``take_budget`` (at most MESH_RECORDS_PER_SECOND records a second are
worked on) and ``check`` (mesh id, MAC, replay); the node then admits a new key (``admit``),
refreshes a member (``seen``) or removes one (``remove``). Every change to the member set re-runs
the IPv4 collision rule (proto/mesh.py): a member whose address moved is announced as
``MeshAddressChanged`` (the node moves its AllowedIPs), and a changed names plan as
``MeshNamesChanged``. ``handle_timer(now, last_heard)`` asks the node to check on members
heard of too long ago (``CheckWanted``: one probe), expires members, asks for re-announcements
(``AnnounceWanted``) and hands goodbyes whose check is due back to the node (``GoodbyeDue``; only
the node knows whether the member was heard of since), as events drained by ``pop_events()``;
``MemberExpired``, ``CheckWanted`` and ``GoodbyeDue`` are the node's to act on, the rest go on to
the daemon.

Idle members are quiet (issue 26): no persistent keepalive. A member is *heard of* by a record,
a WireGuard packet or a probe answer (or request) on its path; one heard of ``check_after`` ago
gets one probe from the lower key of the pair (the higher key waits ``check_after_higher``: the
lower key's probe refreshes both), and one heard of ``expire`` ago is removed. A 40-member LAN
mesh costs 40·39/2 probe pairs per ``check_after``: 3.5 datagrams a second in all.

Lifecycle (docs/mesh.md "Rotating the mesh key", "A lost or stolen device")
---------------------------------------------------------------------------
A mesh key is a *generation*: its records carry its own id in ``mesh=`` and a MAC with its own
record key; the address plan (``Mesh.plan``, ``MeshId``) is the same for every generation, so a
member keeps its addresses and names whatever key it is on. ``set_keys`` gives the current key
and, during a rotation, the previous one with the end of its window (only configuration sets
it; nothing a member sends moves it). Each member is known by the generation of its last valid
record ("current", "previous", or "old": a key we no longer hold). Transitions::

    stranger --valid record, current or previous (before the end)--> member
    member   --valid record of the current key------------------------> member, "current"
    member   --record of the previous key, once known on the current--> (dropped: stale, no MAC)
    member   --window end (members not "current")---------------------> MemberExpired("old-key")
    any key  --set_deny--> MemberExpired("banned") and every later record dropped before the MAC

A record of the previous key after the end, or of a banned key, is dropped before its MAC is
checked, so it costs less than an invalid record. Replay counters are kept per generation: a
holder of the old key cannot stop a member's new records by forging old ones with a high ``mc=``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping

from wgdisco.errors import DecodeError, LocalError
from wgdisco.proto import keys, records
from wgdisco.proto import names as namesmod
from wgdisco.proto.core import Core
from wgdisco.proto.deadlines import Deadlines
from wgdisco.proto.events import AnnounceWanted, MeshAddressChanged, MeshNamesChanged, PeerAdmitted, PeerRemoved
from wgdisco.proto.mesh import Mesh
from wgdisco.proto.ratelimiter import TokenBucket

__all__ = ["MeshMembership", "Timing", "MemberExpired", "CheckWanted", "GoodbyeDue", "RelookWanted",
           "put_newest"]

Key = bytes


@dataclass(frozen=True)
class Timing:
    """The mesh's times and budgets (docs/mesh.md "Limits")."""

    # a member not heard of (record, WireGuard packet, probe) for this long is removed; one not
    # heard of for check_after (lower key of the pair) or check_after_higher gets one probe first
    expire: float = 600.0
    check_after: float = 450.0
    check_after_higher: float = 510.0
    check_interval: float = 10.0
    counters_kept: int = 1024  # last accepted record counter per key, kept after removal (replays)
    # at most records_per_second records (bursts of records_burst) are worked on; past the budget
    # the newest record of each key waits (at most max(MeshMaxPeers, 64) keys)
    records_per_second: float = 100
    records_burst: float = 200
    # a member admitted announce_after ago and still without a handshake has probably missed our
    # record (an mDNS announcement lost while 40 members started at once): announce again, then
    # after 4, 8 … announce_max seconds while one is still unreached
    announce_after: float = 2.0
    announce_max: float = 60.0
    # mDNS goodbyes are not authenticated (RFC 6762 §10.1), and a member whose network changes
    # sends them before it announces again: a goodbye of a member with a live path is checked for
    # this long (one probe) before the member is removed
    goodbye_confirm: float = 2.0
    waiting_min: int = 64  # keys whose records may wait for the budget: max(MeshMaxPeers, this)
    # after a key change, members known only under a key we no longer hold are removed this
    # much later (their cached records are checked again meanwhile: discovery re-reads them)
    rekey_grace: float = 2.0
    # during a window, members not yet seen on the current key are looked up (unicast DNS-SD)
    # this often: a member polls a peer with a path only every PollInterval, and one that
    # rotated after us would otherwise be seen on the new key only then
    relook: float = 2.0


@dataclass(frozen=True)
class MemberExpired:
    """(For the node.) Remove ``peer``: "expired" (its record is old and it has had no handshake
    for ``Timing.expire``), "banned" (MeshDeny) or "old-key" (known only under a key whose
    window ended)."""

    peer: Key
    reason: str = "expired"


@dataclass(frozen=True)
class RelookWanted:
    """(For the node.) During a rotation: look these members up again (unicast DNS-SD), their
    records under the current key may be out."""

    peers: tuple[Key, ...]


@dataclass(frozen=True)
class CheckWanted:
    """(For the node.) ``peer`` was not heard of for ``Timing.check_after``: probe its path once."""

    peer: Key


@dataclass(frozen=True)
class GoodbyeDue:
    """(For the node.) ``peer`` said goodbye at ``since``, with a live path: remove it unless it
    was heard of after ``since``."""

    peer: Key
    since: float


def put_newest(table: OrderedDict[Any, Any], key: Any, value: Any, cap: int) -> None:
    """``table[key] = value`` as the newest entry; past ``cap`` the oldest go (state a
    stranger can create is capped, ARCHITECTURE.md "Trust model")."""
    table[key] = value
    table.move_to_end(key)
    while len(table) > cap:
        table.popitem(last=False)


class MeshMembership(Core):
    """The mesh's members, their addresses and names (sans-I/O; ``now`` passed in)."""

    def __init__(self, mesh: Mesh, own: Key, *, wall: float, name: str | None = None,
                 timing: Timing = Timing()) -> None:
        super().__init__()
        self.mesh = mesh
        self.timing = timing
        self.own = own
        self.members: dict[Key, list[float]] = {}  # key -> [last valid record, admitted at]
        # (generation id, key) -> last accepted mc= (per generation: see "Lifecycle")
        self.accepted: OrderedDict[tuple[str, Key], int] = OrderedDict()
        self.previous: Mesh | None = None  # the previous mesh key during a rotation
        self.window_end: float | None = None  # its records are accepted until then (monotonic)
        self.cutoff: float | None = None  # then members not on the current key are removed
        self.generation: dict[Key, str] = {}  # member -> mesh= id of its last valid record
        self.deny: frozenset[Key] = frozenset()  # MeshDeny: never admitted
        self._checked: tuple[Key, str] | None = None  # the key and generation check() last found valid
        self.v4: dict[Key, Any] = mesh.assign_ipv4([own])
        self.counter = int(wall * 1000)  # mc= of our record: Unix ms, strictly increasing
        self.name = namesmod.check_name(name)  # ours, in name= (None: no name claimed)
        self.names: dict[Key, str] = {}  # member -> the name its last valid record claims
        self.waiting: OrderedDict[Key, tuple[records.Sighting, str]] = OrderedDict()
        self.leaving: dict[Key, float] = {}  # member -> when its goodbye came (being checked)
        self._probed_at: dict[Key, float] = {}  # member -> the last-heard time its check probe was for
        self._hosts: MeshNamesChanged | None = None
        self._names_dirty = False  # the names plan is worked out once per drain (pop_events)
        # per key, what the names plan needs (its addresses as text, its key name): worked out once
        # per key and address, not once per member per admission (40 members starting at once
        # admit 39 each: the plan over all members at every admission cost O(n²))
        self._nets: dict[Key, tuple[Any, tuple[Any, ...], str, tuple[str, ...]]] = {}
        self._budget = TokenBucket(timing.records_per_second, timing.records_burst)
        self._announce_step = timing.announce_after
        self._next_announce = 0.0
        self._unheard: set[Key] = set()  # members admitted and not heard of on a path yet
        self._next_check = 0.0
        self._watch: Deadlines[Key] = Deadlines()  # member -> when its check or expiry may be due
        self._next_relook = 0.0

    # --- records ----------------------------------------------------------------------

    def _generation_of(self, mesh_id: bytes, now: float) -> Mesh | str:
        """The mesh key a record's ``mesh=`` names, or why none: "other" or "old" (the previous
        key after its window)."""
        if mesh_id == self.mesh.id.encode():
            return self.mesh
        previous = self.previous
        if previous is not None and mesh_id == previous.id.encode():
            return previous if self.window_end is not None and now < self.window_end else "old"
        return "other"

    def check(self, sighting: records.Sighting, now: float = 0.0) -> tuple[str, records.Sighting, str | None]:
        """"valid" (a mesh id of ours, a good MAC, not older than the last accepted: the sighting
        comes back with only the candidates the MAC covers, and the name it claims if that is a
        valid name), "invalid", "replay", "other" (another mesh), "none" (no mesh= key), and,
        before any MAC is checked, "banned" (MeshDeny), "old" (the previous key after its window)
        or "stale" (the previous key, for a member known on the current one)."""
        txt = sighting.txt
        mesh_id = txt.get("mesh")
        if mesh_id is None:
            return "none", sighting, None
        public = sighting.public_key
        if public in self.deny:
            self._count("mesh-records-banned")
            return "banned", sighting, None
        generation = self._generation_of(mesh_id, now)
        if generation == "other":
            self._count("records-other-mesh")
            return "other", sighting, None
        if generation == "old":
            self._count("mesh-records-old-key")
            return "old", sighting, None
        assert isinstance(generation, Mesh)
        if generation is not self.mesh and self.generation.get(public) == self.mesh.id:
            self._count("mesh-records-stale-key")  # it has moved on: an old record, or a forgery
            return "stale", sighting, None
        counter_text, mac = txt.get("mc"), txt.get("mac")
        raw_name = txt.get("name") or b""
        if counter_text is None or mac is None or not counter_text.isdigit() or len(counter_text) > 19 \
                or len(raw_name) > namesmod.MAX_NAME:
            self._count("mesh-records-invalid")
            return "invalid", sighting, None
        counter = int(counter_text)
        items = records.list_items(txt, "cand")
        claimed = raw_name.decode("utf-8", "replace")
        if not generation.verify(public, ",".join(items), counter, mac, claimed):
            self._count("mesh-records-invalid")
            return "invalid", sighting, None
        last = self.accepted.get((generation.id, public))
        if last is not None and counter < last:
            self._count("mesh-records-replayed")
            return "replay", sighting, None
        name = namesmod.check_name(raw_name) if raw_name else None
        if raw_name and name is None:
            self._count("mesh-names-invalid")  # authenticated, but not a name we would write anywhere
        put_newest(self.accepted, (generation.id, public), counter, self.timing.counters_kept)
        self._checked = (public, generation.id)
        covered = set()
        for item in items:
            try:
                covered.add(records.parse_candidate(item))
            except DecodeError:
                pass
        kept = [c for c in sighting.candidates if c in covered]
        return "valid", dataclasses.replace(sighting, candidates=kept), name

    def screen(self, sighting: records.Sighting, source: str, now: float,
               is_peer: bool) -> tuple[str, records.Sighting, str | None]:
        """What a record means to the mesh: ("hint", …) act on it as a hint (a member's valid record,
        a configured peer's, or a stranger's plain one); ("admit", …, name) a valid record of a
        stranger; ("drop", …) ignore it (no proof, old, or a member's record without the MAC);
        ("reject", …) ignore it and do not look the key up over DNS for a while."""
        public = sighting.public_key
        verdict, sighting, name = self.check(sighting, now)
        member = public in self.members
        if verdict == "valid":
            if member:
                self.seen(public, now)
                self.set_name(public, name)
            return ("hint" if member or is_peer else "admit"), sighting, name
        if verdict in ("invalid", "replay", "banned", "old", "stale"):  # no proof, or not any more
            return ("reject" if source == "dns" and not member else "drop"), sighting, None
        if member:
            self._count("mesh-records-unauthenticated")  # a member's records need the MAC
            return "drop", sighting, None
        return "hint", sighting, None

    def take_budget(self, sighting: records.Sighting, source: str, now: float) -> bool:
        """True: work on this record now. False: it waits (its key's newest record) until the
        budget refills; ``drain`` hands it back then."""
        if self.waiting or not self._budget.take(now):  # those that wait go first
            self._count("mesh-records-deferred")
            cap = max(self.mesh.max_peers, self.timing.waiting_min)
            if len(self.waiting) >= cap and sighting.public_key not in self.waiting:
                self._count("mesh-records-dropped")
            put_newest(self.waiting, sighting.public_key, (sighting, source), cap)
            return False
        return True

    def drain(self, now: float) -> list[tuple[records.Sighting, str]]:
        """Records that waited for the budget, oldest first, as far as it goes now."""
        out = []
        while self.waiting and self._budget.take(now):
            out.append(self.waiting.popitem(last=False)[1])
        return out

    def discard_waiting(self, public: Key) -> None:
        self.waiting.pop(public, None)

    # --- members ----------------------------------------------------------------------

    def is_member(self, public: Key) -> bool:
        return public in self.members

    def has_room(self) -> bool:
        if len(self.members) >= self.mesh.max_peers:
            self._count("mesh-peers-over-cap")
            return False
        return True

    def admit(self, public: Key, now: float, name: str | None = None) -> None:
        """``public`` is a member now (the node made it a peer): it gets a place in the plan, on
        the generation of the record ``check`` found valid for it (else the current one)."""
        self.members[public] = [now, now]
        self._watch.set(public, self._silence_due(public, now))
        self._unheard.add(public)
        checked = self._checked
        self.generation[public] = checked[1] if checked is not None and checked[0] == public else self.mesh.id
        if name is not None:
            self.names[public] = name
        if not self._place(public):
            self._reassign()
        self._names_dirty = True
        self._count("mesh-peers-admitted")
        self._events.append(PeerAdmitted(public, tuple(self.addresses(public))))

    def seen(self, public: Key, now: float) -> None:
        """A valid record of member ``public`` arrived (``check`` found it valid just before)."""
        self.members[public][0] = now
        checked = self._checked
        if checked is not None and checked[0] == public:
            self.generation[public] = checked[1]

    def last_record(self, public: Key) -> float:
        return self.members[public][0]

    def remove(self, public: Key, reason: str) -> None:
        """``public`` is no member any more (the node removed the peer)."""
        self.leaving.pop(public, None)
        self._probed_at.pop(public, None)
        self._unheard.discard(public)
        self._watch.discard(public)
        del self.members[public]
        self.generation.pop(public, None)
        self.v4.pop(public, None)
        self.names.pop(public, None)
        self._nets.pop(public, None)
        self._reassign()
        self._count("mesh-peers-removed")
        self._events.append(PeerRemoved(public, reason))

    def generation_label(self, public: Key) -> str | None:
        """The key member ``public`` is on: "current", "previous" (during the window) or "old"
        (a key we no longer hold: removed at the cutoff); None: not a member."""
        tag = self.generation.get(public)
        if tag is None:
            return None
        if tag == self.mesh.id:
            return "current"
        previous = self.previous
        return "previous" if previous is not None and tag == previous.id and self.cutoff is not None else "old"

    def first_seen(self, public: Key) -> float:
        return self.members[public][1]

    # --- rotation and bans (see "Lifecycle") ----------------------------------------------

    def set_keys(self, current: Mesh, previous: Mesh | None, window_end: float | None, now: float) -> bool:
        """The mesh keys (config, SIGHUP): ``current`` (records are published and accepted under
        it) and, during a rotation, ``previous``, accepted until ``window_end`` (monotonic).
        Members not on ``current`` are removed at the end of the window (at least
        ``rekey_grace`` from now). True: the current key changed (our record must be signed anew).
        LocalError when ``current`` would renumber the mesh (another MeshId or MeshIPv4)."""
        if not current.same_addresses(self.mesh):
            raise LocalError("a new mesh key must keep the address plan (MeshId, MeshIPv4)")
        changed = current.id != self.mesh.id
        if previous is not None and (previous.id == current.id or window_end is None):
            raise LocalError("the previous mesh key needs an end and must differ from the current one")
        was = (self.previous.id if self.previous is not None else None, self.window_end)
        self.mesh, self.previous = current, previous
        self.window_end = window_end if previous is not None else None
        if changed or was != (None if previous is None else previous.id, self.window_end):
            self._count("mesh-keys-changed")
            end = self.window_end if self.window_end is not None else now
            self.cutoff = max(end, now + self.timing.rekey_grace)
        return changed

    def set_deny(self, deny: frozenset[Key] | set[Key]) -> list[Key]:
        """MeshDeny (config, SIGHUP): these keys are never admitted; the members among them are
        removed (``MemberExpired(…, "banned")``, the node tears their sessions down). Returns them."""
        self.deny = frozenset(deny)
        banned = [p for p in self.members if p in self.deny]
        for public in banned:
            self._count("mesh-peers-banned")
            self._events.append(MemberExpired(public, "banned"))
        for public in [p for p in self.waiting if p in self.deny]:
            del self.waiting[public]
        return banned

    def set_own_key(self, public: Key) -> None:
        """Our identity changed: our place in the plan follows."""
        self._nets.pop(self.own, None)
        self.own = public
        self._reassign()
        for member in self.members:  # which key of each pair is the lower changed: all due at the next check
            self._watch.set(member, 0.0)

    def goodbye(self, public: Key, now: float) -> bool:
        """A goodbye of a member with a live path: checked for ``goodbye_confirm`` (True: a new
        check began, the node probes the path once)."""
        if public in self.leaving:
            return False
        self.leaving[public] = now
        return True

    def next_counter(self, now_wall: float) -> int:
        """mc= for a newer record of ours: strictly above the last one (older ones are replays)."""
        self.counter = max(self.counter + 1, int(now_wall * 1000))
        return self.counter

    # --- the IPv4 plan and names -------------------------------------------------------

    def _reassign(self) -> None:
        """The IPv4 plan over our key and the members (proto/mesh.py's collision rule)."""
        new = self.mesh.assign_ipv4([self.own, *self.members])
        old = self.v4
        self.v4 = new
        for public, addr in new.items():
            if public in old and old[public] != addr:
                self._events.append(MeshAddressChanged(public, old[public], addr))
        self._names_dirty = True

    def _place(self, public: Key) -> bool:
        """A newly admitted key's IPv4 address without planning again, when that gives the plan
        ``assign_ipv4`` would (True). Keys are placed lowest first, each on its first candidate
        that no lower key holds: if ours is an offset that nobody holds, every other key keeps
        its place (a higher key skipped only offsets that lower keys hold, and still does). If
        a higher key holds it (a collision), or the block is short of room: False, plan again."""
        base = int(self.mesh.ipv4.network_address)
        held = {int(a) - base: k for k, a in self.v4.items() if a is not None}
        if len(held) < len(self.v4):
            return False
        for tried, offset in enumerate(self.mesh.ipv4_candidates(public)):
            holder = held.get(offset)
            if holder is None:
                self.v4[public] = ipaddress.IPv4Address(base + offset)
                return True
            if holder > public or tried >= 64:
                return False
        return False

    def addresses(self, public: Key) -> list[Any]:
        """A key's derived addresses as host networks (/32, /128)."""
        return list(self._net_entry(public)[1])

    def _net_entry(self, public: Key) -> tuple[Any, tuple[Any, ...], str, tuple[str, ...]]:
        """(its IPv4 address, its host networks, its key name, its addresses as text), kept while
        its IPv4 address holds."""
        v4 = self.v4.get(public)
        entry = self._nets.get(public)
        if entry is None or entry[0] != v4:
            nets = ([ipaddress.IPv4Network((int(v4), 32))] if v4 is not None else []) + \
                [ipaddress.IPv6Network((int(self.mesh.ipv6_of(public)), 128))]
            key_name = entry[2] if entry is not None else namesmod.key_name(keys.key_to_base32(public))
            entry = (v4, tuple(nets), key_name, tuple(str(n.network_address) for n in nets))
            if public == self.own or public in self.members:
                self._nets[public] = entry
        return entry

    def set_name(self, public: Key, name: str | None) -> None:
        if self.names.get(public) == name:
            return
        if name is None:
            self.names.pop(public, None)
        else:
            self.names[public] = name
        self._names_dirty = True

    def _claims(self) -> dict[Key, str | None]:
        return {self.own: self.name, **self.names}

    def pop_events(self) -> list[Any]:
        if self._names_dirty:  # once per drain, however many members came or went meanwhile
            self._names_dirty = False
            plan = self.hosts()
            if plan != self._hosts:
                self._hosts = plan
                self._events.append(plan)
        return super().pop_events()

    def hosts(self) -> MeshNamesChanged:
        """Every member's addresses and names (ours first, then by key): its key name always, its
        claimed name unless two members claim it (then nobody gets it)."""
        claims = self._claims()
        owned, contested = namesmod.resolve(claims)
        lines = []
        for public in [self.own, *sorted(self.members)]:
            _, _, key_name, texts = self._net_entry(public)
            claimed = claims.get(public)
            names = (claimed, key_name) if claimed is not None and owned.get(claimed) == public else (key_name,)
            for text in texts:
                lines.append((text, names))
        return MeshNamesChanged(tuple(lines), tuple(sorted(contested)))

    def names_of(self, public: Key) -> list[str]:
        """The names that resolve to ``public`` here (its claimed name unless contested, then its
        key name): [] for a key that is not a member we know."""
        if public != self.own and public not in self.members:
            return []
        claimed, contested = self.name_of(public)
        key_name = namesmod.key_name(keys.key_to_base32(public))
        return [claimed, key_name] if claimed is not None and not contested else [key_name]

    def name_of(self, public: Key) -> tuple[str | None, bool]:
        """(the name ``public`` claims, whether another member claims it too); None: no name."""
        claims = self._claims()
        name = claims.get(public)
        if name is None:
            return None, False
        return name, sum(1 for n in claims.values() if n == name) > 1

    # --- time --------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        times = []
        if self.members and (first := self._watch.next()) is not None:
            # the first member's check or expiry, no earlier than check_interval after the last
            # round (they coalesce): an idle mesh's member wakes when a check is due, not every 10 s
            times.append(max(self._next_check, first))
        if self._unheard:  # nothing to announce for once every member was heard of
            times.append(self._next_announce)
        if self.waiting:
            times.append(self._budget.ready_at())
        if self.leaving:
            times.append(min(self.leaving.values()) + self.timing.goodbye_confirm)
        if self.cutoff is not None:
            times.append(self.cutoff)
            if self.members:
                times.append(self._next_relook)
        return min(times) if times else None

    def _silence_due(self, public: Key, last: float) -> float:
        """When member ``public``, last heard of at ``last``, is next due a check or expiry: never
        later than the truth while its last-heard time only grows (a member heard of since is
        found not due and put back). A last-heard time that goes back (the path that answered
        was dropped) is seen when the member's entry comes due."""
        t = self.timing
        if self._probed_at.get(public) == last:
            return last + t.expire
        return last + min(t.expire, t.check_after if self.own < public else t.check_after_higher)

    def handle_timer(self, now: float, last_heard: Mapping[Key, float | None]) -> None:
        """Checks, expiry, re-announcements and goodbye checks that are due; ``last_heard``: when
        each member was last heard of on its path (a WireGuard packet, a probe; None: never)."""
        t = self.timing
        if self.members and now >= self._next_check:
            self._next_check = now + t.check_interval
            # only the members whose silence may be long enough (a heap, issue 22): a member heard
            # of since is put back with its new time
            for public in self._watch.pop_due(now):
                seen, admitted = self.members[public]
                last = max(seen, admitted, last_heard.get(public) or 0.0)
                if now - last >= t.expire:
                    self._events.append(MemberExpired(public))
                elif now - last >= (t.check_after if self.own < public else t.check_after_higher) \
                        and self._probed_at.get(public) != last:
                    self._probed_at[public] = last  # one probe per silence
                    self._events.append(CheckWanted(public))
                self._watch.set(public, self._silence_due(public, last))
        if self._unheard and now >= self._next_announce:
            self._unheard = {p for p in self._unheard if p in self.members and last_heard.get(p) is None}
            unreached = sum(1 for p in self._unheard if now - self.members[p][1] >= t.announce_after)
            if unreached:
                self._count("mesh-announcements")
                self._events.append(AnnounceWanted(unreached))
                self._next_announce = now + self._announce_step
                self._announce_step = min(self._announce_step * 2, t.announce_max)
            else:
                self._announce_step = t.announce_after
                self._next_announce = now + 1.0
        if self.cutoff is not None and self.members and now >= self._next_relook:
            self._next_relook = now + t.relook
            behind = tuple(p for p in self.members if self.generation.get(p) != self.mesh.id)
            if behind:
                self._events.append(RelookWanted(behind))
        if self.cutoff is not None and now >= self.cutoff:
            self.cutoff = None  # the window is over: only the current key's members stay
            for public in self.members:
                if self.generation.get(public) != self.mesh.id:
                    self._count("mesh-peers-old-key")
                    self._events.append(MemberExpired(public, "old-key"))
        for public, since in list(self.leaving.items()):
            if since + t.goodbye_confirm <= now:
                del self.leaving[public]
                if public in self.members:
                    self._events.append(GoodbyeDue(public, since))


