"""The mesh's lifecycle in the daemon (docs/mesh.md "Rotating the mesh key", "A lost or stolen device"):
the mesh keys and MeshDeny from the config, at start and on SIGHUP, handed to the node core
(``Node.set_mesh``; the policy is proto/membership.py's), and what ``wgdisco mesh members`` shows.

Nothing here logs or returns a mesh key, a MeshId or anything derived from them but the published
id; errors name the config key only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from wgdisco.config import Config, DiscoveryConfig, format_until
from wgdisco.daemon import clock
from wgdisco.errors import LocalError
from wgdisco.proto import keys
from wgdisco.proto.mesh import Mesh

log = logging.getLogger("wgdisco")

# the DiscoveryConfig fields a SIGHUP applies to a running mesh
RELOADED = ("mesh_key", "previous_mesh_key", "previous_mesh_key_until", "mesh_deny", "mesh_id")


def meshes(d: DiscoveryConfig) -> tuple[Mesh, Mesh | None]:
    """The current mesh key's Mesh (address plan from MeshId, else from the key) and the previous
    key's during a rotation, which shares the plan. Blocking (scrypt, ~50 ms a key)."""
    current = Mesh(d.mesh_key, d.mesh_ipv4, max_peers=d.mesh_max_peers, plan=d.mesh_id)
    previous = None
    if d.previous_mesh_key is not None:
        previous = Mesh(d.previous_mesh_key, d.mesh_ipv4, max_peers=d.mesh_max_peers, plan=current.plan)
    return current, previous


def describe(d: DiscoveryConfig, now_wall: float) -> str:
    """One log line about the rotation window and the deny list (no secret in it)."""
    parts = []
    if d.previous_mesh_key_until is not None:
        until = format_until(d.previous_mesh_key_until)
        parts.append(f"previous mesh key accepted until {until}" if d.previous_mesh_key_until > now_wall
                     else f"previous mesh key ended {until} (remove PreviousMeshKey and PreviousMeshKeyUntil)")
    if d.mesh_deny:
        parts.append(f"{len(set(d.mesh_deny))} key(s) banned (MeshDeny)")
    return "; ".join(parts)


async def reload(tunnel: Any, cfg: Config) -> str | None:
    """SIGHUP with a new config: its mesh keys and MeshDeny go to the node at once (members keep
    their sessions and addresses). None, or why nothing changed (logged by the caller)."""
    node, d, old = tunnel.node, cfg.discovery, tunnel.cfg.discovery
    if node is None or node.membership is None:
        return "MeshKey: turning the mesh on needs a restart" if d.mesh_key is not None and not tunnel.over_uapi else None
    if d.mesh_key is None:
        return "MeshKey: the running mesh cannot be turned off by a reload (restart)"
    current, previous = await asyncio.to_thread(meshes, d)
    if not current.same_addresses(node.membership.mesh):
        return ("MeshId: the new mesh key would renumber every member (add the MeshId that "
                "wgdisco genmesh --rotate prints, or restart to renumber); keeping the running mesh keys")
    with tunnel.lock:
        before = node.membership.mesh.id
        node.set_mesh(current, previous, d.previous_mesh_key_until, d.mesh_deny, clock.now())
        tunnel.flush()
        rotated = node.membership.mesh.id != before
    for attr in RELOADED:  # what runs now (the other [Discovery] keys wait for a restart)
        setattr(old, attr, getattr(d, attr))
    if rotated:
        log.info("mesh: new mesh key, published id %s (addresses and names unchanged)", current.id)
        if tunnel.discovery is not None:
            tunnel.discovery.rescan()  # records refused under the old key are checked again
    if (line := describe(d, time.time())):
        log.info("mesh: %s", line)
    return None


def members(tunnel: Any) -> dict[str, Any]:
    """``wgdisco mesh members --json`` (lock held): every member, ourselves first, and the banned keys."""
    device, node = tunnel.device, tunnel.node
    m = None if node is None else node.membership
    if m is None:
        raise LocalError("this interface is not a mesh (no MeshKey)")
    now, wall = clock.now(), device.wall_offset

    def entry(public: bytes) -> dict[str, Any]:
        own = public == node.public_key
        peer = device.peers.get(public)
        if own:
            first = last = None
            generation, path = "current", None
        else:
            first = m.first_seen(public)
            heard = [m.last_record(public)] + ([peer.last_authenticated] if peer is not None
                                                and peer.last_authenticated is not None else [])
            last = max(heard)
            generation, path = m.generation_label(public), node.path_status(public, now).path
        return {
            "self": own,
            "name": m.name_of(public)[0],
            "names": m.names_of(public),
            "public_key": keys.key_to_base64(public),
            "addresses": [str(n.network_address) for n in m.addresses(public)],
            "first_seen": None if first is None else int(first + wall),
            "last_seen": None if last is None else int(last + wall),
            "generation": generation,
            "path": path,
        }

    end = m.window_end
    return {
        "interface": tunnel.name,
        "config": str(tunnel.cfg.path),
        "id": m.mesh.id,
        "previous_id": None if m.previous is None else m.previous.id,
        "previous_until": None if end is None else int(end + wall),
        "members": [entry(node.public_key)] + [entry(p) for p in sorted(m.members)],
        "banned": sorted(keys.key_to_base64(p) for p in m.deny),
        "counters": {k: v for k, v in m.counters.items() if k.startswith(("mesh-peers", "mesh-records", "mesh-keys"))},
    }
