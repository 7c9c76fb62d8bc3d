"""The port-mapping shell's two I/O parts: a UDP socket for PCP and NAT-PMP, and UPnP IGD
through miniupnpc (SSDP + SOAP; it blocks, so callers run it in a worker thread).

Why a socket of its own, not the tunnel's (ARCHITECTURE.md, "The one socket"): PCP and
NAT-PMP name the port to map in the request (RFC 6887 §11.1 "internal port", RFC 6886 §3.3),
so the request need not leave from it; the gateway answers the socket that asked, from its
port 5351. On the tunnel socket those answers would need a classifier rule (a NAT-PMP answer
begins 0x00 0x80/0x81, a PCP answer 0x02 0x80/0x81: neither WireGuard, STUN nor a probe, but
anybody could send them) and would cross the data plane's thread. A separate ephemeral socket
bound to our address towards the gateway keeps the data plane untouched and lets the core see
(and count) answers from anyone else.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

UPNP_DISCOVER_MS = 1000  # SSDP wait (miniupnpc's default is 2000 ms)
DESCRIPTION = "wgdisco"


def open_socket(source_ip: str) -> socket.socket:
    """A non-blocking UDP socket on ``source_ip`` and an ephemeral port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.bind((source_ip, 0))
    except OSError:
        sock.close()
        raise
    return sock


@dataclass(frozen=True)
class UpnpAnswer:
    found: bool  # an IGD answered SSDP and its description was read
    external: tuple[str, int] | None = None  # the mapping, on success
    lifetime: int = 0  # lease seconds (0: permanent)
    error: str | None = None


class UpnpClient:
    """UPnP IGD by miniupnpc (the PyPI binding). Blocking: one worker thread calls it.

    Any IGD found is used, also one miniupnpc calls "not connected" or whose external
    address is private or reserved (``upnpc -i``): a router behind another NAT has such an
    address, and whether the mapping is reachable is for probes to find out."""

    def __init__(self, discover_ms: int = UPNP_DISCOVER_MS) -> None:
        self._discover_ms = discover_ms
        self._igd: Any = None  # miniupnpc.UPnP with an IGD selected

    def _select(self) -> tuple[Any, str | None]:
        if self._igd is not None:
            return self._igd, None
        try:
            import miniupnpc
        except ImportError as e:  # a wheel that did not build here
            return None, f"miniupnpc not available: {e}"
        u = miniupnpc.UPnP()
        u.discoverdelay = self._discover_ms
        try:
            if u.discover() == 0:
                return None, "no IGD answered SSDP"
            u.selectigd()
        except Exception as e:  # miniupnpc raises plain Exception with its error text
            text = str(e)
            # miniupnpc 2.3's discover() raises strupnperror(0), "Success", when nothing answered
            return None, "no IGD answered SSDP" if text in ("", "Success") else text
        self._igd = u
        return u, None

    def add(self, internal_port: int, external_port: int, lifetime: int) -> UpnpAnswer:
        """AddPortMapping UDP ``external_port`` -> our LAN address:``internal_port``; on a
        conflict AddAnyPortMapping (IGDv2) lets the IGD choose."""
        u, error = self._select()
        if u is None:
            return UpnpAnswer(False, error=error)
        try:
            ext_ip = u.externalipaddress()
            lan = u.lanaddr
            port, lease = external_port or internal_port, lifetime
            try:
                try:
                    u.addportmapping(port, "UDP", lan, internal_port, DESCRIPTION, "", lease)
                except TypeError:  # a binding without the lease argument: permanent (lease 0)
                    lease = 0
                    u.addportmapping(port, "UDP", lan, internal_port, DESCRIPTION, "")
            except Exception as e:
                if "Conflict" not in str(e) and "718" not in str(e):
                    raise
                port = int(u.addanyportmapping(port, "UDP", lan, internal_port, DESCRIPTION, ""))
                lease = 0
            if not ext_ip:
                return UpnpAnswer(True, error="the IGD has no external address")
            return UpnpAnswer(True, (str(ext_ip), port), lease)
        except Exception as e:
            self._igd = None  # look for it again next time
            return UpnpAnswer(True, error=str(e) or type(e).__name__)

    def delete(self, external_port: int) -> str | None:
        """DeletePortMapping on the IGD the last ``add`` used; an error text, or None. Without
        one (nothing was added) nothing is looked for: there is nothing to delete."""
        u = self._igd
        if u is None:
            return "no IGD"
        try:
            u.deleteportmapping(external_port, "UDP")
        except Exception as e:
            return str(e) or type(e).__name__
        return None

    def forget(self) -> None:
        """A network change: discover the IGD again next time."""
        self._igd = None

    def probe(self) -> tuple[str | None, str | None]:
        """For ``wgdisco netcheck``: (the IGD's external address, None) or (None, why not)."""
        u, error = self._select()
        if u is None:
            return None, error
        try:
            return str(u.externalipaddress() or "") or None, None
        except Exception as e:
            return None, str(e) or type(e).__name__
