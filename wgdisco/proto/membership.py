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
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping

from wgdisco.errors import DecodeError
from wgdisco.proto import keys, records
from wgdisco.proto import names as namesmod
from wgdisco.proto.core import Core
from wgdisco.proto.events import AnnounceWanted, MeshAddressChanged, MeshNamesChanged, PeerAdmitted, PeerRemoved
from wgdisco.proto.mesh import Mesh
from wgdisco.proto.ratelimiter import TokenBucket

__all__ = ["MeshMembership", "Timing", "MemberExpired", "CheckWanted", "GoodbyeDue", "put_newest"]

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


@dataclass(frozen=True)
class MemberExpired:
    """(For the node.) ``peer``'s record is old and it has had no handshake for ``Timing.expire``."""

    peer: Key


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
        self.accepted: OrderedDict[Key, int] = OrderedDict()  # key -> last accepted mc=
        self.v4: dict[Key, Any] = mesh.assign_ipv4([own])
        self.counter = int(wall * 1000)  # mc= of our record: Unix ms, strictly increasing
        self.name = namesmod.check_name(name)  # ours, in name= (None: no name claimed)
        self.names: dict[Key, str] = {}  # member -> the name its last valid record claims
        self.waiting: OrderedDict[Key, tuple[records.Sighting, str]] = OrderedDict()
        self.leaving: dict[Key, float] = {}  # member -> when its goodbye came (being checked)
        self._checked: dict[Key, float] = {}  # member -> the last-heard time its check probe was for
        self._hosts: MeshNamesChanged | None = None
        self._budget = TokenBucket(timing.records_per_second, timing.records_burst)
        self._announce_step = timing.announce_after
        self._next_announce = 0.0
        self._next_check = 0.0

    # --- records ----------------------------------------------------------------------

    def check(self, sighting: records.Sighting) -> tuple[str, records.Sighting, str | None]:
        """"valid" (our mesh id, a good MAC, not older than the last accepted: the sighting comes
        back with only the candidates the MAC covers, and the name it claims if that is a valid
        name), "invalid", "replay", "other" (another mesh) or "none" (no mesh= key)."""
        txt = sighting.txt
        mesh_id = txt.get("mesh")
        if mesh_id is None:
            return "none", sighting, None
        if mesh_id != self.mesh.id.encode():
            self._count("records-other-mesh")
            return "other", sighting, None
        counter_text, mac = txt.get("mc"), txt.get("mac")
        raw_name = txt.get("name") or b""
        if counter_text is None or mac is None or not counter_text.isdigit() or len(counter_text) > 19 \
                or len(raw_name) > namesmod.MAX_NAME:
            self._count("mesh-records-invalid")
            return "invalid", sighting, None
        counter = int(counter_text)
        items = records.list_items(txt, "cand")
        claimed = raw_name.decode("utf-8", "replace")
        if not self.mesh.verify(sighting.public_key, ",".join(items), counter, mac, claimed):
            self._count("mesh-records-invalid")
            return "invalid", sighting, None
        last = self.accepted.get(sighting.public_key)
        if last is not None and counter < last:
            self._count("mesh-records-replayed")
            return "replay", sighting, None
        name = namesmod.check_name(raw_name) if raw_name else None
        if raw_name and name is None:
            self._count("mesh-names-invalid")  # authenticated, but not a name we would write anywhere
        put_newest(self.accepted, sighting.public_key, counter, self.timing.counters_kept)
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
        verdict, sighting, name = self.check(sighting)
        member = public in self.members
        if verdict == "valid":
            if member:
                self.seen(public, now)
                self.set_name(public, name)
            return ("hint" if member or is_peer else "admit"), sighting, name
        if verdict in ("invalid", "replay"):  # claims our mesh without proof, or an old record
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
        """``public`` is a member now (the node made it a peer): it gets a place in the plan."""
        self.members[public] = [now, now]
        if name is not None:
            self.names[public] = name
        self._reassign()
        self._count("mesh-peers-admitted")
        self._events.append(PeerAdmitted(public, tuple(self.addresses(public))))

    def seen(self, public: Key, now: float) -> None:
        """A valid record of member ``public`` arrived."""
        self.members[public][0] = now

    def last_record(self, public: Key) -> float:
        return self.members[public][0]

    def remove(self, public: Key, reason: str) -> None:
        """``public`` is no member any more (the node removed the peer)."""
        self.leaving.pop(public, None)
        self._checked.pop(public, None)
        del self.members[public]
        self.v4.pop(public, None)
        self.names.pop(public, None)
        self._reassign()
        self._count("mesh-peers-removed")
        self._events.append(PeerRemoved(public, reason))

    def set_own_key(self, public: Key) -> None:
        """Our identity changed: our place in the plan follows."""
        self.own = public
        self._reassign()

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
        self._names_update()

    def addresses(self, public: Key) -> list[Any]:
        """A key's derived addresses as host networks (/32, /128)."""
        out = []
        v4 = self.v4.get(public)
        if v4 is not None:
            out.append(ipaddress.ip_network(f"{v4}/32"))
        out.append(ipaddress.ip_network(f"{self.mesh.ipv6_of(public)}/128"))
        return out

    def set_name(self, public: Key, name: str | None) -> None:
        if self.names.get(public) == name:
            return
        if name is None:
            self.names.pop(public, None)
        else:
            self.names[public] = name
        self._names_update()

    def _claims(self) -> dict[Key, str | None]:
        return {self.own: self.name, **self.names}

    def _names_update(self) -> None:
        plan = self.hosts()
        if plan != self._hosts:
            self._hosts = plan
            self._events.append(plan)

    def hosts(self) -> MeshNamesChanged:
        """Every member's addresses and names (ours first, then by key): its key name always, its
        claimed name unless two members claim it (then nobody gets it)."""
        claims = self._claims()
        owned, contested = namesmod.resolve(claims)
        lines = []
        for public in [self.own, *sorted(self.members)]:
            names = [namesmod.key_name(keys.key_to_base32(public))]
            claimed = claims.get(public)
            if claimed is not None and owned.get(claimed) == public:
                names.insert(0, claimed)
            for net in self.addresses(public):
                lines.append((str(net.network_address), tuple(names)))
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
        if self.members:
            times += [self._next_check, self._next_announce]
        if self.waiting:
            times.append(self._budget.ready_at())
        if self.leaving:
            times.append(min(self.leaving.values()) + self.timing.goodbye_confirm)
        return min(times) if times else None

    def handle_timer(self, now: float, last_heard: Mapping[Key, float | None]) -> None:
        """Checks, expiry, re-announcements and goodbye checks that are due; ``last_heard``: when
        each member was last heard of on its path (a WireGuard packet, a probe; None: never)."""
        t = self.timing
        if self.members and now >= self._next_check:
            self._next_check = now + t.check_interval
            for public, (seen, admitted) in self.members.items():
                last = max(seen, admitted, last_heard.get(public) or 0.0)
                if now - last >= t.expire:
                    self._events.append(MemberExpired(public))
                elif now - last >= (t.check_after if self.own < public else t.check_after_higher) \
                        and self._checked.get(public) != last:
                    self._checked[public] = last  # one probe per silence
                    self._events.append(CheckWanted(public))
        if self.members and now >= self._next_announce:
            unreached = sum(1 for public, (_seen, admitted) in self.members.items()
                            if last_heard.get(public) is None and now - admitted >= t.announce_after)
            if unreached:
                self._count("mesh-announcements")
                self._events.append(AnnounceWanted(unreached))
                self._next_announce = now + self._announce_step
                self._announce_step = min(self._announce_step * 2, t.announce_max)
            else:
                self._announce_step = t.announce_after
                self._next_announce = now + 1.0
        for public, since in list(self.leaving.items()):
            if since + t.goodbye_confirm <= now:
                del self.leaving[public]
                if public in self.members:
                    self._events.append(GoodbyeDue(public, since))


