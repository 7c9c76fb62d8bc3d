"""Forged mDNS records from a stranger on the LAN (runs inside a lab host; bounded in rate and time).

    python -m wgdisco.lab.mdns_flood candidates IFACE PUBKEY RATE SECONDS
        RATE unsolicited mDNS responses a second, each a wgsd record under PUBKEY (a peer's key the
        attacker does not hold) with 31 new candidates; no goodbye afterwards.
    python -m wgdisco.lab.mdns_flood names IFACE RATE SECONDS
        RATE responses a second, each for a new instance name (the base32 of a random key).
    python -m wgdisco.lab.mdns_flood record IFACE JSON [TIMES]
        One crafted record, sent TIMES (default 3, at most 10) times 0.5 s apart: JSON is
        {"public": base64 key, "port": n, "address": "10.1.0.9", "txt": ["k=v", ...]} (a forged or
        replayed mesh record, tests/netns/test_mesh_lab.py).
Prints JSON {"sent": n, "seconds": s}. Responses go to 224.0.0.251:5353 (RFC 6762 §6), as any
responder on the link may send them.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time

import dns.flags
import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from wgdisco.proto import keys

MDNS = ("224.0.0.251", 5353)
SERVICE = "_wireguard._udp.local."


def response(public: bytes, port: int, serial: int, candidates: int) -> bytes:
    label = keys.key_to_base32(public)
    instance = f"{label}.{SERVICE}"
    target = f"wg-{label[:16]}.local."
    every = [f"10.{(serial >> 8) & 255}.{serial & 255}.{j + 1}:{20000 + j}" for j in range(candidates)]
    # cand=, cand1=, cand2=: one TXT string holds at most 255 bytes (docs/records.md)
    packed = [f"cand{k or ''}=" + ",".join(every[i:i + 12]) for k, i in enumerate(range(0, len(every), 12))]
    msg = dns.message.Message(id=0)
    msg.flags = dns.flags.QR | dns.flags.AA
    txt = " ".join(f'"{t}"' for t in ("txtvers=1", f"pub={keys.key_to_base64(public)}", "probe=1", *packed))
    for name, rdtype, ttl, text in (
        (SERVICE, "PTR", 4500, instance),
        (instance, "SRV", 120, f"0 0 {port} {target}"),
        (instance, "TXT", 4500, txt),
        (target, "A", 120, f"10.{(serial >> 8) & 255}.{serial & 255}.1"),
    ):
        msg.answer.append(dns.rrset.from_text(name, ttl, "IN", rdtype, text))
    return msg.to_wire()


def record(public: bytes, port: int, address: str, txt_strings: list[str]) -> bytes:
    """A response carrying exactly these TXT strings (cache-flush, as a responder sends its own)."""
    label = keys.key_to_base32(public)
    instance = f"{label}.{SERVICE}"
    target = f"wg-{label[:16]}.local."
    msg = dns.message.Message(id=0)
    msg.flags = dns.flags.QR | dns.flags.AA
    txt = " ".join('"' + t.replace('"', '\\"') + '"' for t in txt_strings)
    for name, rdtype, ttl, text in (
        (SERVICE, "PTR", 4500, instance),
        (instance, "SRV", 120, f"0 0 {port} {target}"),
        (instance, "TXT", 4500, txt),
        (target, "A", 120, address),
    ):
        msg.answer.append(dns.rrset.from_text(name, ttl, "IN", rdtype, text))
    return msg.to_wire()


def flood(iface: str, make, per_second: int, seconds: float) -> dict:
    if not 0 < per_second <= 200 or not 0 < seconds <= 60:
        raise SystemExit("mdns_flood: at most 200 a second for at most 60 s")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, struct.pack("B", 255))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", 5353))  # responses come from port 5353 (RFC 6762 §6); receivers check it
    start = time.monotonic()
    sent = 0
    while (now := time.monotonic()) < start + seconds:
        due = int((now - start) * per_second) - sent
        for _ in range(max(due, 0)):
            sock.sendto(make(sent), MDNS)
            sent += 1
        time.sleep(0.005)
    return {"sent": sent, "seconds": round(time.monotonic() - start, 2)}


def main() -> int:
    mode, iface = sys.argv[1], sys.argv[2]
    if mode == "candidates":
        public = keys.key_from_base64(sys.argv[3])
        result = flood(iface, lambda i: response(public, 51820, i + 1, 31), int(sys.argv[4]), float(sys.argv[5]))
    elif mode == "names":
        result = flood(iface, lambda i: response(keys.public_key(keys.clamp(os.urandom(32))), 51820, i + 1, 2),
                       int(sys.argv[3]), float(sys.argv[4]))
    elif mode == "record":
        spec = json.loads(sys.argv[3])
        times = min(int(sys.argv[4]) if len(sys.argv) > 4 else 3, 10)
        data = record(keys.key_from_base64(spec["public"]), int(spec["port"]), spec["address"], spec["txt"])
        result = flood(iface, lambda i: data, 2, times / 2)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
