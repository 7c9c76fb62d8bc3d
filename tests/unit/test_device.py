"""The device core: two devices joined in memory, stepped with a fake clock."""

from __future__ import annotations

import ipaddress
import random
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from wgdisco.proto import keys, noise
from wgdisco.proto.device import Device, GaveUp, HandshakeCompleted, Keypair
from wgdisco.proto.icmp import Unreachable
from wgdisco.proto.timers import Timing

A_ADDR = ("198.51.100.1", 51820)
B_ADDR = ("198.51.100.2", 51820)


def ipv4_packet(src: str, dst: str, payload: bytes = b"hello") -> bytes:
    total = 20 + len(payload)
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, 17, 0,
        ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed,
    )
    return header + payload


def ipv6_packet(src: str, dst: str, payload: bytes = b"hello6") -> bytes:
    header = struct.pack(
        "!IHBB16s16s", 6 << 28, len(payload), 17, 64,
        ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed,
    )
    return header + payload


class Rng:
    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    def __call__(self, n: int) -> bytes:
        return self.r.randbytes(n)


class Pair:
    """Devices A and B with each other as peers, and a wire between them."""

    def __init__(self, timing: Timing | None = None, *, endpoint_b: bool = True, **kw) -> None:
        self.now = 1000.0
        rng_a, rng_b = Rng(1), Rng(2)
        self.a = Device(keys.clamp(rng_a(32)), rng=rng_a, now=self.now, timing=timing, **kw)
        self.b = Device(keys.clamp(rng_b(32)), rng=rng_b, now=self.now, timing=timing, **kw)
        self.pa = self.a.add_peer(self.b.identity.public)  # A's view of B
        self.pb = self.b.add_peer(self.a.identity.public)  # B's view of A
        self.a.allowed_ips.insert(ipaddress.ip_network("10.0.0.2/32"), self.pa)
        self.a.allowed_ips.insert(ipaddress.ip_network("fd00::2/128"), self.pa)
        self.b.allowed_ips.insert(ipaddress.ip_network("10.0.0.1/32"), self.pb)
        self.b.allowed_ips.insert(ipaddress.ip_network("fd00::1/128"), self.pb)
        if endpoint_b:
            self.a.set_endpoint(self.pa, B_ADDR)
        self.addr = {"a": A_ADDR, "b": B_ADDR}
        self.delivered: dict[str, list[bytes]] = {"a": [], "b": []}
        self.lose = False

    def device(self, name: str) -> Device:
        return self.a if name == "a" else self.b

    def flush(self) -> int:
        """Carry every queued datagram to its destination until quiet; returns how many."""
        moved = 0
        for _ in range(50):
            progressed = False
            for name, other in (("a", "b"), ("b", "a")):
                for data, to in self.device(name).datagrams_to_send():
                    moved += 1
                    progressed = True
                    if self.lose:
                        continue
                    assert to == self.addr[other]
                    inner = self.device(other).receive_datagram(data, self.addr[name], self.now)
                    if inner is not None:
                        self.delivered[other].append(inner)
            if not progressed:
                return moved
        raise AssertionError("the wire never went quiet")

    def send(self, name: str, packet: bytes) -> None:
        dev = self.device(name)
        out = dev.send_packet(packet, self.now)
        if out is not None:
            dev.outbox.append(out)
        self.flush()

    def advance(self, seconds: float) -> None:
        """Step the clock through every timer deadline up to now + seconds."""
        end = self.now + seconds
        while True:
            deadlines = [t for t in (self.a.get_timer(), self.b.get_timer()) if t is not None and t <= end]
            if not deadlines:
                break
            self.now = max(self.now, min(deadlines))
            self.a.handle_timer(self.now)
            self.b.handle_timer(self.now)
            self.flush()
        self.now = end


def test_handshake_then_data_both_ways() -> None:
    p = Pair()
    pkt = ipv4_packet("10.0.0.1", "10.0.0.2")
    p.send("a", pkt)  # staged, initiation, response, keepalive carrying the staged packet
    assert p.delivered["b"] == [pkt]
    assert p.pa.current is not None and p.pa.current.is_initiator
    # B holds the session as `current` once A's first data arrived (§5.4.5)
    assert p.pb.current is not None and p.pb.next is None
    assert p.pb.last_handshake == p.now and p.pa.last_handshake == p.now
    back = ipv4_packet("10.0.0.2", "10.0.0.1", b"reply")
    p.send("b", back)
    assert p.delivered["a"] == [back]
    v6 = ipv6_packet("fd00::1", "fd00::2")
    p.send("a", v6)
    assert p.delivered["b"][-1] == v6
    assert p.pb.endpoint == A_ADDR  # learnt from the initiation (§2.1)
    assert p.a.drops == {} and p.b.drops == {}
    assert p.pa.tx_bytes > 0 and p.pb.rx_bytes == p.pa.tx_bytes


