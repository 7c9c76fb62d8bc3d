"""WireGuard nodes in lab hosts: wgdisco (ours) and wireguard-go + wg (the reference).

Both kinds get the same description (keys, inner addresses, listen port, peers),
so a test can swap one for the other. Interface names are unique per lab run,
because /run/wireguard/<iface>.sock is one directory for every namespace.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .netns import Host, LabError, Proc
from wgdisco.proto import keys

# The directory holding this wgdisco package (a source checkout or site-packages): the nodes'
# PYTHONPATH, so that they run the same wgdisco as the lab, whatever their working directory.
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
SOCKET_DIR = Path("/var/run/wireguard")


def keypair() -> tuple[str, str]:
    private = keys.generate_private_key(os.urandom(32))
    return keys.key_to_base64(private), keys.key_to_base64(keys.public_key(private))


@dataclass
class PeerSpec:
    public: str
    allowed_ips: list[str]
    endpoint: str | None = None
    keepalive: int = 0


@dataclass
class Node:
    host: Host
    kind: str  # "wgdisco" or "wireguard-go"
    iface: str
    private: str
    public: str
    addresses: list[str]  # inner, with prefix length
    listen_port: int = 51820
    peers: list[PeerSpec] = field(default_factory=list)
    proc: Proc | None = None
    discovery: dict[str, str] = field(default_factory=lambda: {"mDNS": "off"})  # [Discovery] for wgdisco
    binary: str = "wireguard-go"  # the wireguard-go to run (bench/anchor.py fetches another version)
    env: dict[str, str] = field(default_factory=dict)  # extra environment, e.g. WGDISCO_DATAPATH

    @property
    def inner4(self) -> str:
        return next(a.split("/")[0] for a in self.addresses if ":" not in a)

    @property
    def inner6(self) -> str:
        return next(a.split("/")[0] for a in self.addresses if ":" in a)

    def host_routes(self) -> list[str]:
        return [f"{a.split('/')[0]}/{32 if ':' not in a else 128}" for a in self.addresses]

    def peer_spec(self, endpoint: str | None = None, keepalive: int = 0) -> PeerSpec:
        """How another node names this one as its peer."""
        return PeerSpec(self.public, self.host_routes(), endpoint, keepalive)

    def config_text(self) -> str:
        lines = ["[Interface]", f"PrivateKey = {self.private}", f"ListenPort = {self.listen_port}",
                 "Address = " + ", ".join(self.addresses)]
        if self.discovery:
            lines += ["", "[Discovery]"] + [f"{k} = {v}" for k, v in self.discovery.items()]
        for p in self.peers:
            lines += ["", "[Peer]", f"PublicKey = {p.public}", "AllowedIPs = " + ", ".join(p.allowed_ips)]
            if p.endpoint:
                lines.append(f"Endpoint = {p.endpoint}")
            if p.keepalive:
                lines.append(f"PersistentKeepalive = {p.keepalive}")
        return "\n".join(lines) + "\n"

    # --- start / stop -----------------------------------------------------------

    def start(self, *, timing: dict | None = None, load_threshold: int | None = None, up_timeout: float = 15.0) -> Node:
        if self.kind == "wgdisco":
            self._start_wgdisco(timing, load_threshold, up_timeout)
        else:
            self._start_wireguard_go()
        return self

    def _start_wgdisco(self, timing: dict | None, load_threshold: int | None, up_timeout: float = 15.0) -> None:
        conf = self.host.lab.logdir / f"{self.iface}.conf"
        conf.write_text(self.config_text())
        conf.chmod(0o600)
        argv = [sys.executable, "-m", "wgdisco.lab.run_tunnel", str(conf)]
        if timing:
            argv += ["--timing", json.dumps(timing)]
        if load_threshold is not None:
            argv += ["--load-threshold", str(load_threshold)]
        self.proc = self.host.popen(argv, name=f"wgdisco-{self.iface}", env={"PYTHONPATH": str(PACKAGE_ROOT), **self.env})
        self.proc.wait_for(r"interface \S+ up:", timeout=up_timeout, stream="stderr")

    def _start_wireguard_go(self) -> None:
        self.proc = self.host.popen([self.binary, "-f", self.iface], name=f"wggo-{self.iface}",
                                    env={"LOG_LEVEL": "verbose", **self.env})
        sock = SOCKET_DIR / f"{self.iface}.sock"
        deadline = time.monotonic() + 10
        while not sock.exists():
            if not self.proc.alive() or time.monotonic() > deadline:
                raise LabError(f"wireguard-go did not start: {self.proc.stderr()}")
            time.sleep(0.05)
        keyfile = self.host.lab.logdir / f"{self.iface}.key"
        keyfile.write_text(self.private + "\n")
        keyfile.chmod(0o600)
        self.host.run(["wg", "set", self.iface, "private-key", str(keyfile), "listen-port", str(self.listen_port)])
        for p in self.peers:
            argv = ["wg", "set", self.iface, "peer", p.public, "allowed-ips", ",".join(p.allowed_ips)]
            if p.endpoint:
                argv += ["endpoint", p.endpoint]
            if p.keepalive:
                argv += ["persistent-keepalive", str(p.keepalive)]
            self.host.run(argv)
        for a in self.addresses:
            self.host.ip("addr", "add", a, "dev", self.iface)
        self.host.ip("link", "set", self.iface, "mtu", "1420", "up")
        for p in self.peers:
            for net in p.allowed_ips:
                self.host.ip("-6" if ":" in net else "-4", "route", "replace", net, "dev", self.iface)

    def stop(self) -> int | None:
        return self.proc.stop(grace=5.0) if self.proc is not None else None

    # --- observation ----------------------------------------------------------------

    def dump(self) -> dict[str, dict]:
        """`wg show IFACE dump`, per peer public key (works for both kinds: it is the UAPI)."""
        out = self.host.run(["wg", "show", self.iface, "dump"]).stdout.splitlines()
        peers = {}
        for line in out[1:]:
            f = line.split("\t")
            peers[f[0]] = {
                "endpoint": None if f[2] == "(none)" else f[2],
                "allowed_ips": f[3],
                "latest_handshake": int(f[4]),
                "rx": int(f[5]),
                "tx": int(f[6]),
                "keepalive": f[7],
            }
        return peers


def pair(lab, kind_a: str, kind_b: str, *, outer6: bool = False, endpoint_on: str = "a",
         binary: str = "wireguard-go", env: dict[str, str] | None = None, **start) -> tuple[Node, Node]:
    """Two nodes on one link (198.51.100.0/24 and 2001:db8:1::/64), peered with each other.

    ``endpoint_on`` names which side knows the other's endpoint ("a", "b", "both"):
    a side without it can only answer, so it is the responder. ``binary`` is the wireguard-go
    to run, ``env`` extra environment for both nodes (e.g. ``WGDISCO_DATAPATH``).
    """
    ha, hb = lab.host("a"), lab.host("b")
    lab.link(ha, hb, "198.51.100.1/24", "198.51.100.2/24", "2001:db8:1::1/64", "2001:db8:1::2/64")
    tag = lab.prefix[3:9]
    ka, kb = keypair(), keypair()
    a = Node(ha, kind_a, f"wa{tag}", *ka, ["10.9.0.1/24", "fd00:9::1/64"])
    b = Node(hb, kind_b, f"wb{tag}", *kb, ["10.9.0.2/24", "fd00:9::2/64"])
    for node in (a, b):
        node.binary, node.env = binary, dict(env or {})
    outer_a = "[2001:db8:1::1]:51820" if outer6 else "198.51.100.1:51820"
    outer_b = "[2001:db8:1::2]:51820" if outer6 else "198.51.100.2:51820"
    a.peers = [b.peer_spec(outer_b if endpoint_on in ("a", "both") else None)]
    b.peers = [a.peer_spec(outer_a if endpoint_on in ("b", "both") else None)]
    b.start(**start)
    a.start(**start)
    return a, b
