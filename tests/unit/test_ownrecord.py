"""Our own record (proto/ownrecord.py): candidate order, probe=/nat=, and the mesh signature that
covers exactly the candidates that fit the TXT (docs/records.md, docs/mesh.md)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from wgdisco.proto import keys, records
from wgdisco.proto.membership import MeshMembership
from wgdisco.proto.mesh import Mesh
from wgdisco.proto.ownrecord import record_body, signed, srv_target

PUB = keys.public_key(keys.clamp(bytes(range(32))))
MESH = Mesh("", master=bytes(32))
ip = ipaddress.ip_address


def body(**kw: Any) -> records.ServiceRecord:
    args: dict[str, Any] = dict(port=51820, domain="example.com", host_addresses=[ip("10.1.0.2"), ip("2001:db8::2")],
                                mapped=None, reflexive=[], traversal=True, behaviour="unknown",
                                allowed=[ipaddress.ip_interface("100.64.0.1/10")], mesh_addresses=[])
    args.update(kw)
    return record_body(PUB, **args)


def sighting_of(record: records.ServiceRecord) -> records.Sighting:
    """What another node reads back from the DNS (no SRV address: the candidates come from cand=)."""
    return records.record_from_dns(record.instance_label, None, None, [], records.build_txt(record))


def test_candidates_host_addresses_then_the_port_mapping_then_reflexive_without_duplicates() -> None:
    rec = body(mapped=("192.0.2.7", 40000),
               reflexive=[("203.0.113.1", 41000), ("192.0.2.7", 40000), ("10.1.0.2", 51820), ("203.0.113.1", 41000),
                          ("198.51.100.3", 42000)])
    assert rec.candidates == [
        (ip("10.1.0.2"), 51820), (ip("2001:db8::2"), 51820),  # host addresses, with our port
        (ip("192.0.2.7"), 40000),  # the gateway's mapping: before STUN (useless behind a hard NAT)
        (ip("203.0.113.1"), 41000), (ip("198.51.100.3"), 42000),
    ]
    assert rec.addresses == [ip("10.1.0.2"), ip("2001:db8::2")]
    assert rec.target == srv_target(PUB, "example.com") == f"wg-{keys.key_to_base32(PUB)[:16]}.example.com."
    assert (rec.port, rec.public_key) == (51820, PUB)


@pytest.mark.parametrize("traversal, behaviour, extra", [
    (True, "endpoint-independent", {"probe": "1", "nat": "easy"}),
    (True, "endpoint-dependent", {"probe": "1", "nat": "hard"}),
    (True, "unknown", {"probe": "1"}),
    (False, "endpoint-independent", {"nat": "easy"}),  # no probes answered without traversal
    (False, "unknown", {}),
])
def test_probe_and_nat_keys(traversal: bool, behaviour: str, extra: dict[str, str]) -> None:
    rec = body(traversal=traversal, behaviour=behaviour)
    assert rec.txt_extra == extra
    txt = sighting_of(rec).txt
    assert (txt.get("probe"), txt.get("nat")) == tuple(extra[k].encode() if k in extra else None
                                                       for k in ("probe", "nat"))


def test_allowed_is_our_interface_addresses_as_hosts_plus_the_mesh_ones() -> None:
    v6 = ipaddress.ip_network("fd00::1/128")
    rec = body(allowed=[ipaddress.ip_interface("100.64.0.1/10")],
               mesh_addresses=[ipaddress.ip_network("100.64.0.1/32"), v6])
    assert rec.allowed == [ipaddress.ip_network("100.64.0.1/32"), v6]  # no duplicate


def test_without_a_mesh_the_record_is_not_signed() -> None:
    rec = body()
    assert signed(rec, None) is rec


def test_a_signed_record_verifies_and_is_valid_for_another_member() -> None:
    ours = MeshMembership(MESH, PUB, wall=1.7e9, name="alpha")
    ours.next_counter(1.7e9 + 5)
    rec = signed(body(reflexive=[("203.0.113.1", 41000)]), ours)
    extra = rec.txt_extra
    assert (extra["mesh"], extra["mc"], extra["name"]) == (MESH.id, str(ours.counter), "alpha")
    cand = ",".join(records.format_candidate(i, p) for i, p in rec.candidates)
    assert MESH.verify(PUB, cand, ours.counter, extra["mac"], "alpha")
    assert not MESH.verify(PUB, cand, ours.counter, extra["mac"], "beta")  # the name is covered
    assert not MESH.verify(PUB, cand, ours.counter + 1, extra["mac"], "alpha")  # and the counter
    theirs = MeshMembership(MESH, b"\x01" * 32, wall=1.7e9)
    verdict, seen, name = theirs.check(sighting_of(rec))
    assert (verdict, name) == ("valid", "alpha")
    assert seen.candidates == rec.candidates
    assert "name" not in signed(body(), MeshMembership(MESH, PUB, wall=1.7e9)).txt_extra  # no name claimed


def test_the_mac_covers_only_the_candidates_that_fit_the_txt() -> None:
    many = [(f"2001:db8:{i:x}:1234:5678:9abc:def0:{i:x}", 40000 + i) for i in range(1, 80)]
    ours = MeshMembership(MESH, PUB, wall=1.7e9, name="alpha")
    rec = signed(body(reflexive=many), ours)
    txt, _ = records.parse_txt(records.build_txt(rec))
    fitted = records.list_items(txt, "cand")
    assert 2 < len(fitted) < len(rec.candidates)  # the TXT limit dropped the last ones
    every = ",".join(records.format_candidate(i, p) for i, p in rec.candidates)
    assert MESH.verify(PUB, ",".join(fitted), ours.counter, rec.txt_extra["mac"], "alpha")
    assert not MESH.verify(PUB, every, ours.counter, rec.txt_extra["mac"], "alpha")
    verdict, seen, _ = MeshMembership(MESH, b"\x01" * 32, wall=1.7e9).check(sighting_of(rec))
    assert verdict == "valid" and seen.candidates == rec.candidates[:len(fitted)]