def test_transfer_counts_every_datagram_handshakes_included() -> None:
    # wg show transfer, as wireguard-go counts it: every datagram sent to or accepted from the
    # peer: after a handshake and one 84-byte packet each way, A sent 148 + 128 and got 92 + 128
    p = Pair()
    p.send("a", ipv4_packet("10.0.0.1", "10.0.0.2", b"x" * 64))  # 84 bytes inner -> 96 padded + 32
    p.send("b", ipv4_packet("10.0.0.2", "10.0.0.1", b"x" * 64))
    init, resp, data = noise.MESSAGE_INITIATION_SIZE, noise.MESSAGE_RESPONSE_SIZE, 96 + 32
    assert (p.pa.tx_bytes, p.pa.rx_bytes) == (init + data, resp + data)
    assert (p.pb.tx_bytes, p.pb.rx_bytes) == (resp + data, init + data)


def test_padding_to_multiple_of_16_and_trimmed_on_receive() -> None:
    p = Pair()
    pkt = ipv4_packet("10.0.0.1", "10.0.0.2", b"x" * 3)  # 23 bytes
    p.send("a", pkt)
    out = p.a.send_packet(pkt, p.now)
    assert out is not None
    assert len(out[0]) == 16 + 32 + 16  # header + 23 padded to 32 + tag
    assert p.b.receive_datagram(out[0], A_ADDR, p.now) == pkt


def test_replayed_datagram_is_dropped() -> None:
    p = Pair()
    p.send("a", ipv4_packet("10.0.0.1", "10.0.0.2"))
    data, _ = p.a.send_packet(ipv4_packet("10.0.0.1", "10.0.0.2"), p.now)  # type: ignore[misc]
    assert p.b.receive_datagram(data, A_ADDR, p.now) is not None
    assert p.b.receive_datagram(data, A_ADDR, p.now) is None
    assert p.b.drops == {"replay": 1}


def test_inner_source_must_be_in_allowed_ips() -> None:
    p = Pair()
    p.send("a", ipv4_packet("10.0.0.1", "10.0.0.2"))
    spoofed = ipv4_packet("10.0.0.99", "10.0.0.2")
    kp = p.pa.current
    assert kp is not None
    data, _ = p.a._encrypt(p.pa, kp, spoofed, p.now)
    assert p.b.receive_datagram(data, A_ADDR, p.now) is None
    assert p.b.drops == {"inner-source-not-allowed": 1}


def test_no_route_is_dropped_and_counted() -> None:
    p = Pair()
    assert p.a.send_packet(ipv4_packet("10.0.0.1", "10.9.9.9"), p.now) is None
    assert p.a.drops == {"no-route": 1} and p.a.outbox == []


def test_no_route_is_answered_with_icmp_when_the_shell_asks() -> None:
    """wireguard-linux device.c wg_xmit: no peer (-ENOKEY) or no endpoint (-EDESTADDRREQ) is
    answered with ICMP host / address unreachable, written back into TUN (proto/icmp.py)."""
    p = Pair(endpoint_b=False)
    p.a.unreachable = Unreachable()
    lost4 = ipv4_packet("10.0.0.1", "10.9.9.9")
    assert p.a.send_packet(lost4, p.now) is None
    assert p.a.send_packet(ipv6_packet("fd00::1", "fd00::99"), p.now) is None
    assert [(m[0] >> 4, m[20] if m[0] >> 4 == 4 else m[40]) for m in p.a.tun_out] == [(4, 3), (6, 1)]
    assert p.a.tun_out[0][28:] == lost4
    p.a.tun_out.clear()
    # B has no endpoint: answered too (the kernel), not staged, no handshake tried
    assert p.a.send_packet(ipv4_packet("10.0.0.1", "10.0.0.2"), p.now) is None
    assert len(p.a.tun_out) == 1 and p.pa.staged == [] and p.a.outbox == []
    assert p.a.drops == {"no-route": 2, "no-endpoint": 1}
    # where discovery may still find the endpoint the packet waits for the handshake instead
    p.a.tun_out.clear()
    p.a.unreachable = Unreachable(no_endpoint=False)
    assert p.a.send_packet(ipv4_packet("10.0.0.1", "10.0.0.2"), p.now) is None
    assert p.a.tun_out == [] and len(p.pa.staged) == 1
    p.a.set_endpoint(p.pa, B_ADDR)  # with an endpoint nothing changes: a handshake, then data
    p.a.unreachable = Unreachable()
    p.send("a", ipv4_packet("10.0.0.1", "10.0.0.2", b"after"))
    p.advance(6)  # the first initiation went nowhere (no endpoint then): its retry, REKEY_TIMEOUT later
    assert p.a.tun_out == [] and p.delivered["b"][-1] == ipv4_packet("10.0.0.1", "10.0.0.2", b"after")


