"""Routes for the peers' AllowedIPs, and wg-quick's policy routing for default routes.

``Routing`` adds the routes as wg-quick does (``Table``), and with ``Table = auto`` puts a
default route in a policy table with two ``ip rule``s per family and an nftables mark-restore
table (io/nft.py). It owns the fwmark decision (FwMark, else the policy table's number, as
wg-quick), the rules and nft tables it added, and removes them at teardown; the routes
themselves go with the link.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from wgdisco import config as configmod
from wgdisco.errors import LocalError
from wgdisco.io import netlink, nft, udp

log = logging.getLogger("wgdisco")


class Routing:
    """One interface's routes, policy table, rules and nft tables."""

    def __init__(self, name: str, iface: configmod.InterfaceConfig) -> None:
        self.name = name
        self.iface = iface  # the running [Interface]: Table, FwMark, Address
        self.fwmark = iface.fwmark  # FwMark, or the policy table's number (wg-quick does the same)
        self.policy_table: int | None = None  # default routes with Table = auto live there
        self.policy_rules: list[dict[str, int]] = []  # the `ip rule`s we added, removed at teardown
        self.nft_versions: set[int] = set()  # IP versions with our nftables table (io/nft.py)

    def default_routes(self, nets: list[Any]) -> list[Any]:
        """The default routes among ``nets`` that get wg-quick's policy routing (Table = auto)."""
        if (self.iface.table or "auto").lower() != "auto":
            return []
        return [n for n in nets if n.prefixlen == 0]

    async def choose_policy_table(self, sock: socket.socket | None) -> None:
        """FwMark if set, else the first free table from 51820; the socket gets it as its mark."""
        if self.policy_table is None:
            self.policy_table = self.fwmark or await asyncio.to_thread(netlink.free_table)
            self.fwmark = self.policy_table
            if sock is not None:  # a reload brought the first default route
                udp.set_fwmark(sock, self.fwmark)

    async def add_routes(self, nets: list[Any], sock: socket.socket | None) -> None:
        """Routes for AllowedIPs, as wg-quick adds them (``Table``); they go with the link.

        With ``Table = auto`` a default route goes into the policy table, and two rules
        per family send all unmarked traffic there while the main table keeps its more
        specific routes (io/netlink.py); the tunnel's own datagrams carry the mark and
        take the main table, so they never loop into the tunnel."""
        table_opt = (self.iface.table or "auto").lower()  # validated by config.parse_table
        if table_opt == "off":
            return
        defaults = self.default_routes(nets)
        others = [n for n in nets if n not in defaults]
        if others:
            table = None if table_opt in ("auto", "main") else int(table_opt)
            await asyncio.to_thread(netlink.add_routes, self.name, others, table)
        if not defaults:
            return
        await self.choose_policy_table(sock)
        assert self.policy_table is not None
        versions = {n.version for n in defaults}
        await asyncio.to_thread(netlink.add_routes, self.name, defaults, self.policy_table)
        self.policy_rules += await asyncio.to_thread(netlink.add_policy_rules, versions, self.policy_table)
        if 4 in versions:
            await asyncio.to_thread(netlink.set_src_valid_mark)
        new = versions - self.nft_versions
        if new and not nft.available():
            log.warning("nft not found: no mark restore for replies; with rp_filter = 1 they are dropped")
        elif new:
            try:
                rules = nft.ruleset(self.name, self.fwmark, new, self.iface.addresses)
                await asyncio.to_thread(nft.apply, rules)
                self.nft_versions |= new
            except LocalError as e:
                log.warning("%s; with rp_filter = 1 the tunnel's replies are dropped", e)
        log.info("default route%s %s through %s: table %d, fwmark 0x%x, rules 'not fwmark' and "
                 "'main suppress_prefixlength 0' (as wg-quick)", "s" if len(defaults) > 1 else "",
                 ", ".join(map(str, defaults)), self.name, self.policy_table, self.fwmark)

    async def remove(self) -> None:
        """Teardown: the policy rules and nft tables we added (the routes went with the link)."""
        if self.policy_rules:
            try:
                await asyncio.to_thread(netlink.remove_policy_rules, self.policy_rules)
            except LocalError as e:
                log.warning("%s", e)
            self.policy_rules = []
        if self.nft_versions:
            try:
                await asyncio.to_thread(nft.remove, self.name, self.nft_versions)
            except LocalError as e:
                log.warning("%s", e)
            self.nft_versions = set()
