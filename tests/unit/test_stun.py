"""wgdisco.proto.stun: Binding transactions (RFC 5389) on a fake clock.

The client is joined to a fake server in memory.  Against real servers behind
NAT routers: tests/netns/test_stun_lab.py.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from aioice.stun import Class, Message, Method, parse_message
from hypothesis import given, settings
from hypothesis import strategies as st

from wgdisco.errors import DecodeError, LocalError
from wgdisco.proto.classify import STUN, classify
from wgdisco.proto.stun import (
    RC,
    REFRESH,
    RM,
    RTO,
    StunChanged,
    StunClient,
    StunFailed,
    StunMapped,
    binding_request,
    decode_message,
)

S1 = ("198.51.100.10", 3478)
S2 = ("198.51.100.11", 3478)
S1_ALT = ("198.51.100.10", 3479)  # same IP as S1, other port
S6 = ("2001:db8::10", 3478, 0, 0)  # an AF_INET6 socket address, opaque to the core
ME = ("203.0.113.7", 40000)
ME2 = ("203.0.113.7", 40001)


def counter_rng() -> Callable[[int], bytes]:
    """Deterministic and never repeating: a big-endian counter."""
    n = 0

    def rng(size: int) -> bytes:
        nonlocal n
        n += 1
        return n.to_bytes(size, "big")

    return rng


def client(servers: list = [S1], **kw) -> StunClient:  # noqa: B006 - never mutated
    return StunClient(servers, rng=counter_rng(), **kw)


def response(request: bytes, mapped: tuple | None, *, attr: str = "XOR-MAPPED-ADDRESS",
             cls: Class = Class.RESPONSE, fingerprint: bool = True, **attrs) -> bytes:
    """What a server answers to ``request``: the same transaction id, ``mapped`` in ``attr``."""
    req = parse_message(request)
    msg = Message(Method.BINDING, cls, transaction_id=req.transaction_id)
    if mapped is not None:
        msg.attributes[attr] = mapped
    msg.attributes.update(attrs)
    if fingerprint:
        msg.add_fingerprint()
    return bytes(msg)


def sent(c: StunClient) -> list[tuple[bytes, object]]:
    return c.datagrams_to_send()


def run_until(c: StunClient, end: float) -> list[tuple[float, bytes, object]]:
    """Fire every timer up to ``end`` exactly when due; (time, payload, addr) of each send."""
    out = []
    while (t := c.get_timer()) is not None and t <= end:
        c.handle_timer(t)
        out += [(t, data, addr) for data, addr in c.datagrams_to_send()]
    return out


# ------------------------------------------------------------------ the request


def test_binding_request_is_rfc5389_with_fingerprint() -> None:
    c = client()
    c.start(0.0)
    [(data, addr)] = sent(c)
    assert addr == S1 and classify(data) == STUN
    msg = parse_message(data)  # checks the FINGERPRINT CRC
    assert (msg.message_method, msg.message_class) == (Method.BINDING, Class.REQUEST)
    assert msg.transaction_id == (1).to_bytes(12, "big")  # 96 bits from rng
    assert list(msg.attributes) == ["FINGERPRINT"]
    assert len(data) == 28


def test_binding_request_without_fingerprint_is_a_bare_header() -> None:
    data = binding_request(b"\x07" * 12, fingerprint=False)
    assert data == b"\x00\x01\x00\x00\x21\x12\xa4\x42" + b"\x07" * 12
    with pytest.raises(LocalError):
        binding_request(b"\x07" * 16)
    assert parse_message(binding_request(b"\x07" * 12, software="wgdisco")).attributes["SOFTWARE"] == "wgdisco"


# --------------------------------------------------------- retransmission (§7.2.1)


def test_retransmission_schedule_is_rfc5389_example() -> None:
    # RFC 5389 §7.2.1: "requests would be sent at times 0 ms, 500 ms, 1500 ms, 3500 ms,
    # 7500 ms, 15500 ms, and 31500 ms. If the client has not received a response after
    # 39500 ms, the client will consider the transaction to have timed out."
    c = client(refresh=None)
    assert (RTO, RC, RM) == (0.5, 7, 16)
    c.start(0.0)
    first = sent(c)
    sends = [0.0] + [t for t, _, _ in run_until(c, 39.4)]
    assert sends == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert c.get_timer() == 39.5 and c.events == []
    c.handle_timer(39.5)
    assert c.events == [StunFailed(S1)] and sent(c) == []
    assert c.get_timer() is None  # no refresh: done
    assert (c.counters.sent, c.counters.retransmitted, c.counters.timeouts) == (1, 6, 1)
    assert first[0][0] == binding_request((1).to_bytes(12, "big"))  # retransmits reuse it


def test_retransmits_are_identical_requests() -> None:
    c = client(refresh=None)
    c.start(0.0)
    [(first, _)] = sent(c)
    assert {data for _, data, _ in run_until(c, 40.0)} == {first}


@pytest.mark.parametrize(
    "rto,rc,rm,sends,fail",
    [
        (0.5, 7, 16, [0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5], 39.5),
        (0.1, 3, 4, [0, 0.1, 0.3], 0.7),
        (1.0, 1, 2, [0], 2.0),
        (0.25, 2, 0, [0, 0.25], 0.25),
    ],
)
def test_retransmission_table(rto: float, rc: int, rm: int, sends: list[float], fail: float) -> None:
    c = client(rto=rto, rc=rc, rm=rm, refresh=None)
    c.start(0.0)
    sent(c)
    log = run_until(c, 100.0)
    assert [0.0] + [t for t, _, _ in log] == pytest.approx(sends)
    assert c.events == [StunFailed(S1)]
    assert c.counters.timeouts == 1


def test_failure_time_of_the_default_schedule_from_any_start() -> None:
    c = client(refresh=None)
    c.start(1000.0)
    sent(c)
    assert [t for t, _, _ in run_until(c, 2000.0)] == [1000.5, 1001.5, 1003.5, 1007.5, 1015.5, 1031.5]
    assert c.events == [StunFailed(S1)]


def test_early_timer_does_nothing_and_a_late_one_sends_once() -> None:
    c = client(refresh=None)
    c.start(0.0)
    sent(c)
    c.handle_timer(0.49)
    assert sent(c) == [] and c.get_timer() == 0.5
    c.handle_timer(5.0)  # the shell stalled past three deadlines: one retransmit, not a burst
    assert len(sent(c)) == 1
    assert c.get_timer() == 6.0  # the next interval (1 s) counts from the late send


def test_each_server_has_its_own_transaction() -> None:
    c = client([S1, S2], refresh=None)
    c.start(0.0)
    out = sent(c)
    assert [a for _, a in out] == [S1, S2]
    assert parse_message(out[0][0]).transaction_id != parse_message(out[1][0]).transaction_id
    assert c.receive(response(out[0][0], ME), S1, 0.2)
    assert [(t, a) for t, _, a in run_until(c, 1.6)] == [(0.5, S2), (1.5, S2)]


# ----------------------------------------------------------------- responses


def test_response_ends_the_transaction() -> None:
    c = client(refresh=None)
    c.start(0.0)
    [(req, _)] = sent(c)
    run_until(c, 1.5)  # two retransmits lost
    assert c.receive(response(req, ME), S1, 1.7)
    assert c.mapped == {S1: ME}
    assert c.events == [StunMapped(S1, ME)]
    assert c.get_timer() is None and run_until(c, 100.0) == []
    assert c.counters.answered == 1


def test_mapped_address_attribute_fallback_and_preference() -> None:
    for attrs, want in [
        ({"XOR-MAPPED-ADDRESS": ME}, ME),
        ({"MAPPED-ADDRESS": ME}, ME),  # RFC 3489 servers send only this
        ({"MAPPED-ADDRESS": ME2, "XOR-MAPPED-ADDRESS": ME}, ME),  # §15.2 XOR wins
    ]:
        c = client()
        c.start(0.0)
        [(req, _)] = sent(c)
        assert c.receive(response(req, None, **attrs), S1, 0.1)
        assert c.mapped[S1] == want


def test_xor_mapped_address_on_the_wire() -> None:
    # RFC 5769 §2.2 sample response: XOR-MAPPED-ADDRESS 192.0.2.1:32853, parsed through receive().
    txid = bytes.fromhex("b7e7a701bc34d686fa87dfae")
    c = StunClient([S1], rng=lambda n: txid, refresh=None)
    c.start(0.0)
    sample = bytes.fromhex(
        "0101003c2112a442b7e7a701bc34d686fa87dfae"
        "8022000b7465737420766563746f7220"  # SOFTWARE "test vector "
        "002000080001a147e112a643"  # XOR-MAPPED-ADDRESS
        "000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7"  # MESSAGE-INTEGRITY
        "80280004c07d4c96"  # FINGERPRINT
    )
    assert c.receive(sample, S1, 0.1)
    assert c.mapped == {S1: ("192.0.2.1", 32853)}


def test_ipv6_mapped_address_and_ipv6_server() -> None:
    c = client([S6])
    c.start(0.0)
    [(req, addr)] = sent(c)
    assert addr == S6
    got = ("2001:db8:1234:5678:11:2233:4455:6677", 32853)
    assert c.receive(response(req, got), S6, 0.1)
    assert c.mapped == {S6: got} and c.reflexive() == [got]
    c2 = client([S6])
    c2.start(0.0)
    [(req, _)] = sent(c2)
    assert c2.receive(response(req, ("2001:db8::1", 1), attr="MAPPED-ADDRESS"), S6, 0.1)
    assert c2.mapped[S6] == ("2001:db8::1", 1)


def test_mapped_ipv6_is_normalised() -> None:
    c = client()
    c.start(0.0)
    [(req, _)] = sent(c)
    c.receive(response(req, ("2001:0db8:0000::0001", 7)), S1, 0.1)
    assert c.mapped[S1] == ("2001:db8::1", 7)


def test_error_response_fails_the_transaction() -> None:
    c = client(refresh=None)
    c.start(0.0)
    [(req, _)] = sent(c)
    assert c.receive(response(req, None, cls=Class.ERROR, **{"ERROR-CODE": (400, "Bad Request")}), S1, 0.1)
    assert c.events == [StunFailed(S1)] and c.mapped == {}
    assert c.counters.error_responses == 1 and c.get_timer() is None


# ------------------------------------------------------------ what is ignored


def test_wrong_transaction_id_is_ignored_and_counted() -> None:
    c = client(refresh=None)
    c.start(0.0)
    [(req, _)] = sent(c)
    stranger = binding_request(b"\xee" * 12)
    assert not c.receive(response(stranger, ME), S1, 0.1)
    assert c.counters.unknown_transaction == 1 and c.mapped == {} and c.get_timer() == 0.5
    assert c.receive(response(req, ME), S1, 0.2)


def test_wrong_source_is_ignored_and_counted() -> None:
    c = client([S1, S2], refresh=None)
    c.start(0.0)
    [(req1, _), _] = sent(c)
    for liar in [S2, ("198.51.100.10", 3479), ("198.51.100.99", 3478)]:
        assert not c.receive(response(req1, ME), liar, 0.1)
    assert c.counters.wrong_source == 3 and c.mapped == {}
    assert c.receive(response(req1, ME), S1, 0.2)  # the transaction is still open


def test_late_duplicate_is_ignored() -> None:
    c = client(refresh=None)
    c.start(0.0)
    [(req, _)] = sent(c)
    run_until(c, 0.5)
    assert c.receive(response(req, ME), S1, 0.6)
    assert not c.receive(response(req, ME2), S1, 0.7)  # the answer to the retransmit
    assert c.mapped == {S1: ME} and c.counters.unknown_transaction == 1 and len(c.events) == 1


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"\x01\x01\x00\x00\x21\x12\xa4\x42",  # short header
        b"\x01\x01\x00\x08\x21\x12\xa4\x42" + bytes(12),  # length beyond the datagram
        b"\x01\x01\x00\x04\x21\x12\xa4\x42" + bytes(12) + b"\x00\x20\x00\x08",  # truncated attribute
        b"\x01\x01\x00\x08\x21\x12\xa4\x42" + bytes(12) + b"\x00\x20\x00\x04" + bytes(4),  # short address
        b"\x01\x01\x00\x0c\x21\x12\xa4\x42" + bytes(12) + b"\x00\x20\x00\x08\x00\x03" + bytes(6),  # family 3
        b"\x01\x01\x00\x08\x21\x12\xa4\x42" + bytes(12) + b"\x80\x28\x00\x04" + bytes(4),  # bad FINGERPRINT
        b"\x01\x01\x00\x08\x21\x12\xa4\x42" + bytes(12) + b"\x80\x28\x00\x02" + bytes(4),  # short FINGERPRINT
        b"\x01\x01\x00\x08\x21\x12\xa4\x42" + bytes(12) + b"\x80\x22\x00\x02\xff\xfe\x00\x00",  # SOFTWARE not UTF-8
        b"\x0f\xef\x00\x00\x21\x12\xa4\x42" + bytes(12),  # unknown method
        b"\xff" * 64,
    ],
)
def test_garbage_is_counted_never_raised(garbage: bytes) -> None:
    c = client(refresh=None)
    c.start(0.0)
    sent(c)
    assert not c.receive(garbage, S1, 0.1)
    assert c.counters.malformed == 1 and c.mapped == {} and c.events == []
    with pytest.raises(DecodeError):
        decode_message(garbage)


def test_requests_indications_and_addressless_answers_are_ignored() -> None:
    c = client(refresh=None)
    c.start(0.0)
    [(req, _)] = sent(c)
    assert not c.receive(req, S1, 0.1)  # our own request reflected back
    assert not c.receive(response(req, ME, cls=Class.INDICATION), S1, 0.1)
    assert c.counters.not_response == 2
    assert not c.receive(response(req, None), S1, 0.1)  # success without any mapped address
    txid = parse_message(req).transaction_id
    alloc = bytes(Message(Method.ALLOCATE, Class.RESPONSE, transaction_id=txid, attributes={"XOR-MAPPED-ADDRESS": ME}))
    assert not c.receive(alloc, S1, 0.1)  # our id, wrong method
    assert c.counters.malformed == 2 and c.mapped == {}
    assert c.receive(response(req, ME), S1, 0.2)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=120))
def test_receive_never_raises_on_random_bytes(data: bytes) -> None:
    c = client(refresh=None)
    c.start(0.0)
    sent(c)
    header = b"\x01\x01" + len(data).to_bytes(2, "big") + b"\x21\x12\xa4\x42" + (1).to_bytes(12, "big")
    for candidate in (data, header[:2] + data[:2] + header[4:] + data[2:], header + data):
        assert c.receive(candidate, S1, 0.1) in (True, False)


@settings(max_examples=300, deadline=None)
@given(pos=st.integers(min_value=0, max_value=43), value=st.integers(min_value=0, max_value=255))
def test_receive_never_raises_on_mutated_answers(pos: int, value: int) -> None:
    c = client(refresh=None)
    c.start(0.0)
    [(req, _)] = sent(c)
    # no FINGERPRINT, so that a flipped byte reaches the attribute decoders
    good = bytearray(response(req, ME, fingerprint=False, **{"MAPPED-ADDRESS": ME}))
    assert len(good) == 20 + 12 + 12
    good[pos] = value
    got = c.receive(bytes(good), S1, 0.1)
    assert got in (True, False)
    if got and c.mapped:
        assert c.mapped[S1][0].count(".") == 3


# ---------------------------------------------------- refresh and change detection


def test_refresh_keeps_asking_and_reports_changes() -> None:
    c = client(refresh=25.0)
    assert REFRESH == 25.0
    c.start(0.0)
    [(req, _)] = sent(c)
    c.receive(response(req, ME), S1, 0.1)
    assert c.pop_events() == [StunMapped(S1, ME)]
    assert c.get_timer() == pytest.approx(25.1)
    c.handle_timer(c.get_timer())
    [(req2, addr)] = sent(c)
    assert addr == S1 and parse_message(req2).transaction_id != parse_message(req).transaction_id
    assert not c.receive(response(req, ME), S1, 25.2)  # the old id is finished
    c.receive(response(req2, ME), S1, 25.2)
    assert c.pop_events() == [] and c.mapped == {S1: ME}  # same answer: nothing to say
    assert c.get_timer() == pytest.approx(50.2)
    c.handle_timer(c.get_timer())
    [(req3, _)] = sent(c)
    c.receive(response(req3, ME2), S1, 50.3)
    assert c.pop_events() == [StunChanged(S1, ME, ME2)]
    assert c.mapped == {S1: ME2} and c.reflexive() == [ME2]


def test_failure_then_recovery_is_retried_at_the_refresh_interval() -> None:
    c = client(refresh=25.0)
    c.start(0.0)
    [(req, _)] = sent(c)
    c.receive(response(req, ME), S1, 0.1)
    assert c.pop_events() == [StunMapped(S1, ME)]
    assert [t for t, _, _ in run_until(c, 25.2)] == [pytest.approx(25.1)]  # the refresh goes out ...
    log = run_until(c, 64.5)  # ... and is lost
    assert [t for t, _, _ in log] == pytest.approx([25.6, 26.6, 28.6, 32.6, 40.6, 56.6])
    assert c.mapped == {S1: ME}  # the last answer stands while the refresh is open
    assert c.get_timer() == pytest.approx(64.6)
    c.handle_timer(c.get_timer())
    assert c.pop_events() == [StunFailed(S1)] and c.mapped == {}
    assert c.mapping_behaviour() == "unknown" and c.reflexive() == []
    assert c.get_timer() == pytest.approx(89.6)
    c.handle_timer(c.get_timer())
    [(req, _)] = sent(c)
    c.receive(response(req, ME2), S1, 90.0)
    assert c.pop_events() == [StunChanged(S1, ME, ME2)]  # compared with the last answer ever seen


def test_restart_forgets_and_asks_again_at_once() -> None:
    c = client([S1, S2], refresh=25.0)
    c.start(0.0)
    r1, r2 = sent(c)
    c.receive(response(r1[0], ME), S1, 0.1)
    c.pop_events()
    c.restart(3.0)  # network change while S2's transaction is open
    n1, n2 = sent(c)
    assert (n1[1], n2[1]) == (S1, S2) and c.mapped == {}
    assert not c.receive(response(r2[0], ME), S2, 3.1)  # an answer from the old network
    assert c.counters.unknown_transaction == 1
    c.receive(response(n1[0], ME2), S1, 3.1)
    c.receive(response(n2[0], ME2), S2, 3.1)
    assert c.pop_events() == [StunChanged(S1, ME, ME2), StunMapped(S2, ME2)]
    assert c.get_timer() == pytest.approx(28.1)


def test_restart_before_start_starts() -> None:
    c = client()
    c.restart(1.0)
    assert len(sent(c)) == 1 and c.get_timer() == 1.5


# ------------------------------------------------------------- mapping behaviour


def answered(servers: list, answers: list) -> StunClient:
    c = client(servers, refresh=None)
    c.start(0.0)
    for (req, server), got in zip(sent(c), answers):
        if got is not None:
            c.receive(response(req, got), server, 0.1)
    return c


V6 = ("2001:db8::7", 40000)


@pytest.mark.parametrize(
    "servers,answers,behaviour",
    [
        ([], [], "unknown"),
        ([S1], [ME], "unknown"),
        ([S1, S2], [ME, None], "unknown"),  # one failed
        ([S1, S2], [ME, ME], "endpoint-independent"),
        ([S1, S2], [ME, ME2], "endpoint-dependent"),  # hard NAT: port per destination
        ([S1, S2], [ME, ("203.0.113.8", 40000)], "endpoint-dependent"),  # other IP (pooling)
        ([S1, S1_ALT], [ME, ME], "unknown"),  # same IP: address-dependent not ruled out
        ([S1, S1_ALT], [ME, ME2], "endpoint-dependent"),  # address-and-port-dependent
        ([S1, S1_ALT, S2], [ME, ME, ME], "endpoint-independent"),
        ([S1, S1_ALT, S2], [ME, ME, ME2], "endpoint-dependent"),
        ([S1, S2, S6], [ME, None, V6], "unknown"),  # families are not compared
        ([S1, S2, S6], [ME, ME, V6], "endpoint-independent"),
    ],
)
def test_mapping_behaviour_table(servers: list, answers: list, behaviour: str) -> None:
    assert answered(servers, answers).mapping_behaviour() == behaviour


def test_reflexive_is_deduplicated_in_server_order() -> None:
    c = answered([S1, S2, S1_ALT, S6], [ME2, ME, ME2, V6])
    assert c.reflexive() == [ME2, ME, V6]


# ---------------------------------------------------------------- API misuse


def test_api_misuse_is_a_local_error() -> None:
    with pytest.raises(LocalError):
        client([S1, S1])
    with pytest.raises(LocalError):
        client(rto=0)
    with pytest.raises(LocalError):
        client(rc=0)
    with pytest.raises(LocalError):
        client(refresh=0)
    c = client()
    c.start(0.0)
    with pytest.raises(LocalError):
        c.start(1.0)
    with pytest.raises(LocalError):
        StunClient([S1], rng=lambda n: b"short").start(0.0)
    same = StunClient([S1, S2], rng=lambda n: b"\x01" * n)
    with pytest.raises(LocalError):  # two live transactions cannot share an id
        same.start(0.0)


def test_nothing_happens_before_start() -> None:
    c = client()
    assert c.get_timer() is None and sent(c) == [] and c.mapping_behaviour() == "unknown"
    assert not c.receive(b"\x01\x01\x00\x00\x21\x12\xa4\x42" + bytes(12), S1, 0.0)