def test_roaming_endpoint_follows_latest_authenticated_packet() -> None:
    p = Pair()
    p.send("a", ipv4_packet("10.0.0.1", "10.0.0.2"))
    new_addr = ("203.0.113.7", 40000)
    data, _ = p.a.send_packet(ipv4_packet("10.0.0.1", "10.0.0.2"), p.now)  # type: ignore[misc]
    assert p.b.receive_datagram(data, new_addr, p.now) is not None
    assert p.pb.endpoint == new_addr  # within one packet
    # and an unauthenticated packet from elsewhere does not move it
    forged = bytearray(data)
    forged[-1] ^= 1
    assert p.b.receive_datagram(bytes(forged), ("192.0.2.66", 1), p.now) is None
    assert p.pb.endpoint == new_addr


def test_keepalive_after_receiving_data_without_reply() -> None:
    t = Timing()
    p = Pair(t)
    p.send("a", ipv4_packet("10.0.0.1", "10.0.0.2"))
    rx = p.pa.rx_bytes
    p.advance(t.keepalive_timeout + 0.5)
    assert p.pa.rx_bytes == rx + noise.MESSAGE_KEEPALIVE_SIZE  # B sent one keepalive


def test_persistent_keepalive() -> None:
    p = Pair()
    p.a.set_persistent_keepalive(p.pa, 25, p.now)  # no session yet: starts a handshake
    p.flush()
    assert p.pa.current is not None
    rx = p.pb.rx_bytes
    p.advance(25 * 4 + 1)
    assert p.pb.rx_bytes - rx >= 4 * noise.MESSAGE_KEEPALIVE_SIZE


def test_retransmit_then_give_up_then_zero() -> None:
    t = Timing()
    p = Pair(t)
    p.lose = True
    p.send("a", ipv4_packet("10.0.0.1", "10.0.0.2"))
    give_up = [e for e in p.a.events if isinstance(e, GaveUp)]
    while not give_up:
        p.advance(1.0)
        give_up = [e for e in p.a.events if isinstance(e, GaveUp)]
    # wireguard-go timers.go: MAX_TIMER_HANDSHAKES + 1 retries, given up at the next
    # expiry, so 20 intervals of REKEY_TIMEOUT + jitter after the first initiation (§6.4)
    assert p.pa.handshake_attempts == t.max_timer_handshakes + 1
    intervals = t.max_timer_handshakes + 2
    elapsed = p.now - 1000.0
    assert intervals * t.rekey_timeout <= elapsed <= intervals * (t.rekey_timeout + t.rekey_timeout_jitter_max) + 1
    assert p.pa.staged == []
    # then the keys are zeroed 3 × REJECT_AFTER_TIME later, and no initiation is sent meanwhile
    assert p.pa.t_zero_key is not None and p.pa.t_retransmit is None


# --- the clock across a suspend (daemon/clock.py: CLOCK_BOOTTIME, as the kernel module) ---------


def test_a_suspend_seen_by_the_clock_expires_the_session_and_the_next_packet_rekeys() -> None:
    """The protocol clock counts a suspend, so the first wake-up after one sees the jump: after
    more than REJECT_AFTER_TIME the old keypair carries nothing; after 3 × REJECT_AFTER_TIME the
    keys are zeroed (§6.1, §6.3); each timer fires once, never once per interval missed."""
    t = Timing()
    for asleep in (t.reject_after_time + 20, 3 * 3600.0):
        p = Pair(t)
        p.a.set_persistent_keepalive(p.pa, 25, p.now)
        p.send("a", ipv4_packet("10.0.0.1", "10.0.0.2", b"before"))
        old = p.pa.current
        assert old is not None and p.delivered["b"][-1].endswith(b"before")
        end = p.now + asleep  # a sleeps: none of its timers runs; b's do, and what b sends is lost
        while (due := p.b.get_timer()) is not None and due <= end:
            p.b.handle_timer(due)
            p.b.datagrams_to_send()
        p.now = end
        p.a.handle_timer(p.now)  # a's first wake-up: its clock (boottime) shows the whole sleep
        woke = p.a.datagrams_to_send()
        assert len(woke) <= 1  # one keepalive / initiation, not ~asleep/25 of them
        if asleep > 3 * t.reject_after_time:
            assert p.pa.current is None  # zeroed by the timer (§6.3)
        for data, to in woke:  # carry it (and what it starts) to b
            inner = p.b.receive_datagram(data, A_ADDR, p.now)
            assert inner is None or inner == b""
        p.flush()
        out = p.a.send_packet(ipv4_packet("10.0.0.1", "10.0.0.2", b"after"), p.now)
        if out is not None:
            p.a.outbox.append(out)
        p.flush()
        assert p.pa.current is not old and p.pa.current is not None
        assert p.delivered["b"][-1] == ipv4_packet("10.0.0.1", "10.0.0.2", b"after")
        assert p.b.drops.get("expired-keypair", 0) == 0


