"""Every parser the network or a user reaches, fed random and mutated input (bounded hypothesis
runs, a few seconds in all): each raises only its documented error, or nothing, and leaves the
core usable (issue 17, "Keep the checks in the project")."""

from __future__ import annotations

import ipaddress
import os
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wgdisco import config
from wgdisco.errors import ConfigError, DecodeError
from wgdisco.proto import keys, noise, records, uapi
from wgdisco.proto.classify import classify
from wgdisco.proto.device import Device
from wgdisco.proto.node import Node
from wgdisco.proto.probe import Prober
from wgdisco.proto.stun import StunClient, binding_request

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SECRET = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="


def mutations(seed: bytes) -> st.SearchStrategy[bytes]:
    """``seed`` with bytes flipped, cut short or extended: near-valid input reaches deep code."""
    def mutate(data: bytes, flips: list[tuple[int, int]], cut: int, tail: bytes) -> bytes:
        out = bytearray(data)
        for pos, value in flips:
            out[pos % len(out)] = value
        return bytes(out[: max(1, len(out) - cut)]) + tail
    return st.builds(mutate, st.just(seed), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                                                      max_size=6),
                     st.integers(0, 8), st.binary(max_size=8))


def device(seed: int = 1) -> Device:
    rng = lambda n: os.urandom(n)  # noqa: E731
    return Device(keys.clamp(bytes([seed]) * 32), rng=rng, now=0.0)


RESPONDER = device(1)
PEER = device(2)
RESPONDER.add_peer(PEER.identity.public)
_init_peer = PEER.add_peer(RESPONDER.identity.public)
PEER.set_endpoint(_init_peer, ("192.0.2.1", 51820))
PEER.send_handshake_initiation(_init_peer, 0.0, is_retry=False)
INITIATION = PEER.datagrams_to_send()[0][0]


def outcome(responder: Device, data: bytes, now: float) -> tuple[int, int, list[bytes]]:
    """Feed one datagram; (drops counted, cookie replies counted, handshake responses sent) for it."""
    drops, cookies = sum(responder.drops.values()), responder.counters.get("cookie-replies-sent", 0)
    assert responder.receive_datagram(data, ("192.0.2.9", 4000), now) is None  # nothing decrypts
    responses = [d for d, _ in responder.datagrams_to_send() if d[0] == 2]
    return (sum(responder.drops.values()) - drops, responder.counters.get("cookie-replies-sent", 0) - cookies,
            responses)


def assert_accounted(responder: Device, data: bytes, now: float, genuine: bytes) -> None:
    """Exactly one of: counted as a drop, answered with a counted cookie reply, or (only the genuine
    initiation ``genuine``, mac2 aside) answered with a handshake response. Never raised, never silent."""
    dropped, cookie, responses = outcome(responder, data, now)
    assert dropped + cookie + len(responses) == 1, (data.hex(), dropped, cookie, len(responses))
    if responses:  # mac1 covers bytes 0..116: only the peer's own initiation gets this far
        assert data[:116] == genuine[:116] and len(responses[0]) == noise.MESSAGE_RESPONSE_SIZE


@FUZZ
@given(st.one_of(st.binary(max_size=200), mutations(INITIATION), mutations(b"\x04\x00\x00\x00" + bytes(40))))
def test_wireguard_datagrams(data: bytes) -> None:
    assert_accounted(RESPONDER, data, 1.0, INITIATION)
    assert classify(data) in (0, 1, 2, 3)


@FUZZ
@given(st.one_of(st.binary(max_size=120), mutations(binding_request(bytes(12)))))
def test_stun_datagrams(data: bytes) -> None:
    client = StunClient([("192.0.2.3", 3478)], rng=os.urandom)
    client.start(0.0)
    answered = client.receive(data, ("192.0.2.3", 3478), 0.1)  # never raises: counted
    c = client.counters
    assert answered or c.malformed + c.not_response + c.unknown_transaction + c.wrong_source == 1
    client.handle_timer(1.0)


PROBER = Prober(RESPONDER.identity.private, RESPONDER.identity.public, [PEER.identity.public],
                rng=os.urandom, wall=1.7e9)
PEER_PROBER = Prober(PEER.identity.private, PEER.identity.public, [RESPONDER.identity.public],
                     rng=os.urandom, wall=1.7e9)
PROBE = PEER_PROBER.request(RESPONDER.identity.public, ("192.0.2.1", 51820), 0.0)


@FUZZ
@given(st.one_of(st.binary(max_size=120), mutations(PROBE)))
def test_probe_datagrams(data: bytes) -> None:
    drops = sum(PROBER.drops.values())
    received = PROBER.receive(data, ("192.0.2.9", 4000), 0.5)
    counted = sum(PROBER.drops.values()) - drops
    # a drop is counted once, or the datagram authenticated (only then an event, maybe a reply)
    assert counted in (0, 1) and (counted == 1 or received.event is not None), (data.hex(), counted, received)
    assert received.reply is None or received.event is not None
    assert received.reply is None or len(received.reply) <= len(data)  # never an amplifier


