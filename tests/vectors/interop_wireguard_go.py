"""Interop check of wgdisco.proto.{noise,cookie,crypto} against a real wireguard-go.

Runs in the suite as tests/netns/test_vectors_interop_lab.py (root, namespaces), or alone as root:
.venv/bin/python tests/vectors/interop_wireguard_go.py.  Needs: wireguard-go, wg, ip, ping.

For each transcript in handshake.json it builds two network namespaces joined by a veth
(198.51.100.0/30), runs wireguard-go in one with the vector's responder key, and in the
other runs this file again (`--inner`) as a Python WireGuard peer:

A. Python initiates: sends the vector's stored initiation bytes *unchanged* (so the
   stored vector is validated by wireguard-go), checks the response's mac1 with our
   CookieChecker, consumes it, derives keys, sends a keepalive, then an ICMP echo
   request through the tunnel and decrypts wireguard-go's echo reply.
B. wireguard-go initiates (a ping from its namespace to a second Python peer): Python
   consumes the initiation, sends a response (mac1 by our CookieGenerator), decrypts
   the echo request and answers it; the ping must succeed.
C. (first transcript only) Python floods wireguard-go with 3000 copies of one initiation
   so that it is under load and answers with cookie replies; our CookieGenerator consumes
   one, then an initiation carrying mac2 must be answered while one without mac2 (sent
   right after it) must get a cookie reply instead (whitepaper §5.3, §5.4.7).
Finally `wg show dump` must report a handshake and traffic for every peer used.
Namespaces, the interface and wireguard-go are always removed at the end.
"""

from __future__ import annotations

import json
import os
import pathlib
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from wgdisco.proto.cookie import CookieChecker, CookieGenerator  # noqa: E402
from wgdisco.proto.crypto import aead_decrypt, aead_encrypt  # noqa: E402
from wgdisco.proto.keys import clamp, key_to_base64, public_key  # noqa: E402
from wgdisco.proto.noise import (  # noqa: E402
    Handshake,
    MessageTransport,
    StaticIdentity,
    begin_symmetric_session,
    consume_initiation,
    consume_response,
    create_initiation,
    create_response,
    message_type,
    pack_transport_header,
)

PY_ADDR, WG_ADDR, WG_PORT = "198.51.100.1", "198.51.100.2", 51820
WG_TUN = "198.51.100.129"  # wireguard-go interface address (/25)
PEER_A_TUN, PEER_B_TUN, PEER_C_TUN = "198.51.100.130", "198.51.100.131", "198.51.100.132"
PORT_A, PORT_B, PORT_C = 40001, 40002, 40003
FLOOD = 3000  # copies of one initiation: puts wireguard-go under load (queue >= 128)
FLOOD_ROUNDS = 4  # bursts at most, until a cookie reply comes


# --- tiny IPv4 / ICMP (RFC 791, RFC 792) ---


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def icmp_packet(src: str, dst: str, icmp_type: int, ident: int, seq: int, data: bytes) -> bytes:
    icmp = struct.pack("!BBHHH", icmp_type, 0, 0, ident, seq) + data
    icmp = icmp[:2] + struct.pack("!H", _csum(icmp)) + icmp[4:]
    hdr = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0, 0, 64, 1, 0,
        socket.inet_aton(src), socket.inet_aton(dst),
    )
    hdr = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
    return hdr + icmp


def parse_icmp(packet: bytes) -> dict:
    total = struct.unpack("!H", packet[2:4])[0]
    ihl = (packet[0] & 0x0F) * 4
    icmp = packet[ihl:total]
    t, _, _, ident, seq = struct.unpack("!BBHHH", icmp[:8])
    return {
        "src": socket.inet_ntoa(packet[12:16]), "dst": socket.inet_ntoa(packet[16:20]),
        "proto": packet[9], "type": t, "id": ident, "seq": seq, "data": icmp[8:],
    }


def pad16(p: bytes) -> bytes:
    return p + bytes(-len(p) % 16)  # whitepaper §5.4.6: pad to a multiple of 16


# --- inner side: the Python peer, run inside its namespace ---


def recv_type(sock: socket.socket, kind: int, deadline: float) -> tuple[bytes, tuple]:
    while True:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        data, addr = sock.recvfrom(2048)
        if message_type(data) == kind:
            return data, addr