def test_a_clock_that_stops_in_suspend_sends_what_the_peer_drops() -> None:
    """Why not CLOCK_MONOTONIC: it stops while the machine sleeps, the peer's clock does not.
    The sleeper still holds its keypair young and sends with it; the peer, REJECT_AFTER_TIME
    later in its own time, drops every such packet (wireguard-go receive.go) until a keepalive
    timeout makes the sleeper initiate."""
    t = Timing()
    p = Pair(t)
    p.send("a", ipv4_packet("10.0.0.1", "10.0.0.2", b"before"))
    stopped = p.now + 1  # a's clock after its sleep, had it stopped
    b_now = p.now + 3600  # b's clock, which went on
    out = p.a.send_packet(ipv4_packet("10.0.0.1", "10.0.0.2", b"after"), stopped)
    assert out is not None  # a believes its keypair 1 s old
    p.b.handle_timer(b_now)
    assert p.b.receive_datagram(out[0], A_ADDR, b_now) is None
    assert p.b.drops.get("expired-keypair", 0) + p.b.drops.get("unknown-index", 0) == 1


def test_rekey_after_time_keeps_traffic_flowing() -> None:
    t = Timing(rekey_after_time=3.0, reject_after_time=5.0, keepalive_timeout=1.0, rekey_timeout=0.5,
               rekey_attempt_time=4.5)
    p = Pair(t)
    sent = received = 0
    indices = set()
    for i in range(400):  # 40 seconds of traffic, 10 packets/s, both ways
        for name, src, dst in (("a", "10.0.0.1", "10.0.0.2"), ("b", "10.0.0.2", "10.0.0.1")):
            before = len(p.delivered["b" if name == "a" else "a"])
            p.send(name, ipv4_packet(src, dst, i.to_bytes(4, "big")))
            sent += 1
            received += len(p.delivered["b" if name == "a" else "a"]) - before
        if p.pa.current is not None:
            indices.add(p.pa.current.local_index)
        p.advance(0.1)
    handshakes = sum(1 for e in p.a.events if isinstance(e, HandshakeCompleted))
    assert handshakes >= 40 / 3 - 2, handshakes
    assert len(indices) >= 10
    assert sent - received <= 2, (sent, received)
    assert p.a.drops.get("data-auth", 0) == 0 and p.b.drops.get("data-auth", 0) == 0


def test_reject_after_time_stops_using_old_keys() -> None:
    t = Timing()
    p = Pair(t)
    p.send("a", ipv4_packet("10.0.0.1", "10.0.0.2"))
    kp = p.pb.current
    assert kp is not None
    p.lose = True
    p.advance(t.reject_after_time + 1)
    assert p.b.send_packet(ipv4_packet("10.0.0.2", "10.0.0.1"), p.now) is None  # staged, handshaking
    assert p.pb.staged


def test_zero_key_material_after_three_reject_after_time() -> None:
    t = Timing()
    p = Pair(t)
    p.send("a", ipv4_packet("10.0.0.1", "10.0.0.2"))
    old = p.a.send_packet(ipv4_packet("10.0.0.1", "10.0.0.2"), p.now)
    assert old is not None
    b_index = p.pb.current.local_index  # type: ignore[union-attr]
    p.lose = True
    p.advance(3 * t.reject_after_time + 200)
    assert p.pa.current is None and p.pa.previous is None and p.pa.next is None
    assert p.pb.current is None
    assert not isinstance(p.b.index_table.lookup(b_index), Keypair)
    assert p.b.receive_datagram(old[0], A_ADDR, p.now) is None
    assert p.b.drops == {"unknown-index": 1}


def stranger_initiations(responder: bytes, n: int, seed: int = 99) -> list[bytes]:
    """Valid-looking initiations (right mac1, a static key the responder does not know)."""
    from wgdisco.proto.cookie import CookieGenerator

    rng = Rng(seed)
    stranger = noise.StaticIdentity(keys.clamp(rng(32)))
    hs = noise.Handshake(stranger, responder)
    gen = CookieGenerator(responder)
    return [gen.add_macs(noise.create_initiation(stranger, hs, sender_index=i + 1,
                                                 ephemeral_private=keys.clamp(rng(32)), wall=1.7e9 + i), now=0.0)
            for i in range(n)]


def test_a_flood_gets_a_bounded_number_of_cookie_replies() -> None:
    p = Pair(handshake_load_threshold=8)
    flood = stranger_initiations(p.b.identity.public, 60)
    for second in range(3):  # 2,000 a second, for 3 s (the same 60 messages over and over)
        for i in range(2000):
            p.b.receive_datagram(flood[i % 60], ("192.0.2.1", 1000 + i), p.now + second + i / 2000)
    sent = p.b.counters.get("cookie-replies-sent", 0)
    assert sent <= 20 + 3 * 1000 and p.b.drops.get("cookie-reply-limited", 0) >= 6000 - sent - 8
    p.b.datagrams_to_send()


