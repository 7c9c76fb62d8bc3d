"""Hostile traffic for a WireGuard responder (runs inside a lab host; bounded in count and time).

    python -m wgdisco.lab.flood initiations HOST PORT PUBKEY COUNT SECONDS
        Valid-looking initiations (right mac1, a static key the responder does not know),
        COUNT of them spread over SECONDS; prints JSON with the cookie replies received
        and whether one decrypts (so they are real cookie replies, whitepaper §5.4.7).
    python -m wgdisco.lab.flood rate HOST PORT PUBKEY RATE SECONDS
        RATE valid-looking initiations a second for SECONDS (200 distinct ones, sent over and over:
        a responder does as much work for each); prints JSON with what was sent and the replies.
    python -m wgdisco.lab.flood garbage HOST PORT PUBKEY
        One of every malformed kind; prints JSON {"sent": {kind: n}}.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

from wgdisco.errors import AuthError
from wgdisco.proto import keys, noise
from wgdisco.proto.cookie import CookieGenerator


def open_socket(host: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.setblocking(False)
    return s


def initiations(host: str, port: int, pub: bytes, count: int, seconds: float) -> dict:
    sock = open_socket(host)
    stranger = noise.StaticIdentity(keys.generate_private_key(os.urandom(32)))
    gen = CookieGenerator(pub)
    replies: list[bytes] = []
    valid_cookie = False
    start = time.monotonic()
    for i in range(count):
        hs = noise.Handshake(stranger, pub)
        msg = noise.create_initiation(stranger, hs, sender_index=i + 1,
                                      ephemeral_private=keys.generate_private_key(os.urandom(32)),
                                      wall=time.time())
        msg = gen.add_macs(msg, now=time.monotonic())
        try:
            sock.sendto(msg, (host, port))
        except BlockingIOError:
            pass
        # pace: COUNT spread over SECONDS
        target = start + seconds * (i + 1) / count
        while True:
            try:
                data = sock.recv(2048)
            except BlockingIOError:
                data = None
            if data is not None:
                replies.append(data)
                continue
            if time.monotonic() >= target:
                break
            time.sleep(0.0005)
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        try:
            replies.append(sock.recv(2048))
        except BlockingIOError:
            time.sleep(0.01)
    cookies = [r for r in replies if len(r) == noise.MESSAGE_COOKIE_REPLY_SIZE and r[0] == 3]
    # the last reply answers the last mac1 the generator remembers
    if cookies:
        try:
            gen.consume_reply(cookies[-1], now=time.monotonic())
            valid_cookie = True
        except AuthError:
            valid_cookie = False
    return {"sent": count, "replies": len(replies), "cookie_replies": len(cookies), "valid_cookie": valid_cookie,
            "other_replies": len(replies) - len(cookies)}


def rate(host: str, port: int, pub: bytes, per_second: int, seconds: float) -> dict:
    if not 0 < per_second <= 50_000 or not 0 < seconds <= 60:
        raise SystemExit("flood rate: at most 50,000 a second for at most 60 s")
    sock = open_socket(host)
    stranger = noise.StaticIdentity(keys.generate_private_key(os.urandom(32)))
    gen = CookieGenerator(pub)
    msgs = []
    for i in range(200):
        hs = noise.Handshake(stranger, pub)
        msg = noise.create_initiation(stranger, hs, sender_index=i + 1,
                                      ephemeral_private=keys.generate_private_key(os.urandom(32)), wall=time.time())
        msgs.append(gen.add_macs(msg, now=time.monotonic()))
    sendto, recv, dest = sock.sendto, sock.recv, (host, port)
    sent = replies = 0
    start = time.monotonic()
    end = start + seconds
    while True:
        now = time.monotonic()
        if now >= end:
            break
        due = int((now - start) * per_second) - sent  # keep to the rate, whatever the pauses
        for k in range(min(due, 2000)):
            try:
                sendto(msgs[(sent + k) % 200], dest)
            except BlockingIOError:
                pass
        sent += max(due, 0)
        try:
            while recv(2048):
                replies += 1
        except BlockingIOError:
            pass
        time.sleep(0.001)
    took = time.monotonic() - start
    return {"sent": sent, "seconds": round(took, 2), "rate": round(sent / took), "replies": replies}


def garbage(host: str, port: int, pub: bytes) -> dict:
    sock = open_socket(host)
    gen = CookieGenerator(pub)
    ident = noise.StaticIdentity(keys.generate_private_key(os.urandom(32)))
    good_init = noise.create_initiation(ident, noise.Handshake(ident, pub), sender_index=7,
                                        ephemeral_private=keys.generate_private_key(os.urandom(32)), wall=time.time())
    kinds = {
        "empty": b"",
        "one-byte": b"\x01",
        "random": os.urandom(100),
        "type0": b"\x00\x00\x00\x00" + os.urandom(40),
        "type5": b"\x05\x00\x00\x00" + os.urandom(40),
        "reserved-set": b"\x04\x00\x01\x00" + os.urandom(40),
        "init-short": good_init[:100],
        "init-long": good_init + b"x",
        "init-bad-mac1": good_init,  # mac1 left zero
        "init-unknown-peer": gen.add_macs(good_init, now=0.0),
        "response-random": b"\x02\x00\x00\x00" + os.urandom(88),
        "cookie-random": b"\x03\x00\x00\x00" + os.urandom(60),
        "transport-short": b"\x04\x00\x00\x00" + os.urandom(20),
        "transport-random": b"\x04\x00\x00\x00" + os.urandom(200),
        "stun-like": b"\x00\x01\x00\x00\x21\x12\xa4\x42" + os.urandom(12),
        "huge": os.urandom(9000),
    }
    for data in kinds.values():
        sock.sendto(data, (host, port))
        time.sleep(0.002)
    return {"sent": {k: 1 for k in kinds}}


def main() -> int:
    mode, host, port, pub = sys.argv[1], sys.argv[2], int(sys.argv[3]), keys.key_from_base64(sys.argv[4])
    if mode == "initiations":
        result = initiations(host, port, pub, int(sys.argv[5]), float(sys.argv[6]))
    elif mode == "rate":
        result = rate(host, port, pub, int(sys.argv[5]), float(sys.argv[6]))
    else:
        result = garbage(host, port, pub)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