def inner_initiator(v: dict) -> dict:
    """Scenario A: send the stored initiation, finish the handshake, ping through it."""
    ini = StaticIdentity(bytes.fromhex(v["initiator_private"]))
    res_pub = bytes.fromhex(v["responder_public"])
    hs = Handshake(ini, res_pub, bytes.fromhex(v["preshared_key"]))
    # Recreate the initiator state of the vector (create_initiation is deterministic).
    msg1 = create_initiation(
        ini, hs, sender_index=v["initiator_index"],
        ephemeral_private=bytes.fromhex(v["initiator_ephemeral"]), wall=v["wall"],
    )
    msg1 = CookieGenerator(res_pub).add_macs(msg1, now=0.0)
    assert msg1.hex() == v["initiation"], "initiation differs from the stored vector"

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((PY_ADDR, PORT_A))
    deadline = time.monotonic() + 10
    sock.sendto(bytes.fromhex(v["initiation"]), (WG_ADDR, WG_PORT))
    resp, _ = recv_type(sock, 2, deadline)
    mac1_ok = CookieChecker(ini.public).check_mac1(resp)
    consume_response(ini, resp, lambda idx: hs if idx == hs.local_index else None)
    keys = begin_symmetric_session(hs, now=time.monotonic())

    def send(counter: int, payload: bytes) -> None:
        sealed = aead_encrypt(keys.send_key, counter, pad16(payload) if payload else b"", b"")
        sock.sendto(pack_transport_header(keys.remote_index, counter) + sealed, (WG_ADDR, WG_PORT))

    send(0, b"")  # keepalive: confirms the session to the responder (whitepaper §6.5)
    send(1, icmp_packet(PEER_A_TUN, WG_TUN, 8, 0x5744, 1, b"wgdisco interop A"))
    while True:
        data, _ = recv_type(sock, 4, deadline)
        m = MessageTransport.unpack(data)
        plain = aead_decrypt(keys.receive_key, m.counter, m.content, b"")
        if plain:  # skip keepalives
            break
    reply = parse_icmp(plain)
    return {
        "response_mac1_ok": mac1_ok,
        "remote_index": keys.remote_index,
        "echo_reply_ok": reply["type"] == 0 and reply["data"] == b"wgdisco interop A"
        and reply["src"] == WG_TUN and reply["dst"] == PEER_A_TUN,
    }


def inner_responder(peer_private: str, wg_public: str) -> dict:
    """Scenario B: answer wireguard-go's initiation, then answer its ping."""
    me = StaticIdentity(bytes.fromhex(peer_private))
    wg_pub = bytes.fromhex(wg_public)
    hs = Handshake(me, wg_pub)
    checker, generator = CookieChecker(me.public), CookieGenerator(wg_pub)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((PY_ADDR, PORT_B))
    print("bound", file=sys.stderr, flush=True)  # the outer side starts wireguard-go's ping now
    deadline = time.monotonic() + 15
    init, addr = recv_type(sock, 1, deadline)
    mac1_ok = checker.check_mac1(init)
    consume_initiation(me, init, lambda pk: hs if pk == wg_pub else None, now=time.monotonic())
    resp = create_response(me, hs, sender_index=0x0B0B0B0B, ephemeral_private=clamp(os.urandom(32)))
    sock.sendto(generator.add_macs(resp, now=time.monotonic()), addr)
    keys = begin_symmetric_session(hs, now=time.monotonic())
    while True:
        data, addr = recv_type(sock, 4, deadline)
        m = MessageTransport.unpack(data)
        plain = aead_decrypt(keys.receive_key, m.counter, m.content, b"")
        if plain:
            break
    req = parse_icmp(plain)
    echo = icmp_packet(PEER_B_TUN, req["src"], 0, req["id"], req["seq"], req["data"])
    sealed = aead_encrypt(keys.send_key, 0, pad16(echo), b"")
    sock.sendto(pack_transport_header(keys.remote_index, 0) + sealed, addr)
    return {
        "initiation_mac1_ok": mac1_ok,
        "echo_request_ok": req["type"] == 8 and req["dst"] == PEER_B_TUN and req["src"] == WG_TUN,
    }


def drain(sock: socket.socket, quiet: float, limit: float) -> list[bytes]:
    """Datagrams until `quiet` seconds pass without one after the first (or `limit` in all): the
    first may take longer than `quiet` on a loaded machine (wireguard-go works through a flood)."""
    out, end = [], time.monotonic() + limit
    while time.monotonic() < end:
        sock.settimeout(quiet if out else max(end - time.monotonic(), 0.001))
        try:
            out.append(sock.recv(2048))
        except TimeoutError:
            break
    return out