def test_handshake_work_has_a_budget() -> None:
    p = Pair(handshake_load_threshold=10**9)  # never under load: every initiation is consumed…
    for msg in stranger_initiations(p.b.identity.public, 100):
        p.b.receive_datagram(msg, ("192.0.2.1", 1000), p.now)  # …all in one instant
    assert p.b.drops.get("handshake-auth", 0) == 20  # the burst: consumed (and rejected: unknown key)
    assert p.b.drops.get("handshake-over-budget", 0) == 80
    p.advance(1)
    p.send("a", ipv4_packet("10.0.0.1", "10.0.0.2"))  # a second later the genuine peer gets through
    assert p.delivered["b"] == [ipv4_packet("10.0.0.1", "10.0.0.2")]


def test_under_load_answers_with_cookie_and_peer_still_connects() -> None:
    p = Pair(handshake_load_threshold=8)
    # a flood of valid-looking initiations (right mac1, unknown static key) from many sources
    flood_rng = Rng(99)
    stranger = noise.StaticIdentity(keys.clamp(flood_rng(32)))
    hs = noise.Handshake(stranger, p.b.identity.public)
    from wgdisco.proto.cookie import CookieGenerator

    gen = CookieGenerator(p.b.identity.public)
    for i in range(20):
        msg = noise.create_initiation(stranger, hs, sender_index=i + 1,
                                      ephemeral_private=keys.clamp(flood_rng(32)), wall=p.now + i)
        p.b.receive_datagram(gen.add_macs(msg, now=p.now), ("192.0.2.1", 1000 + i), p.now)
    replies = p.b.datagrams_to_send()
    assert p.b.counters.get("cookie-replies-sent", 0) >= 10
    assert all(len(d) == noise.MESSAGE_COOKIE_REPLY_SIZE and d[0] == 3 for d, _ in replies)
    # the genuine peer: first attempt gets a cookie, the retry carries mac2 and completes
    p.send("a", ipv4_packet("10.0.0.1", "10.0.0.2"))
    assert p.a.counters.get("cookie-replies-received") == 1
    assert p.pa.current is None
    p.advance(6)
    assert p.pa.current is not None
    assert p.delivered["b"] == [ipv4_packet("10.0.0.1", "10.0.0.2")]


def test_initiation_from_unknown_peer_gets_nothing() -> None:
    p = Pair()
    rng = Rng(5)
    stranger = noise.StaticIdentity(keys.clamp(rng(32)))
    from wgdisco.proto.cookie import CookieGenerator

    hs = noise.Handshake(stranger, p.b.identity.public)
    msg = noise.create_initiation(stranger, hs, sender_index=1, ephemeral_private=keys.clamp(rng(32)), wall=1.0)
    p.b.receive_datagram(CookieGenerator(p.b.identity.public).add_macs(msg, now=p.now), A_ADDR, p.now)
    assert p.b.outbox == [] and p.b.drops == {"handshake-auth": 1}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 4))
def test_malformed_input_never_raises(data: bytes, kind: int) -> None:
    p = PAIR_FOR_FUZZ
    if data and kind:
        data = bytes([kind, 0, 0, 0]) + data
    before = sum(p.b.drops.values())
    assert p.b.receive_datagram(data, A_ADDR, p.now) is None
    assert sum(p.b.drops.values()) == before + 1


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_bit_flips_in_real_messages_are_dropped(data: st.DataObject) -> None:
    p = Pair()
    captured: list[bytes] = []
    out = p.a.send_packet(ipv4_packet("10.0.0.1", "10.0.0.2"), p.now)
    assert out is None
    init = p.a.datagrams_to_send()[0][0]
    captured.append(init)
    p.b.receive_datagram(init, A_ADDR, p.now)
    resp = p.b.datagrams_to_send()[0][0]
    captured.append(resp)
    which = data.draw(st.integers(0, 1))
    msg = bytearray(captured[which])
    pos = data.draw(st.integers(4, len(msg) - 17))  # mac2 is only checked under load
    msg[pos] ^= 1 << data.draw(st.integers(0, 7))
    target = p.b if which == 0 else p.a
    before = dict(target.drops)
    assert target.receive_datagram(bytes(msg), B_ADDR, p.now + 1) is None
    assert sum(target.drops.values()) == sum(before.values()) + 1


PAIR_FOR_FUZZ = Pair()
PAIR_FOR_FUZZ.send("a", ipv4_packet("10.0.0.1", "10.0.0.2"))


def test_same_private_key_is_a_no_op_and_a_new_one_forces_a_handshake() -> None:
    p = Pair()
    p.send("a", ipv4_packet("10.0.0.1", "10.0.0.2"))
    kp = p.pa.current
    p.a.set_private_key(p.a.identity.private)  # wg syncconf sends the unchanged key
    assert p.pa.current is kp
    p.send("a", ipv4_packet("10.0.0.1", "10.0.0.2", b"again"))
    assert p.delivered["b"][-1] == ipv4_packet("10.0.0.1", "10.0.0.2", b"again")
    handshakes = sum(1 for e in p.a.events if isinstance(e, HandshakeCompleted))
    p.a._expire_current_keypairs(p.pa)  # what a key change does to every peer
    p.now += 1.0  # (an initiation in the same instant would be refused as a flood, §5.1)
    p.send("a", ipv4_packet("10.0.0.1", "10.0.0.2", b"after"))
    assert p.delivered["b"][-1] == ipv4_packet("10.0.0.1", "10.0.0.2", b"after")
    assert sum(1 for e in p.a.events if isinstance(e, HandshakeCompleted)) == handshakes + 1


