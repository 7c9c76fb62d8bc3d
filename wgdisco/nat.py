"""NAT traversal in the daemon: STUN on the tunnel's own socket.

The STUN transactions (``proto/stun.py``) run on the one UDP socket, so the
mapping they observe is the very mapping WireGuard uses (ARCHITECTURE.md,
"The one socket"). The data-plane thread feeds this object every datagram the
classifier calls STUN and runs its timers, under the tunnel's lock; results
(reflexive addresses, the NAT's mapping behaviour) are handed to discovery on
the asyncio loop, which re-publishes the records with them as candidates.

Only servers the configuration names are ever contacted (``[Discovery] STUN``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import TYPE_CHECKING, Any

from wgdisco.errors import LocalError
from wgdisco.io import udp
from wgdisco.proto.stun import StunClient

if TYPE_CHECKING:
    from wgdisco.daemon import Tunnel

log = logging.getLogger("wgdisco")

STUN_REFRESH = 25.0  # seconds; also keeps the NAT mapping warm (RFC 4787 REQ-5: >= 2 min)


class NatTraversal:
    def __init__(self, tunnel: Tunnel, servers: list[Any]) -> None:
        self.tunnel = tunnel
        self.loop = asyncio.get_running_loop()
        self.stun = StunClient(servers, rng=os.urandom, refresh=STUN_REFRESH,
                               host_of=lambda addr: udp.from_sockaddr(addr)[0])
        self.reflexive: list[tuple[str, int]] = []
        self.behaviour = "unknown"

    @classmethod
    async def create(cls, tunnel: Tunnel) -> NatTraversal | None:
        """From ``[Discovery] STUN``; None when no server is configured (none is ever assumed)."""
        sock = tunnel.sock
        assert sock is not None
        servers = []
        for endpoint in tunnel.cfg.discovery["STUN"]:
            try:
                servers.append(await asyncio.to_thread(udp.to_sockaddr, sock, endpoint.host, endpoint.port))
            except (LocalError, OSError, socket.gaierror) as e:
                log.warning("STUN server %s: cannot resolve: %s", endpoint, e)
        return cls(tunnel, servers) if servers else None

    # --- data-plane thread, tunnel lock held ----------------------------------------

    def start(self, now: float) -> None:
        self.stun.start(now)

    def on_stun(self, data: bytes, addr: Any, now: float) -> bool:
        return self.stun.receive(bytes(data), addr, now)

    def get_timer(self) -> float | None:
        return self.stun.get_timer()

    def handle_timer(self, now: float) -> None:
        self.stun.handle_timer(now)

    def flush(self) -> None:
        """Send the STUN requests due and report what changed (lock held)."""
        sock = self.tunnel.sock
        assert sock is not None
        for data, addr in self.stun.datagrams_to_send():
            try:
                sock.sendto(data, addr)
            except OSError:
                pass  # counted by the transaction timing out; the log line comes from the event
        events = self.stun.pop_events()
        if events:
            self._note(events)

    def restart(self, now: float) -> None:
        """The network changed: ask again at once."""
        self.stun.restart(now)

    def _note(self, events: list[Any]) -> None:
        for event in events:
            kind, server = event[0], udp.from_sockaddr(event[1])
            if kind == "failed":
                log.warning("STUN: no answer from %s:%d", *server)
            elif kind == "changed":
                log.info("STUN: %s:%d now sees us as %s:%d (was %s:%d)", *server, *event[3], *event[2])
        reflexive = self.stun.reflexive()
        behaviour = self.stun.mapping_behaviour()
        if reflexive != self.reflexive or behaviour != self.behaviour:
            self.reflexive, self.behaviour = reflexive, behaviour
            shown = ", ".join(f"{ip}:{port}" for ip, port in reflexive) or "none"
            log.info("STUN: reflexive address %s; NAT mapping %s", shown, behaviour)
            discovery = self.tunnel.discovery
            if discovery is not None:
                self.loop.call_soon_threadsafe(discovery.reflexive_changed, list(reflexive))
