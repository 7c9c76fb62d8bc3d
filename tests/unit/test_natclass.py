"""RFC 5780 classification tests (proto/natclass.py) driven by hand-made STUN answers."""

from __future__ import annotations

from aioice.stun import Class, Message, Method, parse_message

from tests.unit.test_device import Rng
from wgdisco.proto.natclass import CHANGE_IP, CHANGE_PORT, NatClassifier

SERVER, ALT = ("192.0.2.1", 3478), ("192.0.2.2", 3479)
MAPPED = ("203.0.113.1", 40000)


def classifier() -> tuple[NatClassifier, dict[str, tuple[bytes, tuple]]]:
    c = NatClassifier(rng=Rng(1), addr_of=lambda ip, port: (ip, port))
    assert c.start(SERVER, SERVER[0], MAPPED, ALT, 0.0)
    return c, requests(c)


def requests(c: NatClassifier) -> dict[str, tuple[bytes, tuple]]:
    out = {}
    for data, addr in c.datagrams_to_send():
        msg = parse_message(data)
        change = msg.attributes.get("CHANGE-REQUEST")
        name = {CHANGE_IP | CHANGE_PORT: "ip+port", CHANGE_PORT: "port", None: "mapping"}[change]
        out[name] = (msg.transaction_id, addr)
    return out


def answer(txid: bytes, mapped: tuple = MAPPED, error: bool = False) -> bytes:
    msg = Message(Method.BINDING, Class.ERROR if error else Class.RESPONSE, transaction_id=txid,
                  attributes={} if error else {"XOR-MAPPED-ADDRESS": mapped})
    return bytes(msg)


def finish(c: NatClassifier, t: float = 0.0) -> None:
    while not c.done:
        t = c.get_timer() or t
        c.handle_timer(t)


def test_filtering_tests_run_first_and_the_mapping_test_after_them() -> None:
    c, sent = classifier()
    assert set(sent) == {"ip+port", "port"} and sent["ip+port"][1] == SERVER
    c.handle_timer(0.5)
    assert set(requests(c)) == {"ip+port", "port"}  # retransmitted, nothing else yet
    c.handle_timer(1.0)
    assert set(requests(c)) == {"ip+port", "port"} and c.get_timer() == 2.0  # three sends, then the wait
    c.handle_timer(2.0)  # no answers: address-and-port-dependent filtering; now the mapping test
    phase2 = requests(c)
    assert c.filtering == "address-and-port-dependent" and not c.done
    assert set(phase2) == {"mapping"} and phase2["mapping"][1] == ("192.0.2.1", 3479)
    assert c.receive(answer(phase2["mapping"][0], ("203.0.113.1", 40001)), ("192.0.2.1", 3479), 2.1)
    assert c.done and c.mapping == "address-and-port-dependent"


def test_an_answer_from_the_other_address_means_endpoint_independent_filtering() -> None:
    c, sent = classifier()
    assert c.receive(answer(sent["ip+port"][0]), ALT, 0.1)
    c.receive(answer(sent["port"][0]), ("192.0.2.1", 3479), 0.1)
    assert c.filtering == "endpoint-independent"
    [(data, _addr)] = c.datagrams_to_send()
    c.receive(answer(parse_message(data).transaction_id), ("192.0.2.1", 3479), 0.2)
    assert c.done and c.mapping == "address-dependent"  # the same mapped address: not per port


def test_change_port_only_means_address_dependent_filtering() -> None:
    c, sent = classifier()
    c.receive(answer(sent["port"][0]), ("192.0.2.1", 3479), 0.1)
    finish(c)
    assert c.filtering == "address-dependent" and c.mapping is None  # the mapping test got no answer


def test_a_server_that_ignores_change_request_leaves_filtering_unknown() -> None:
    c, sent = classifier()
    c.receive(answer(sent["ip+port"][0]), SERVER, 0.1)  # from where we sent: CHANGE-REQUEST ignored
    c.receive(answer(sent["port"][0], error=True), SERVER, 0.1)  # 420
    finish(c)
    assert c.filtering == "unknown"


def test_strangers_and_garbage_are_not_answers() -> None:
    c, sent = classifier()
    assert not c.receive(b"\x00\x01garbage", ALT, 0.1)
    assert not c.receive(answer(b"x" * 12), ALT, 0.1)
    finish(c)
    assert c.filtering == "address-and-port-dependent"