# --- sticky sources: the local address of the latest authenticated packet --------------


def test_sticky_source_follows_latest_authenticated_packet() -> None:
    p = Pair(endpoint_b=True)
    p.a.send_handshake_initiation(p.pa, p.now, is_retry=False)
    [(init, to)] = p.a.datagrams_to_send()
    assert to == B_ADDR
    p.b.receive_datagram(init, A_ADDR, p.now, "b-second")  # the responder records where it came to
    assert p.b.sources == {A_ADDR: "b-second"}
    [(resp, to)] = p.b.datagrams_to_send()
    assert to == A_ADDR  # the shell sends it from p.b.sources[to]
    p.a.receive_datagram(resp, B_ADDR, p.now, "a-first")
    assert p.a.sources == {B_ADDR: "a-first"}
    p.flush()  # A's keepalive promotes B's keypair (no local: the entry stays)
    assert p.b.sources == {A_ADDR: "b-second"}

    def data() -> bytes:
        out = p.a.send_packet(ipv4_packet("10.0.0.1", "10.0.0.2"), p.now)
        assert out is not None
        return out[0]

    assert p.b.receive_datagram(data(), A_ADDR, p.now, "b-second") is not None
    assert p.b.sources == {A_ADDR: "b-second"}
    assert p.b.receive_datagram(data(), A_ADDR, p.now, "b-first") is not None  # A wrote to our other address
    assert p.b.sources == {A_ADDR: "b-first"}
    forged = bytearray(data())
    forged[-1] ^= 1
    assert p.b.receive_datagram(bytes(forged), A_ADDR, p.now, "b-third") is None  # not authenticated
    assert p.b.sources == {A_ADDR: "b-first"}
    moved = ("203.0.113.7", 40000)
    assert p.b.receive_datagram(data(), moved, p.now, "b-second") is not None  # roaming (§2.1)
    assert p.b.sources == {moved: "b-second"}  # the old endpoint's entry went with it
    assert p.b.receive_datagram(data(), A_ADDR, p.now) is not None  # roaming back, no report
    assert p.pb.endpoint == A_ADDR and p.b.sources == {}


def test_sticky_source_dropped_on_new_endpoint_removal_and_retries() -> None:
    p = Pair()
    p.send("a", ipv4_packet("10.0.0.1", "10.0.0.2"))
    p.a.sources[B_ADDR] = "a-first"
    p.a.set_endpoint(p.pa, B_ADDR, "uapi")  # unchanged: kept
    assert p.a.sources == {B_ADDR: "a-first"}
    p.a.set_endpoint(p.pa, ("198.51.100.9", 51820), "uapi")
    assert p.a.sources == {}
    p.a.set_endpoint(p.pa, B_ADDR)
    p.a.sources[B_ADDR] = "a-first"
    p.a.remove_peer(p.pa.public_key)
    assert p.a.sources == {}
    # a handshake retried for want of an answer forgets the source (wireguard-go)
    q = Pair()
    q.send("a", ipv4_packet("10.0.0.1", "10.0.0.2"))
    q.a.sources[B_ADDR] = "a-first"
    q.lose = True
    q.advance(q.a.timing.rekey_timeout + 0.1)
    q.a.send_handshake_initiation(q.pa, q.now, is_retry=False)
    q.flush()
    assert q.a.sources == {B_ADDR: "a-first"}  # the first try keeps it
    q.advance(q.a.timing.rekey_timeout + q.a.timing.rekey_timeout_jitter_max + 0.1)
    assert q.pa.handshake_attempts >= 1 and q.a.sources == {}