def inner_cookie(peer_private: str, wg_public: str) -> dict:
    """Scenario C: load wireguard-go, take its cookie, get through with mac2 (whitepaper §5.3)."""
    me = StaticIdentity(bytes.fromhex(peer_private))
    wg_pub = bytes.fromhex(wg_public)
    gen, fresh_gen = CookieGenerator(wg_pub), CookieGenerator(wg_pub)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    sock.bind((PY_ADDR, PORT_C))
    wall = time.time()

    def initiation(g: CookieGenerator, hs: Handshake, index: int, wall: float) -> bytes:
        eph = clamp(os.urandom(32))
        msg = create_initiation(me, hs, sender_index=index, ephemeral_private=eph, wall=wall)
        return g.add_macs(msg, now=time.monotonic())

    flood = initiation(gen, Handshake(me, wg_pub), 0xC0C0C000, wall)
    replies: list[bytes] = []
    # wireguard-go is "under load" while its handshake queue holds >= 128 (device.IsUnderLoad):
    # on a busy machine one burst may be worked off as it arrives, so up to FLOOD_ROUNDS bursts
    # (bounded: at most 4 x 3,000 datagrams on a veth inside the test's own namespaces)
    for _ in range(FLOOD_ROUNDS):
        for _ in range(FLOOD):
            sock.sendto(flood, (WG_ADDR, WG_PORT))
        replies += drain(sock, quiet=0.2, limit=3.0)
        if any(r[0] == 3 for r in replies):
            break
    kinds = [message_type(r) for r in replies]
    cookie = next(r for r in replies if r[0] == 3)
    gen.consume_reply(cookie, now=time.monotonic())  # AuthError if it does not authenticate

    # B carries mac2 from the cookie; C has none. Under load only B may get an answer.
    hs_b, hs_c = Handshake(me, wg_pub), Handshake(me, wg_pub)
    msg_b = initiation(gen, hs_b, 0xC0C0C001, wall + 1)
    msg_c = initiation(fresh_gen, hs_c, 0xC0C0C002, wall + 2)
    sock.sendto(msg_b, (WG_ADDR, WG_PORT))
    sock.sendto(msg_c, (WG_ADDR, WG_PORT))
    out = {"flood_responses": kinds.count(2), "flood_cookie_replies": kinds.count(3),
           "cookie_consumed": True, "mac2_set": msg_b[-16:] != bytes(16),
           "b_answered": False, "c_got_cookie": False, "c_not_answered": True}
    for r in drain(sock, quiet=0.5, limit=3.0):
        receiver = struct.unpack_from("<I", r, 8 if r[0] == 2 else 4)[0]
        if r[0] == 2 and receiver == 0xC0C0C001:
            consume_response(me, r, lambda idx: hs_b)
            keys = begin_symmetric_session(hs_b, now=time.monotonic())
            keepalive = pack_transport_header(keys.remote_index, 0) + aead_encrypt(keys.send_key, 0, b"", b"")
            sock.sendto(keepalive, (WG_ADDR, WG_PORT))
            out["b_answered"] = True
        elif r[0] == 3 and receiver == 0xC0C0C002:
            fresh_gen.consume_reply(r, now=time.monotonic())
            out["c_got_cookie"] = True
        elif r[0] == 2 and receiver == 0xC0C0C002:
            out["c_not_answered"] = False  # no mac2 under load must not get a response
    return out


# --- outer side: namespaces and wireguard-go ---


def sh(*args: str, ns: str | None = None, check: bool = True) -> str:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {out.stderr.strip()}")
    return out.stdout


def start_inner(ns: str, *args: str) -> subprocess.Popen[str]:
    cmd = ["ip", "netns", "exec", ns, sys.executable, __file__, "--inner", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_inner(proc: subprocess.Popen[str], what: str) -> dict:
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"inner {what} failed: {err.strip()}")
    return json.loads(out)


def run_inner(ns: str, *args: str) -> dict:
    return finish_inner(start_inner(ns, *args), args[0])


