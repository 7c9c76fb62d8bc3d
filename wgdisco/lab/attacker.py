"""A hostile UDP endpoint for the lab (standard library; bounded in time).

    python attacker.py PORT SECONDS

Answers every datagram it receives with: a forged probe response (the request's id and
counter echoed, a random MAC), the datagram reflected back, a random 'WireGuard transport'
packet and plain garbage. Prints JSON {"received": n, "sent": m} at the end.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time


def main() -> int:
    port, seconds = int(sys.argv[1]), float(sys.argv[2])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    sock.settimeout(0.2)
    received = sent = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            data, addr = sock.recvfrom(2048)
        except socket.timeout:
            continue
        received += 1
        forged = []
        if len(data) >= 28 and data[0] == 0xF1:  # a probe request: answer without the key
            observed = b"\x01" + addr[1].to_bytes(2, "big") + socket.inet_aton(addr[0])
            forged.append(b"\xf2" + data[1:4] + os.urandom(8) + data[12:28] + bytes([len(observed)])
                          + observed + os.urandom(16))
        forged += [data, b"\x04\x00\x00\x00" + os.urandom(60), os.urandom(48)]
        for datagram in forged:
            sock.sendto(datagram, addr)
            sent += 1
    print(json.dumps({"received": received, "sent": sent}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