def test_a_source_whose_route_moved_is_not_learned_again_from_packets_in_flight() -> None:
    """The shell found the route to B leaving through another interface (daemon/sticky.py) and
    forgot "a-first" with moved=True: B's packets still arriving there (B writes to the old
    address until it hears us from the new one) leave the choice to the kernel; a packet to
    another of our addresses is learned; after the next route change the old one may be again."""
    p = Pair()
    p.send("a", ipv4_packet("10.0.0.1", "10.0.0.2"))

    def from_b(local: str) -> None:
        out = p.b.send_packet(ipv4_packet("10.0.0.2", "10.0.0.1"), p.now)
        assert out is not None and p.a.receive_datagram(out[0], B_ADDR, p.now, local) is not None

    from_b("a-first")
    assert p.a.sources == {B_ADDR: "a-first"}
    assert p.a.forget_source(B_ADDR, "a-first", moved=True)
    from_b("a-first")  # in flight when the route moved
    assert p.a.sources == {}
    from_b("a-third")  # B heard us from the new source and writes there
    assert p.a.sources == {B_ADDR: "a-third"}
    from_b("a-first")  # the mark went with the new source: an ordinary change again
    assert p.a.sources == {B_ADDR: "a-first"}
    assert p.a.forget_source(B_ADDR, "a-first", moved=True)
    p.a.routes_changed()  # the route came back, say: the next check decides
    from_b("a-first")
    assert p.a.sources == {B_ADDR: "a-first"}
    # the batched path (the compiled data plane's reports) keeps the same rule
    assert p.a.forget_source(B_ADDR, "a-first", moved=True)
    p.a.transport_received(p.pa, p.now, 100, 1, B_ADDR, "a-first")
    assert p.a.sources == {}
    p.a.transport_received(p.pa, p.now, 100, 1, B_ADDR, "a-third")
    assert p.a.sources == {B_ADDR: "a-third"}


def test_timers_come_from_a_heap_not_a_scan_of_the_peers() -> None:
    """get_timer is the top of a heap (issue 22): the earliest deadline wins whoever set it; a
    deadline moved later costs one early wake that does nothing and re-arms at the real one; a
    removed peer's entry is skipped."""
    rng = Rng(5)
    dev = Device(keys.clamp(rng(32)), rng=rng, now=0.0)
    peers = [dev.add_peer(keys.public_key(keys.clamp(rng(32)))) for _ in range(200)]
    assert dev.get_timer() is None
    for i, peer in enumerate(peers):
        dev.set_endpoint(peer, ("192.0.2.1", 1000 + i))
        dev.set_persistent_keepalive(peer, 25, 0.0)  # sends a handshake: its retransmit timer is armed
    first = dev.get_timer()
    assert first is not None and 5.0 <= first <= 5.0 + dev.timing.rekey_timeout_jitter_max
    assert first == min(t for p in peers for t in p.deadlines() if t is not None)
    dev.datagrams_to_send()
    # one peer's retransmit is cancelled (as a handshake completing does): the heap still holds
    # its old entry, so the device wakes then, does nothing for it, and re-arms it later
    quiet = min(peers, key=lambda p: p.t_retransmit)
    quiet.t_retransmit = None
    quiet_when = quiet.armed_at
    dev.handle_timer(quiet_when)
    assert quiet.t_retransmit is None and quiet.handshake_attempts == 0  # nothing fired for it
    assert quiet.armed_at == min(t for t in quiet.deadlines() if t is not None) > quiet_when
    # a removed peer's entry is passed over
    gone, gone_addr = peers[-1], peers[-1].endpoint
    dev.remove_peer(gone.public_key)
    dev.handle_timer(100.0)
    sent = [addr for _, addr in dev.datagrams_to_send()]
    assert sent and gone_addr not in sent  # the others retransmitted; nothing for the removed one


def test_packets_over_the_path_limit_get_too_big_or_go_in_fragments() -> None:
    """Issue 25: a peer's path MTU (proto/pmtu.py) makes the device answer larger packets with
    ICMP "too big" into TUN (IPv4 with DF, IPv6), or send IPv4 without DF in fragments."""
    from wgdisco.proto.icmp import TooBig

    p = Pair()
    p.send("a", ipv4_packet("10.0.0.1", "10.0.0.2"))  # a session
    p.a.too_big = TooBig()
    p.a.set_path_limit(p.pa, 1312)
    small = ipv4_packet("10.0.0.1", "10.0.0.2", b"s" * 1292)  # exactly 1312: goes
    p.send("a", small)
    assert p.delivered["b"][-1] == small and p.a.tun_out == []
    big = bytearray(ipv4_packet("10.0.0.1", "10.0.0.2", b"b" * 1380))
    big[6] = 0x40  # DF
    assert p.a.send_packet(bytes(big), p.now) is None
    assert len(p.a.tun_out) == 1 and p.a.tun_out[0][20:22] == bytes([3, 4]) and p.a.drops["too-big"] == 1
    v6 = ipv6_packet("fd00::1", "fd00::2", b"6" * 1300)
    assert p.a.send_packet(v6, p.now) is None and p.a.tun_out[1][40] == 2  # packet too big
    nodf = ipv4_packet("10.0.0.1", "10.0.0.2", b"f" * 1380)
    before = len(p.delivered["b"])
    assert p.a.send_packet(nodf, p.now) is None
    p.flush()
    pieces = p.delivered["b"][before:]
    assert len(pieces) == 2 and all(len(x) <= 1312 for x in pieces)
    assert b"".join(x[20:] for x in pieces) == nodf[20:]
    p.a.set_path_limit(p.pa, None)  # no limit: as before
    p.send("a", bytes(big))
    assert p.delivered["b"][-1] == bytes(big)


