"""The port-mapping client core (proto/portmap.py) on a fake clock, against fake gateways that
answer PCP (RFC 6887) and NAT-PMP (RFC 6886) byte for byte, and misbehaving ones."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wgdisco.errors import LocalError
from wgdisco.proto import natpmp, pcp
from wgdisco.proto.portmap import (
    LIFETIME, RETRY_AFTER, GatewayProbe, MappingChanged, PortMapFailed, PortMapper, UpnpWanted, view,
)

GW = ("10.1.0.1", 5351)
ME = "10.1.0.2"
EXT = "203.0.113.1"


def rng(n: int) -> bytes:
    return bytes((7 * i + 1) % 256 for i in range(n))


def pcp_answer(request: bytes, *, result: int = 0, lifetime: int | None = None, port: int = 40000,
               epoch: int = 100, nonce: bytes | None = None) -> bytes:
    """What a PCP server sends back for a MAP request (§7.2, §11.1)."""
    asked = struct.unpack_from("!I", request, 4)[0]
    life = asked if lifetime is None else lifetime
    header = struct.pack("!BBBBII", 2, 0x81, 0, result, life, epoch) + bytes(12)
    n = request[24:36] if nonce is None else nonce
    return header + n + struct.pack("!B3xHH", 17, struct.unpack_from("!H", request, 40)[0], port) + \
        bytes(10) + b"\xff\xff" + bytes(int(x) for x in EXT.split("."))


def natpmp_answers(requests: list[bytes], *, lifetime: int | None = None, port: int = 40000, epoch: int = 100,
                   result: int = 0) -> list[bytes]:
    out = []
    for r in requests:
        if r == natpmp.external_address_request():
            out.append(struct.pack("!BBHI", 0, 128, result, epoch) + bytes(int(x) for x in EXT.split(".")))
        else:
            _, _, _, internal, _, asked = struct.unpack("!BBHHHI", r)
            out.append(struct.pack("!BBHIHHI", 0, 129, result, epoch, internal, port if asked else 0,
                                   asked if lifetime is None else lifetime))
    return out


def sent(m: PortMapper) -> list[bytes]:
    out = m.datagrams_to_send()
    assert all(addr == GW for _, addr in out)
    return [data for data, _ in out]


def run_until(m: PortMapper, now: float, until: float) -> tuple[float, list[bytes]]:
    """Fire timers up to ``until``; everything sent on the way."""
    out: list[bytes] = []
    while (t := m.get_timer()) is not None and t <= until:
        now = max(now, t)
        m.handle_timer(now)
        out += sent(m)
    return until, out


def split(out: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """PCP requests (version 2) and NAT-PMP ones (version 0)."""
    return [r for r in out if r[0] == 2], [r for r in out if r[0] == 0]


def wants(m: PortMapper) -> tuple[list[UpnpWanted], list]:
    """UPnP requests and the other events."""
    events = m.pop_events()
    return [e for e in events if isinstance(e, UpnpWanted)], [e for e in events if not isinstance(e, UpnpWanted)]


def test_pcp_maps_refreshes_at_half_lifetime_and_deletes_at_shutdown() -> None:
    m = PortMapper("auto", rng=rng, internal_port=51820)
    m.start(GW, ME, 0.0)
    [req], _natpmp = split(sent(m))
    assert req[1] == pcp.OP_MAP and struct.unpack_from("!I", req, 4)[0] == LIFETIME
    assert m.receive(pcp_answer(req), GW, 0.01)
    assert wants(m)[1] == [MappingChanged(m.mapping, "mapped")]  # PCP is the best: taken at once
    assert m.mapping is not None and m.mapping.external == (EXT, 40000) and m.mapping.protocol == "pcp"
    assert m.get_timer() == pytest.approx(0.01 + LIFETIME / 2)  # RFC 6886 §3.3, RFC 6887 §11.2.1
    now, out = run_until(m, 0.01, LIFETIME / 2 + 0.01)
    [renew] = out  # NAT-PMP, still unanswered when PCP mapped, was not asked again
    assert renew[24:36] == req[24:36]  # the same nonce (§11.1)
    assert struct.unpack_from("!H", renew, 42)[0] == 40000  # suggests the port it has
    assert m.receive(pcp_answer(renew), GW, now)
    assert m.pop_events() == []  # the same mapping: nothing to publish
    assert view(m, now).expires_in == pytest.approx(LIFETIME)
    m.stop(now)
    [delete] = sent(m)  # the NAT-PMP and UPnP requests of long ago are not deleted
    assert struct.unpack_from("!I", delete, 4)[0] == 0 and delete[24:36] == req[24:36]  # §15
    assert m.pop_events() == [MappingChanged(None, "deleted")] and not m.stopped
    assert m.receive(pcp_answer(delete, lifetime=0), GW, now + 0.01)
    assert m.stopped and m.get_timer() is None


def test_auto_asks_pcp_natpmp_and_upnp_at_once() -> None:
    m = PortMapper("auto", rng=rng, internal_port=51820)
    m.start(GW, ME, 0.0)
    pcp_reqs, natpmp_reqs = split(sent(m))
    assert len(pcp_reqs) == 1
    assert natpmp_reqs == [natpmp.external_address_request(), natpmp.map_request(51820, 51820, LIFETIME)]
    [want], _ = wants(m)
    assert (want.action, want.internal_port, want.external_port, want.lifetime) == ("add", 51820, 51820, LIFETIME)
    assert m.state == "probing" and m.protocol == "pcp"  # the best still asked


def test_a_natpmp_mapping_waits_for_pcp_then_is_kept_and_a_late_upnp_one_is_deleted() -> None:
    """Only NAT-PMP answers at first: kept once PCP has failed (1.75 s), with its grant time;
    the UPnP mapping made after the choice, at another port, is deleted (one mapping kept)."""
    m = PortMapper("auto", rng=rng, internal_port=51820)
    m.start(GW, ME, 0.0)
    _, natpmp_reqs = split(sent(m))
    [want], _ = wants(m)
    for a in natpmp_answers(natpmp_reqs):
        assert m.receive(a, GW, 0.01)
    assert m.mapping is None and m.state == "probing" and m.protocol == "pcp"  # PCP may still answer
    times, now = [], 0.01
    while m.mapping is None:
        now = m.get_timer()  # type: ignore[assignment]
        m.handle_timer(now)
        pcp_reqs, natpmp_reqs = split(sent(m))
        assert natpmp_reqs == []  # NAT-PMP answered: not asked again
        if pcp_reqs:
            times.append(now)
    assert times == [0.25, 0.75] and now == pytest.approx(1.75)
    assert (m.mapping.protocol, m.mapping.external, m.mapping.granted_at) == ("natpmp", (EXT, 40000), 0.01)
    assert m.get_timer() == pytest.approx(0.01 + LIFETIME / 2)
    _, events = wants(m)
    assert events == [PortMapFailed("pcp", "no-answer"), MappingChanged(m.mapping, "mapped")]
    m.upnp_done(want.token, 2.5, found=True, external=(EXT, 51820), lifetime=LIFETIME)
    [delete], events = wants(m)
    assert (delete.action, delete.external_port) == ("delete", 51820) and events == []
    assert m.mapping.protocol == "natpmp" and m.counters["extra-deleted"] == 1
    assert view(m, 2.5).answered == ("natpmp", "upnp")
    m.stop(3.0)
    assert sent(m) == [natpmp.map_request(51820, 0, 0)]  # RFC 6886 §3.4
    assert wants(m) == ([], [MappingChanged(None, "deleted")])
    run_until(m, 3.0, 8.0)
    assert m.stopped  # no answer to the delete: given up after 0.75 s


def test_pcp_is_taken_over_an_earlier_natpmp_mapping_which_is_deleted() -> None:
    m = PortMapper("auto", rng=rng, internal_port=51820)
    m.start(GW, ME, 0.0)
    [req], natpmp_reqs = split(sent(m))
    for a in natpmp_answers(natpmp_reqs, port=40001):
        m.receive(a, GW, 0.01)
    assert m.mapping is None
    assert m.receive(pcp_answer(req, port=40000), GW, 0.02)
    assert m.mapping is not None and (m.mapping.protocol, m.mapping.external) == ("pcp", (EXT, 40000))
    assert sent(m) == [natpmp.map_request(51820, 0, 0)] and m.counters["extra-deleted"] == 1
    assert m.counters["natpmp-requests"] == 2  # the request and the delete


def test_a_worse_mapping_at_the_same_external_port_is_not_deleted() -> None:
    """A gateway whose protocols share one table (miniupnpd; RFC 6887 Appendix A) gives PCP and
    NAT-PMP the same mapping: deleting the NAT-PMP one would delete the kept one."""
    m = PortMapper("auto", rng=rng, internal_port=51820)
    m.start(GW, ME, 0.0)
    [req], natpmp_reqs = split(sent(m))
    assert m.receive(pcp_answer(req, port=51820), GW, 0.01)
    [want], _ = wants(m)
    for a in natpmp_answers(natpmp_reqs, port=51820):
        assert m.receive(a, GW, 0.02)  # late: after the choice
    m.upnp_done(want.token, 1.0, found=True, external=(EXT, 51820), lifetime=LIFETIME)
    assert sent(m) == [] and wants(m) == ([], []) and "extra-deleted" not in m.counters
    assert m.mapping is not None and m.mapping.protocol == "pcp"
    # UPnP's add may have taken the rule over (miniupnpd rewrites it, and PCP's delete then finds
    # nothing): at shutdown it is deleted through PCP and through UPnP and NAT-PMP too
    m.stop(5.0)
    [pcp_delete], [natpmp_delete] = split(sent(m))
    assert struct.unpack_from("!I", pcp_delete, 4)[0] == 0 and natpmp_delete == natpmp.map_request(51820, 0, 0)
    [upnp_delete], events = wants(m)
    assert (upnp_delete.action, upnp_delete.external_port) == ("delete", 51820)
    assert events == [MappingChanged(None, "deleted")]


def test_natpmp_gateway_answers_pcp_with_unsupported_version() -> None:
    m = PortMapper("auto", rng=rng, internal_port=51820)
    m.start(GW, ME, 0.0)
    _, natpmp_reqs = split(sent(m))
    assert m.receive(bytes.fromhex("0081 0001 00000005 0000 0000 00000000"), GW, 0.01)  # RFC 6887 §9
    assert m.protocol == "natpmp" and m.counters["pcp-unsupported-version"] == 1
    for a in natpmp_answers(natpmp_reqs):
        assert m.receive(a, GW, 0.02)
    assert m.mapping is not None and m.mapping.protocol == "natpmp"  # at once, no timeout


def test_upnp_only_gateway_is_used_when_pcp_and_natpmp_have_failed() -> None:
    """UPnP answers first (1.0 s): kept at 1.75 s, when PCP and NAT-PMP have had their three
    requests each; not after 3.5 s and only then the UPnP search."""
    m = PortMapper("auto", rng=rng, internal_port=51820)
    m.start(GW, ME, 0.0)
    [want], _ = wants(m)
    run_until(m, 0.0, 1.0)
    m.upnp_done(want.token, 1.0, found=True, external=(EXT, 51820), lifetime=LIFETIME)
    assert m.mapping is None and m.state == "probing"
    now, out = run_until(m, 1.0, 1.75)
    assert m.mapping is not None and (m.mapping.protocol, m.mapping.granted_at) == ("upnp", 1.0)
    assert m.counters["pcp-requests"] == 3 and m.counters["natpmp-requests"] == 3
    _, events = wants(m)
    assert events == [PortMapFailed("pcp", "no-answer"), PortMapFailed("natpmp", "no-answer"),
                      MappingChanged(m.mapping, "mapped")]


def test_upnp_answering_after_pcp_and_natpmp_failed_is_taken_at_once() -> None:
    m = PortMapper("auto", rng=rng, internal_port=51820)
    m.start(GW, ME, 0.0)
    [want], _ = wants(m)
    run_until(m, 0.0, 2.0)
    assert m.mapping is None and m.protocol == "upnp"
    m.upnp_done(want.token, 2.4, found=True, external=(EXT, 51820), lifetime=LIFETIME)
    assert m.mapping is not None and m.mapping.protocol == "upnp" and m.state == "mapped"


def test_nothing_answers_then_retry() -> None:
    m = PortMapper("auto", rng=rng, internal_port=51820)
    m.start(GW, ME, 0.0)
    [want], _ = wants(m)
    now, _ = run_until(m, 0.0, 3.6)
    _, events = wants(m)
    assert events == [PortMapFailed("pcp", "no-answer"), PortMapFailed("natpmp", "no-answer")]
    assert m.state == "probing" and m.protocol == "upnp"  # UPnP's search is still on
    m.upnp_done(want.token - 1, now, found=True, external=(EXT, 1))  # a stale answer
    assert m.counters["upnp-stale"] == 1 and m.mapping is None
    m.upnp_done(want.token, now, found=True, error="ConflictInMappingEntry")
    assert m.state == "failed" and m.get_timer() == pytest.approx(now + RETRY_AFTER)
    assert view(m, now).answered == ("upnp",)
    assert m.counters["pcp-requests"] + m.counters["natpmp-requests"] == 6
    m.handle_timer(now + RETRY_AFTER)
    pcp_reqs, natpmp_reqs = split(sent(m))
    assert m.protocol == "pcp" and len(pcp_reqs) == 1 and len(natpmp_reqs) == 2
    assert [w.action for w in wants(m)[0]] == ["add"]


def test_an_unanswered_upnp_search_is_given_up() -> None:
    m = PortMapper("auto", rng=rng, internal_port=51820)
    m.start(GW, ME, 0.0)
    run_until(m, 0.0, 20.0)
    assert m.state == "failed" and PortMapFailed("upnp", "no-answer") in wants(m)[1]


def test_upnp_maps_and_renews() -> None:
    m = PortMapper("upnp", rng=rng, internal_port=51820)
    m.start(None, None, 0.0)  # UPnP needs no default route of ours (SSDP finds the IGD)
    [want] = m.pop_events()
    assert isinstance(want, UpnpWanted)
    m.upnp_done(want.token, 1.0, found=True, external=(EXT, 51820), lifetime=3600)
    assert m.mapping is not None and m.mapping.external == (EXT, 51820)
    m.handle_timer(1.0 + 1800)
    events = m.pop_events()
    assert [type(e) for e in events] == [MappingChanged, UpnpWanted]
    renew = events[1]
    assert isinstance(renew, UpnpWanted) and renew.external_port == 51820
    m.handle_timer(1.0 + 1800 + 15)  # the renewal got no answer: again half way to expiry
    assert m.mapping is not None
    m.stop(1900.0)
    assert [e.action for e in m.pop_events() if isinstance(e, UpnpWanted)] == ["delete"]


def test_permanent_upnp_lease_is_checked_hourly() -> None:
    m = PortMapper("upnp", rng=rng, internal_port=51820)
    m.start(None, None, 0.0)
    [want] = m.pop_events()
    m.upnp_done(want.token, 0.0, found=True, external=(EXT, 51820), lifetime=0)
    assert m.mapping is not None and m.mapping.expires is None and m.get_timer() == 3600.0
    assert view(m, 0.0).expires_in is None


def test_a_renewal_without_answer_loses_the_mapping_at_expiry() -> None:
    m = PortMapper("pcp", rng=rng, internal_port=51820)
    m.start(GW, ME, 0.0)
    [req] = sent(m)
    m.receive(pcp_answer(req, lifetime=120), GW, 0.0)
    m.pop_events()
    now, out = run_until(m, 0.0, 119.9)
    assert len(out) >= 4 and all(r[24:36] == req[24:36] for r in out)  # 60, 63, 69, 81, 105 s
    assert m.mapping is not None
    m.handle_timer(120.0)
    assert MappingChanged(None, "expired") in m.pop_events()
    assert m.state == "probing" and len(sent(m)) == 1 and m.counters["expired"] == 1


def test_explicit_natpmp_follows_rfc_6886_schedule() -> None:
    m = PortMapper("natpmp", rng=rng, internal_port=51820)
    m.start(GW, ME, 0.0)
    times, now = [0.0], 0.0
    sent(m)
    while m.state == "probing":
        now = m.get_timer()  # type: ignore[assignment]
        m.handle_timer(now)
        if sent(m):
            times.append(now)
    # §3.1: 250 ms, doubling, nine requests; given up after the ninth's 64 s
    assert times == [0.0, 0.25, 0.75, 1.75, 3.75, 7.75, 15.75, 31.75, 63.75]
    assert now == pytest.approx(127.75) and m.state == "failed"


def test_explicit_pcp_follows_rfc_6887_schedule() -> None:
    m = PortMapper("pcp", rng=lambda n: b"\x7f\xff" if n == 2 else rng(n), internal_port=51820)  # RAND ~ 0
    m.start(GW, ME, 0.0)
    sent(m)
    gaps = []
    now = 0.0
    for _ in range(5):
        t = m.get_timer()
        assert t is not None
        gaps.append(round(t - now, 2))
        now = t
        m.handle_timer(now)
        sent(m)
    assert gaps == [3.0, 6.0, 12.0, 24.0, 48.0]  # IRT 3 s, doubling (§8.1.1)


@pytest.mark.parametrize("result,name", [(2, "not-authorized"), (8, "no-resources"), (99, "result-99")])
def test_pcp_error_results_end_the_attempt_and_are_counted(result: int, name: str) -> None:
    m = PortMapper("auto", rng=rng, internal_port=51820)
    m.start(GW, ME, 0.0)
    [req], _ = split(sent(m))
    assert m.receive(pcp_answer(req, result=result), GW, 0.0)
    assert m.counters[f"pcp-{name}"] == 1 and m.protocol == "natpmp"
    assert PortMapFailed("pcp", name) in m.pop_events()


def test_natpmp_error_result_ends_the_attempt() -> None:
    m = PortMapper("natpmp", rng=rng, internal_port=51820)
    m.start(GW, ME, 0.0)
    reqs = sent(m)
    assert m.receive(natpmp_answers(reqs, result=3)[1], GW, 0.0)
    assert m.counters["natpmp-network-failure"] == 1 and m.state == "failed"


def test_forged_and_broken_answers_are_dropped_and_counted() -> None:
    m = PortMapper("auto", rng=rng, internal_port=51820)
    m.start(GW, ME, 0.0)
    [req], _ = split(sent(m))
    good = pcp_answer(req)
    assert not m.receive(good, ("10.1.0.9", 5351), 0.0)  # not the gateway
    assert not m.receive(good, ("10.1.0.1", 5350), 0.0)  # not its port 5351
    assert not m.receive(pcp_answer(req, nonce=bytes(12)), GW, 0.0)  # another nonce
    assert not m.receive(good[:-4], GW, 0.0)  # wrong size
    assert not m.receive(good + b"\0", GW, 0.0)
    assert not m.receive(b"\x02\x80" + good[2:24], GW, 0.0)  # ANNOUNCE: not what we asked
    assert m.counters == {"pcp-requests": 1, "natpmp-requests": 1, "not-gateway": 2, "wrong-nonce": 1,
                          "malformed": 2, "unexpected": 1}
    assert m.mapping is None and m.protocol == "pcp"
    assert m.receive(good, GW, 0.0) and m.mapping is not None
    assert not m.receive(good, GW, 0.1)  # a duplicate: no request open
    assert m.counters["unexpected"] == 2


def test_natpmp_answer_for_another_port_and_short_lifetimes() -> None:
    m = PortMapper("natpmp", rng=rng, internal_port=51820)
    m.start(GW, ME, 0.0)
    reqs = sent(m)
    ext, mapped = natpmp_answers(reqs, lifetime=5)
    assert not m.receive(mapped[:8] + b"\x00\x01" + mapped[10:], GW, 0.0)  # internal port 1
    assert m.counters["wrong-port"] == 1
    assert m.receive(ext, GW, 0.0) and m.mapping is None  # the address alone is not a mapping
    assert m.receive(mapped, GW, 0.0)
    assert m.mapping is None and m.counters["lifetime-too-short"] == 1  # 5 s: refused, no renewal storm


def test_gateway_restart_is_noticed_from_its_epoch() -> None:
    m = PortMapper("pcp", rng=rng, internal_port=51820)
    m.start(GW, ME, 0.0)
    [req] = sent(m)
    m.receive(pcp_answer(req, epoch=1000), GW, 0.0)
    _, [renew] = run_until(m, 0.0, LIFETIME / 2)
    m.receive(pcp_answer(renew, epoch=3), GW, LIFETIME / 2)  # the epoch went back: it restarted
    assert m.counters["gateway-restarted"] == 1 and m.mapping is not None


def test_network_change() -> None:
    m = PortMapper("auto", rng=rng, internal_port=51820)
    m.start(GW, ME, 0.0)
    [req], _ = split(sent(m))
    m.receive(pcp_answer(req), GW, 0.0)
    m.pop_events()
    m.network_changed(GW, ME, 10.0)  # the same network: renew at once, nothing lost
    [renew] = sent(m)
    assert renew[24:36] == req[24:36] and m.mapping is not None and m.pop_events() == []
    m.network_changed(("10.7.0.1", 5351), "10.7.0.2", 11.0)  # another network: lost, searched again
    assert wants(m)[1] == [MappingChanged(None, "network-changed")]
    [new] = [d for d, a in m.datagrams_to_send() if a == ("10.7.0.1", 5351) and d[0] == 2]
    assert new[8:24] == bytes(10) + b"\xff\xff" + bytes([10, 7, 0, 2])  # the new source address (§8.1)
    m.network_changed(None, None, 12.0)  # no default route at all
    assert m.state == "no-gateway" and m.get_timer() is None


def test_listen_port_change_deletes_the_old_mapping_and_maps_the_new_port() -> None:
    m = PortMapper("pcp", rng=rng, internal_port=51820)
    m.start(GW, ME, 0.0)
    [req] = sent(m)
    m.receive(pcp_answer(req), GW, 0.0)
    m.pop_events()
    m.set_internal_port(51821, 5.0)
    delete, new = sent(m)
    assert struct.unpack_from("!IH", delete, 4)[0] == 0 and struct.unpack_from("!H", delete, 40)[0] == 51820
    assert struct.unpack_from("!H", new, 40)[0] == 51821
    assert m.pop_events() == [MappingChanged(None, "port-changed")]


def test_stop_while_asking_deletes_what_may_have_been_made() -> None:
    m = PortMapper("auto", rng=rng, internal_port=51820)
    m.start(GW, ME, 0.0)
    [req], _ = split(sent(m))
    wants(m)
    m.stop(0.1)
    [delete], natpmp_deletes = split(sent(m))
    assert delete[24:36] == req[24:36] and struct.unpack_from("!I", delete, 4)[0] == 0
    assert natpmp_deletes == [natpmp.map_request(51820, 0, 0)]
    [upnp_delete], _ = wants(m)
    assert (upnp_delete.action, upnp_delete.external_port) == ("delete", 51820)
    assert m.state == "stopped"


def test_off_does_nothing_and_bad_arguments_are_refused() -> None:
    m = PortMapper("off", rng=rng, internal_port=51820)
    m.start(GW, ME, 0.0)
    m.handle_timer(100.0)
    assert m.datagrams_to_send() == [] and m.get_timer() is None and m.state == "off"
    with pytest.raises(LocalError):
        PortMapper("igd", rng=rng, internal_port=51820)
    with pytest.raises(LocalError):
        PortMapper("auto", rng=rng, internal_port=0)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=80), max_size=8), st.sampled_from(["pcp", "natpmp", "auto"]))
def test_any_bytes_from_the_gateway_never_raise(garbage: list[bytes], mode: str) -> None:
    m = PortMapper(mode, rng=rng, internal_port=51820)
    m.start(GW, ME, 0.0)
    for i, data in enumerate(garbage):
        m.receive(data, GW, i * 0.1)
        m.handle_timer(i * 0.1)
    assert len(m.datagrams_to_send()) <= 2 * (len(garbage) + 2)


@pytest.mark.parametrize("ext,port,why", [
    ("0.0.0.0", 40000, "bad-external-address"), ("127.0.0.1", 40000, "bad-external-address"),
    ("224.0.0.1", 40000, "bad-external-address"), ("203.0.113.1", 0, "bad-external-port"),
    ("not an address", 40000, "bad-external-address"),
])
def test_a_success_with_an_unusable_external_address_is_a_failure(ext: str, port: int, why: str) -> None:
    m = PortMapper("upnp", rng=rng, internal_port=51820)
    m.start(None, None, 0.0)
    [want] = m.pop_events()
    m.upnp_done(want.token, 0.0, found=True, external=(ext, port), lifetime=3600)
    assert m.mapping is None and m.counters[why] == 1 and m.state == "failed"
    assert PortMapFailed("upnp", why) in m.pop_events()


def test_pcp_success_with_address_zero_is_a_failure() -> None:
    m = PortMapper("pcp", rng=rng, internal_port=51820)
    m.start(GW, ME, 0.0)
    [req] = sent(m)
    answer = pcp_answer(req)
    assert m.receive(answer[:-4] + bytes(4), GW, 0.0)  # ::ffff:0.0.0.0
    assert m.mapping is None and m.counters["bad-external-address"] == 1


def test_a_private_external_address_is_published() -> None:
    """A router behind another NAT (RFC 6598 carrier-grade space here) is used like any other."""
    m = PortMapper("upnp", rng=rng, internal_port=51820)
    m.start(None, None, 0.0)
    [want] = m.pop_events()
    m.upnp_done(want.token, 0.0, found=True, external=("100.64.0.9", 51820), lifetime=3600)
    assert m.mapping is not None and m.mapping.external == ("100.64.0.9", 51820)


# --- GatewayProbe: who answers, nothing mapped (wgdisco netcheck) ---------------------------

def probe_until(p: GatewayProbe, until: float) -> list[tuple[float, bytes]]:
    """Step the fake clock from deadline to deadline (proto/core.py run_timers); (time, datagram)."""
    from wgdisco.proto.core import run_timers

    out, now = [], 0.0
    while True:
        out += [(now, data) for data, addr in p.datagrams_to_send() if addr == GW]
        deadline = run_timers(p, now)
        out += [(now, data) for data, addr in p.datagrams_to_send() if addr == GW]
        if deadline is None or deadline > until:
            return out
        now = deadline


def test_gateway_probe_asks_three_times_then_gives_up() -> None:
    p = GatewayProbe(GW, ME, wait=1.0)
    p.start(0.0)
    sent = probe_until(p, 10.0)
    announce, external = pcp.announce_request(ME), natpmp.external_address_request()
    assert sent == [(t, d) for t in (0.0, 0.25, 0.5) for d in (announce, external)]
    assert p.done and (p.pcp, p.natpmp, p.natpmp_external) == (False, False, None)
    assert p.next_deadline() is None


def test_gateway_probe_stops_asking_who_answered_and_ignores_strangers() -> None:
    p = GatewayProbe(GW, ME, wait=1.0)
    p.start(0.0)
    assert len(p.datagrams_to_send()) == 2
    announce = struct.pack("!BBBBII", 2, 0x80, 0, 0, 0, 9) + bytes(12)
    external = struct.pack("!BBHI", 0, 128, 0, 9) + bytes([203, 0, 113, 1])
    p.receive(announce, ("10.1.0.9", 5351), 0.1)  # not the gateway
    p.receive(b"", GW, 0.1)
    p.receive(b"\x02garbage", GW, 0.1)
    assert (p.pcp, p.natpmp) == (False, False)
    p.receive(announce, GW, 0.1)
    assert p.pcp and not p.done
    p.handle_timer(0.25)
    assert p.datagrams_to_send() == [(natpmp.external_address_request(), GW)]  # PCP answered: not asked again
    p.receive(external, GW, 0.3)
    assert p.done and (p.natpmp, p.natpmp_external) == (True, "203.0.113.1") and p.next_deadline() is None
