"""The record a node publishes about itself (docs/records.md), as pure functions.

``record_body`` is the wgsd layout plus our candidates (host addresses, the gateway's port
mapping, the STUN-reflexive addresses), ``probe=1`` and ``nat=``; ``signed`` adds a mesh's
``mesh=``, ``mc=``, ``name=`` and ``mac=`` (the MAC covers the candidates that fit the TXT).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any, Iterable

from wgdisco.proto.nat import NAT_MAPPING, NAT_TXT
from wgdisco.proto import keys, records
from wgdisco.proto.events import RecordChanged
from wgdisco.proto.membership import MeshMembership

__all__ = ["OwnRecord", "record_body", "signed", "srv_target", "NAT_TXT", "NAT_MAPPING"]



def srv_target(public: bytes, domain: str) -> str:
    """Our SRV target host name: ``wg-<first 16 of the base32 key>.<domain>.`` (docs/records.md)."""
    return records.target_name(keys.key_to_base32(public), domain)


def record_body(
    public: bytes, *, port: int, domain: str, host_addresses: Iterable[Any],
    mapped: tuple[str, int] | None, reflexive: Iterable[tuple[str, int]], traversal: bool,
    behaviour: str, allowed: Iterable[Any], mesh_addresses: Iterable[Any], calls: Iterable[str] = (),
) -> records.ServiceRecord:
    hosts = list(host_addresses)
    candidates: list[Any] = [(ip, port) for ip in hosts]
    if mapped is not None:
        candidates.append((ipaddress.ip_address(mapped[0]), mapped[1]))
    for ip, rport in reflexive:
        c = (ipaddress.ip_address(ip), rport)
        if c not in candidates:
            candidates.append(c)
    extra: dict[str, str | bytes | None] = {}
    if traversal:
        extra["probe"] = "1"  # we answer wgdisco path probes (docs/records.md)
    nat = NAT_TXT.get(behaviour)
    if nat is not None:
        extra["nat"] = nat
    calls = list(calls)
    if calls:
        extra["call"] = ",".join(calls)  # peers asked to call us (proto/calls.py)
    nets = [ipaddress.ip_network(f"{a.ip}/{a.max_prefixlen}") for a in allowed]
    nets += [n for n in mesh_addresses if n not in nets]
    return records.ServiceRecord(
        public_key=public, port=port, target=srv_target(public, domain), addresses=hosts,
        allowed=nets, candidates=candidates, txt_extra=extra,
    )


def signed(body: records.ServiceRecord, membership: MeshMembership | None) -> records.ServiceRecord:
    """``body`` as published: in a mesh with ``mesh=``, ``mc=`` (the membership's counter),
    ``name=`` and the ``mac=`` over the candidates that fit."""
    if membership is None:
        return body
    counter = membership.counter
    name = membership.name
    extra = {**body.txt_extra, "mesh": membership.mesh.id, "mc": str(counter), "mac": "A" * 24}
    if name is not None:
        extra["name"] = name
    draft = dataclasses.replace(body, txt_extra=extra)  # the MAC's size, so the same candidates fit
    txt, _ = records.parse_txt(records.build_txt(draft))
    cand = ",".join(records.list_items(txt, "cand"))
    extra["mac"] = membership.mesh.mac(body.public_key, cand, counter, name or "")
    return dataclasses.replace(body, txt_extra=extra)


class OwnRecord:
    """What our record is made of and the last one published: ``update`` gives a RecordChanged
    when the record changed (a mesh record then carries a higher ``mc=``; older ones are replays)."""

    def __init__(self, *, port: int, domain: str, allowed: Iterable[Any], traversal: bool) -> None:
        self.port, self.domain, self.allowed, self.traversal = port, domain, list(allowed), traversal
        self.local_networks: list[Any] = []
        self.host_addresses: list[Any] = []  # our interfaces' IPs (not link-local)
        self.mapped: tuple[str, int] | None = None  # the gateway's port mapping
        self.published: records.ServiceRecord | None = None
        self._body: records.ServiceRecord | None = None

    def set_lan(self, lan: Iterable[tuple[str, Any]]) -> None:
        """Our interfaces' addresses, as (ifname, ip_interface)."""
        lan = list(lan)
        self.local_networks = [ipaddress.ip_network(a.network) for _, a in lan]
        self.host_addresses = [a.ip for _, a in lan if not a.ip.is_link_local]

    def body(self, public: bytes, reflexive: Iterable[tuple[str, int]], behaviour: str,
             mesh_addresses: Iterable[Any], calls: Iterable[str] = ()) -> records.ServiceRecord:
        return record_body(public, port=self.port, domain=self.domain, host_addresses=self.host_addresses,
                           mapped=self.mapped, reflexive=reflexive, traversal=self.traversal, behaviour=behaviour,
                           allowed=self.allowed, mesh_addresses=mesh_addresses, calls=calls)

    def update(self, body: records.ServiceRecord, membership: MeshMembership | None,
               wall_now: float, force: bool = False) -> RecordChanged | None:
        """``force``: sign it anew even if the body is the same (a new mesh key)."""
        old = self.published
        if old is not None and body == self._body and not force:
            return None
        self._body = body
        if membership is not None:
            membership.next_counter(wall_now)
        self.published = record = signed(body, membership)
        withdrawn = old.instance_label if old is not None and old.public_key != record.public_key else None
        return RecordChanged(record, withdrawn)