def test_crossed_initiations_give_a_session_at_once_not_after_the_retransmission() -> None:
    """Both sides initiate in the same instant (both had data staged): the lower key's
    initiation is the one both complete; without the rule each consumed the other's, dropped the
    response to its own, and both waited REKEY_TIMEOUT (5 s) for a retransmission."""
    p = Pair()
    p.b.set_endpoint(p.pb, A_ADDR)
    to_b, to_a = ipv4_packet("10.0.0.1", "10.0.0.2"), ipv4_packet("10.0.0.2", "10.0.0.1", b"back")
    for name, pkt in (("a", to_b), ("b", to_a)):
        dev = p.device(name)
        assert dev.send_packet(pkt, p.now) is None  # staged; the initiation is in the outbox
    assert all(len(d.outbox) == 1 for d in (p.a, p.b))  # two initiations on the wire at once
    p.flush()
    assert p.delivered == {"a": [to_a], "b": [to_b]}  # at once: no 5 s wait
    lower, higher = sorted((p.a, p.b), key=lambda d: d.identity.public)
    assert lower.counters.get("initiations-crossed") == 1 and "initiations-crossed" not in higher.counters
    # the rule holds only for an initiation of ours that is fresh and unanswered: later ones are consumed
    p.advance(200)  # past REKEY_AFTER_TIME: the next data rekeys, one side alone
    p.send("b", to_a)
    assert p.delivered["a"][-1] == to_a and lower.counters.get("initiations-crossed") == 1


def test_crossed_initiations_delayed_two_seconds_still_give_a_session_at_once() -> None:
    """A busy host (40 members starting on 2 cores) handles a datagram seconds after it came:
    the higher key's initiation reached the lower one 1.6 s after the lower sent its own, which it
    then consumed (window 1 s), the higher had consumed the lower's: both waited 5 s. The window
    is REKEY_TIMEOUT / 2, so an outstanding initiation of ours stands for 2.5 s."""
    p = Pair()
    p.b.set_endpoint(p.pb, A_ADDR)
    to_b, to_a = ipv4_packet("10.0.0.1", "10.0.0.2"), ipv4_packet("10.0.0.2", "10.0.0.1", b"back")
    lower, higher = sorted((p.a, p.b), key=lambda d: d.identity.public)
    name = {id(p.a): "a", id(p.b): "b"}
    lo, hi = name[id(lower)], name[id(higher)]
    assert lower.send_packet(to_b if lo == "a" else to_a, p.now) is None
    (init_lo, _), = lower.datagrams_to_send()
    p.now += 2.0
    assert higher.send_packet(to_b if hi == "a" else to_a, p.now) is None
    (init_hi, _), = higher.datagrams_to_send()
    # the higher's reaches the lower first (the lower was busy), then the lower's reaches the higher
    assert lower.receive_datagram(init_hi, p.addr[hi], p.now) is None
    assert lower.counters.get("initiations-crossed") == 1 and not lower.outbox
    assert higher.receive_datagram(init_lo, p.addr[lo], p.now) is None
    p.flush()  # the higher's response completes the lower's handshake; both send their data
    assert p.delivered == {"a": [to_a], "b": [to_b]}


def test_an_initiation_with_no_endpoint_is_not_made_and_does_not_block_the_peers() -> None:
    """Data for a peer with no endpoint yet (a mesh member admitted before any path) makes no
    initiation: no Diffie-Hellman work, and no handshake state that would make the lower key
    yield to the peer's initiation as if its own were on the wire."""
    p = Pair(endpoint_b=False)
    lower, higher = sorted((p.a, p.b), key=lambda d: d.identity.public)
    lo, hi = ("a", "b") if lower is p.a else ("b", "a")
    lo_peer = lower.peers[higher.identity.public]
    packet = {"a": ipv4_packet("10.0.0.1", "10.0.0.2"), "b": ipv4_packet("10.0.0.2", "10.0.0.1", b"back")}
    assert lower.send_packet(packet[lo], p.now) is None  # staged
    assert not lower.outbox and lower.counters.get("initiations-no-endpoint") == 1
    assert lo_peer.handshake.state is noise.HandshakeState.ZEROED
    higher.set_endpoint(higher.peers[lower.identity.public], p.addr[lo])
    p.now += 1.0
    p.send(hi, packet[hi])  # the higher's initiation is consumed at once: a session, both ways
    assert p.delivered[lo] == [packet[hi]] and p.delivered[hi] == [packet[lo]]
    assert "initiations-crossed" not in lower.counters


def test_a_removed_peer_is_not_held_for_the_compiled_path() -> None:
    """Device.pop_mirrored names peers the compiled path must re-read; nothing pops it on the pure
    Python path, so a removed peer (mesh churn) must not stay in it."""
    p = Pair()
    p.send("a", ipv4_packet("10.0.0.1", "10.0.0.2"))
    p.a.remove_peer(p.b.identity.public)
    assert p.pa not in (p.a.pop_mirrored() or set())
