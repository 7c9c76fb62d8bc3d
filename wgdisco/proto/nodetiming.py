"""The node layer's times and budgets in one value object (proto/node.py and its cores).

The defaults are the documented ones (docs/configuration.md, docs/mesh.md, docs/nat-traversal.md);
tests that are about a setting pass a different ``Timing``; nothing patches module globals.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wgdisco.proto.birthday import Timing as BirthdayTiming
from wgdisco.proto.lookups import Timing as LookupTiming
from wgdisco.proto.membership import Timing as MeshTiming
from wgdisco.proto.paths import Timing as PathTiming
from wgdisco.proto.stun import REFRESH

__all__ = ["Timing"]


@dataclass(frozen=True)
class Timing:
    paths: PathTiming = field(default_factory=PathTiming)
    birthday: BirthdayTiming = field(default_factory=BirthdayTiming)
    mesh: MeshTiming = field(default_factory=MeshTiming)
    lookups: LookupTiming = field(default_factory=LookupTiming)  # poll_interval: [Discovery] PollInterval
    stun_refresh: float = REFRESH  # 25 s; also keeps the NAT mapping warm (RFC 4787 REQ-5)
    # The latest record of keys that are not (yet) peers, so that a peer added later (`wg set`,
    # the mesh) is found at once: mDNS announces a record once, not again when we start caring
    # about it. Strangers create these, so they are few and expire (ARCHITECTURE.md "Trust model").
    max_strangers: int = 64
    stranger_ttl: float = 600.0
