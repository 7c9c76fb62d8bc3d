"""The nftables rules wg-quick adds beside its default-route policy routing.

Why
---
With a default route through the tunnel (io/netlink.py, "policy routing") the
tunnel's own datagrams carry fwmark N and take the main table. Their replies
arrive unmarked, so a strict reverse-path filter (``rp_filter = 1``) looks the
source up in table N, finds the tunnel, and drops them. wg-quick's fix, copied
here: conntrack remembers the mark of our outgoing UDP flow (``postmangle``)
and puts it back on the replies (``premangle``); with
``net.ipv4.conf.all.src_valid_mark = 1`` the reverse-path lookup then uses the
main table. A third rule (``preraw``) drops packets for the tunnel's own
addresses that arrive on any other interface from a non-local source, so the
default route cannot be used to inject into the tunnel address.

One table per family, ``wgdisco-<iface>``, made by ``nft -f -`` in one
transaction and deleted at shutdown. The ruleset text comes from the pure
``ruleset``; ``apply``/``remove`` run the ``nft`` binary (LocalError if it
fails; ``available()`` says whether it is installed at all).
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from collections.abc import Iterable

from wgdisco.errors import LocalError

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


def table_name(iface: str) -> str:
    return f"wgdisco-{iface}"


def _pf(version: int) -> str:
    """nft's family name for an IP version."""
    return "ip" if version == 4 else "ip6"


def ruleset(iface: str, mark: int, versions: Iterable[int], addresses: Iterable[IPInterface]) -> str:
    """``nft -f`` input for the IP ``versions`` with a default route (wg-quick's add_default)."""
    table = table_name(iface)
    lines: list[str] = []
    for version in sorted(set(versions)):
        pf = _pf(version)
        lines += [
            f"add table {pf} {table}",
            f"add chain {pf} {table} preraw {{ type filter hook prerouting priority -300; }}",
            f"add chain {pf} {table} premangle {{ type filter hook prerouting priority -150; }}",
            f"add chain {pf} {table} postmangle {{ type filter hook postrouting priority -150; }}",
        ]
        for address in addresses:
            if address.version == version:
                lines.append(f'add rule {pf} {table} preraw iifname != "{iface}" {pf} daddr {address.ip} '
                             "fib saddr type != local drop")
        lines += [
            f"add rule {pf} {table} postmangle meta l4proto udp mark {mark} ct mark set mark",
            f"add rule {pf} {table} premangle meta l4proto udp meta mark set ct mark",
        ]
    return "\n".join(lines) + "\n"


def available() -> bool:
    return shutil.which("nft") is not None


def apply(text: str) -> None:
    """Load a ruleset in one transaction (all or nothing)."""
    proc = subprocess.run(["nft", "-f", "-"], input=text, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise LocalError(f"nft refused the rules: {proc.stderr.strip() or proc.returncode}")


def remove(iface: str, versions: Iterable[int]) -> None:
    """Delete the tables ``apply`` made; ones already gone are fine."""
    for version in sorted(set(versions)):
        pf = _pf(version)
        proc = subprocess.run(["nft", "delete", "table", pf, table_name(iface)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0 and "No such file or directory" not in proc.stderr:
            raise LocalError(f"cannot delete nftables table {pf} {table_name(iface)}: {proc.stderr.strip()}")