def one_vector(v: dict, cookie_scenario: bool, prefix: str | None = None) -> dict:
    """Run the scenarios for one transcript; ``prefix`` names the namespaces (a lab's unique prefix,
    wgdisco/lab/netns.py; by default a new one of the same pattern)."""
    tag = secrets.token_hex(3)
    prefix = prefix or f"wgd{tag}-"
    ns_wg, ns_py, iface = f"{prefix}wg", f"{prefix}py", f"wgv{tag}"
    proc = None
    keyfile = pathlib.Path(f"/tmp/{iface}.key")
    pskfile = pathlib.Path(f"/tmp/{iface}.psk")
    try:
        sh("ip", "netns", "add", ns_wg)
        sh("ip", "netns", "add", ns_py)
        sh("ip", "link", "add", f"{iface}a", "netns", ns_py, "type", "veth",
           "peer", "name", f"{iface}b", "netns", ns_wg)
        for ns, dev, addr in ((ns_py, f"{iface}a", PY_ADDR), (ns_wg, f"{iface}b", WG_ADDR)):
            sh("ip", "addr", "add", f"{addr}/30", "dev", dev, ns=ns)
            sh("ip", "link", "set", dev, "up", ns=ns)
            sh("ip", "link", "set", "lo", "up", ns=ns)

        env = dict(os.environ, WG_PROCESS_FOREGROUND="1")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns_wg, "wireguard-go", "-f", iface],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        sock_path = pathlib.Path(f"/var/run/wireguard/{iface}.sock")
        for _ in range(100):
            if sock_path.exists():
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("wireguard-go did not start")

        peer_b_private, peer_c_private = clamp(os.urandom(32)), clamp(os.urandom(32))
        keyfile.write_text(key_to_base64(bytes.fromhex(v["responder_private"])) + "\n")
        pskfile.write_text(key_to_base64(bytes.fromhex(v["preshared_key"])) + "\n")
        keyfile.chmod(0o600)
        pskfile.chmod(0o600)
        init_pub = key_to_base64(bytes.fromhex(v["initiator_public"]))
        sh("wg", "set", iface, "private-key", str(keyfile), "listen-port", str(WG_PORT),
           "peer", init_pub, "preshared-key", str(pskfile), "allowed-ips", f"{PEER_A_TUN}/32",
           "peer", key_to_base64(public_key(peer_b_private)), "allowed-ips", f"{PEER_B_TUN}/32",
           "endpoint", f"{PY_ADDR}:{PORT_B}",
           "peer", key_to_base64(public_key(peer_c_private)), "allowed-ips", f"{PEER_C_TUN}/32", ns=ns_wg)
        sh("ip", "addr", "add", f"{WG_TUN}/25", "dev", iface, ns=ns_wg)
        sh("ip", "link", "set", iface, "up", ns=ns_wg)

        result = {"name": v["name"]}
        result["A"] = run_inner(ns_py, "A", json.dumps(v))

        inner_b = start_inner(ns_py, "B", peer_b_private.hex(), v["responder_public"])
        assert inner_b.stderr is not None
        ready = inner_b.stderr.readline()  # its socket is bound: the first initiation will find it
        if ready.strip() != "bound":
            inner_b.kill()
            raise RuntimeError(f"inner B did not start: {ready}{inner_b.communicate()[1]}")
        ping = subprocess.Popen(["ip", "netns", "exec", ns_wg, "ping", "-c", "1", "-W", "10", PEER_B_TUN],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        result["B"] = finish_inner(inner_b, "B")
        result["B"]["ping_ok"] = ping.wait(timeout=20) == 0
        if cookie_scenario:
            result["C"] = run_inner(ns_py, "C", peer_c_private.hex(), v["responder_public"])

        dump = sh("wg", "show", iface, "dump", ns=ns_wg).strip().splitlines()[1:]
        peers = {}
        for line in dump:
            f = line.split("\t")
            peers[f[0]] = {"endpoint": f[2], "latest_handshake": int(f[4]),
                           "rx": int(f[5]), "tx": int(f[6])}
        result["wg_show"] = peers
        return result
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        for ns in (ns_wg, ns_py):
            sh("ip", "netns", "del", ns, check=False)
        for p in (keyfile, pskfile, pathlib.Path(f"/var/run/wireguard/{iface}.sock")):
            p.unlink(missing_ok=True)


def check(result: dict) -> list[str]:
    problems = []
    for scenario in ("A", "B", "C"):
        for k, ok in result.get(scenario, {}).items():
            if isinstance(ok, bool) and not ok:
                problems.append(f"{result['name']}: {scenario}.{k} failed")
    for pub, p in result["wg_show"].items():
        if p["endpoint"] == "(none)":  # a peer no scenario used in this run
            continue
        if p["latest_handshake"] == 0 or p["rx"] == 0 or p["tx"] == 0:
            problems.append(f"{result['name']}: wg show reports no handshake/traffic for {pub}")
    return problems


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--inner":
        if sys.argv[2] == "A":
            out = inner_initiator(json.loads(sys.argv[3]))
        elif sys.argv[2] == "B":
            out = inner_responder(sys.argv[3], sys.argv[4])
        else:
            out = inner_cookie(sys.argv[3], sys.argv[4])
        print(json.dumps(out))
        return 0
    if os.geteuid() != 0 or not all(shutil.which(b) for b in ("wireguard-go", "wg", "ip", "ping")):
        print("needs root and wireguard-go, wg, ip, ping", file=sys.stderr)
        return 2
    vectors = json.loads((HERE / "handshake.json").read_text())["vectors"]
    problems = []
    for n, v in enumerate(vectors):
        result = one_vector(v, cookie_scenario=n == 0)
        print(json.dumps(result, indent=2))
        problems += check(result)
    for p in problems:
        print("FAIL:", p)
    print("interop OK" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
