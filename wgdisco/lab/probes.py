"""Helpers around ``udpecho.py``: learn the source address a NAT gives us."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from .netns import Host, LabError, Proc

UDPECHO = Path(__file__).with_name("udpecho.py")


def _hostport(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def split_hostport(text: str) -> tuple[str, int]:
    """``"198.51.100.1:4000"`` / ``"[2001:db8::1]:4000"`` -> (ip, port)."""
    if text.startswith("["):
        ip, _, port = text[1:].partition("]:")
    else:
        ip, _, port = text.rpartition(":")
    return ip, int(port)


def udp_echo_server(host: Host, *ports: int, bind: str = "0.0.0.0") -> Proc:
    """Start an echo server on ``host`` answering with the observed source; waits until bound."""
    proc = host.popen([sys.executable, str(UDPECHO), "serve", "--bind", bind, *map(str, ports)],
                      name=f"{host.name}-udpecho")
    proc.wait_for(r"^READY")
    return proc


def udp_probe(
    host: Host, targets: Sequence[tuple[str, int]], *, local_port: int = 0, timeout: float = 3.0
) -> list[tuple[str, int]]:
    """From one socket on ``host`` (``local_port``), ask each echo server what it saw."""
    argv = [sys.executable, str(UDPECHO), "probe", "--port", str(local_port), "--timeout", str(timeout)]
    cp = host.run(argv + [_hostport(ip, port) for ip, port in targets], check=False,
                  timeout=timeout * len(targets) + 10)
    if cp.returncode != 0:
        raise LabError(f"udp probe from {host.name} failed:\n{cp.stdout}{cp.stderr}")
    return [split_hostport(line) for line in cp.stdout.split()]
