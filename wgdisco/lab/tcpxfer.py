"""TCP transfer with checksums, both ways (standard library only; runs inside a lab host).

    python tcpxfer.py serve PORT                 # one connection, then exit
    python tcpxfer.py send HOST PORT NBYTES      # prints one JSON line

The client sends NBYTES of seeded pseudo-random data and then its SHA-256; the
server hashes what it received, answers with its own hash, then sends NBYTES
back followed by their hash. Each side checks the other's data. The client also
reports the longest time one chunk took to go or come (``max_gap_s``): a stall.
"""

from __future__ import annotations

import hashlib
import json
import random
import socket
import sys
import time

CHUNK = 1 << 16


def stream(seed: int, n: int):
    r = random.Random(seed)
    block = r.randbytes(CHUNK)
    sent = 0
    while sent < n:
        piece = block[: min(CHUNK, n - sent)]
        sent += len(piece)
        yield piece


GAPS = [0.0]  # the longest time one sendall or recv took (the client's stall measure)


def send_stream(conn: socket.socket, seed: int, n: int) -> bytes:
    h = hashlib.sha256()
    for piece in stream(seed, n):
        h.update(piece)
        t = time.monotonic()
        conn.sendall(piece)
        GAPS[0] = max(GAPS[0], time.monotonic() - t)
    return h.digest()


def recv_exact(conn: socket.socket, n: int, h=None) -> bytes:
    out = bytearray()
    while n:
        t = time.monotonic()
        data = conn.recv(min(CHUNK, n))
        GAPS[0] = max(GAPS[0], time.monotonic() - t)
        if not data:
            raise EOFError("connection closed early")
        if h is not None:
            h.update(data)
        else:
            out += data
        n -= len(data)
    return bytes(out)


def serve(port: int) -> None:
    family = socket.AF_INET6
    with socket.socket(family, socket.SOCK_STREAM) as srv:
        srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("::", port))
        srv.listen(1)
        print("listening", flush=True)
        conn, _ = srv.accept()
        with conn:
            n = int.from_bytes(recv_exact(conn, 8), "big")
            h = hashlib.sha256()
            recv_exact(conn, n, h)
            their = recv_exact(conn, 32)
            conn.sendall(h.digest())
            digest = send_stream(conn, 2, n)
            conn.sendall(digest)
            print(json.dumps({"received": n, "ok": their == h.digest()}), flush=True)


def send(host: str, port: int, n: int) -> None:
    with socket.create_connection((host, port), timeout=60) as conn:
        t0 = time.monotonic()
        conn.sendall(n.to_bytes(8, "big"))
        mine = send_stream(conn, 1, n)
        conn.sendall(mine)
        server_saw = recv_exact(conn, 32)
        t1 = time.monotonic()
        h = hashlib.sha256()
        recv_exact(conn, n, h)
        their = recv_exact(conn, 32)
        t2 = time.monotonic()
    print(json.dumps({
        "bytes": n,
        "up_ok": server_saw == mine,
        "down_ok": their == h.digest(),
        "up_mbit_s": round(n * 8 / (t1 - t0) / 1e6, 1),
        "down_mbit_s": round(n * 8 / (t2 - t1) / 1e6, 1),
        "seconds": round(t2 - t0, 3),
        "max_gap_s": round(GAPS[0], 3),
    }), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
    else:
        send(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