LABEL = keys.key_to_base32(PEER.identity.public)
TXT = records.build_txt(records.ServiceRecord(PEER.identity.public, 51820, "wg-x.local.",
                                              [ipaddress.ip_address("10.0.0.2")],
                                              candidates=[(ipaddress.ip_address("10.0.0.2"), 51820)],
                                              txt_extra={"probe": "1", "nat": "easy"}))


@FUZZ
@given(st.lists(st.one_of(st.binary(max_size=80), st.sampled_from(TXT)), max_size=8),
       st.one_of(st.none(), st.integers(-5, 70000)),
       st.one_of(st.none(), st.text(max_size=30)),
       st.lists(st.one_of(st.text(max_size=40), st.sampled_from(["10.0.0.2", "fe80::1%2", "::1"])), max_size=4))
def test_records_as_dns_hands_them_over(txt: list[bytes], port: int | None, target: str | None,
                                        addresses: list[str]) -> None:
    try:
        sighting = records.record_from_dns(LABEL, port, target, addresses, txt)
    except DecodeError:
        return
    node = Node(device(3), rng=os.urandom, wall=1.7e9, addr_of=lambda ip, p: (ip, p), host_of=lambda a: a[0], port=1)
    node.add_peer(PEER.identity.public, 0.0)
    node.receive_sighting(sighting, "mdns", 0.0)  # never raises for what a record can say
    node.handle_timer(1.0)


@FUZZ
@given(st.one_of(st.text(max_size=300),
                 st.builds(lambda a, b: a + b, st.just(f"[Interface]\nPrivateKey = {SECRET}\n"), st.text(max_size=200))))
def test_config_text(text: str) -> None:
    try:
        config.parse(text, "fuzz.conf")
    except ConfigError as e:
        message = str(e)
        assert SECRET not in message and SECRET[:16] not in message  # never the key
        assert message.startswith("fuzz.conf")


@FUZZ
@given(st.one_of(st.binary(max_size=300),
                 st.builds(lambda a: b"set=1\n" + a + b"\n\n", st.binary(max_size=200)),
                 st.builds(lambda a: b"set=1\npublic_key=" + bytes(32).hex().encode() + b"\n" + a + b"\n\n",
                           st.binary(max_size=120))))
def test_uapi_requests(data: bytes) -> None:
    try:
        uapi.parse_request(data)
    except uapi.UapiError:
        pass


def corpus(seed: bytes, n: int, rng: random.Random) -> list[bytes]:
    """``n`` deterministic malformed datagrams: random bytes and mutations of ``seed`` (as mutations())."""
    out = []
    for _ in range(n):
        if rng.random() < 0.3:
            out.append(rng.randbytes(rng.randrange(201)))
            continue
        data = bytearray(seed)
        for _ in range(rng.randrange(1, 7)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        out.append(bytes(data[: max(1, len(data) - rng.randrange(9))]) + rng.randbytes(rng.randrange(9)))
    return out


def test_a_fuzzed_responder_still_completes_a_handshake() -> None:
    # its own responder, fuzzed here (no state shared with the tests above: this test runs alone too)
    responder, peer, fresh = device(5), device(6), device(7)
    responder.add_peer(peer.identity.public)
    p = peer.add_peer(responder.identity.public)
    peer.set_endpoint(p, ("192.0.2.1", 51820))
    peer.send_handshake_initiation(p, 0.0, is_retry=False)
    genuine = peer.datagrams_to_send()[0][0]
    rng = random.Random(22)
    for data in corpus(genuine, 1500, rng) + corpus(b"\x04\x00\x00\x00" + bytes(40), 500, rng):
        if data[:116] == genuine[:116]:
            continue  # the genuine initiation itself (mac2 aside) would be answered: not malformed
        assert_accounted(responder, data, 1.0, genuine)
    responder.add_peer(fresh.identity.public)
    q = fresh.add_peer(responder.identity.public)
    fresh.set_endpoint(q, ("192.0.2.4", 51820))
    fresh.send_handshake_initiation(q, 5.0, is_retry=False)
    init = fresh.datagrams_to_send()[0][0]
    assert len(init) == noise.MESSAGE_INITIATION_SIZE
    assert responder.receive_datagram(init, ("192.0.2.4", 51820), 5.0) is None
    responses = [d for d, _ in responder.datagrams_to_send() if len(d) == noise.MESSAGE_RESPONSE_SIZE]
    assert len(responses) == 1
    assert fresh.receive_datagram(responses[0], ("192.0.2.1", 51820), 5.0) is None
    assert q.current is not None  # the initiator holds a session: the responder's answer was genuine
