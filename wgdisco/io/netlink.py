"""Interface, address and route configuration over rtnetlink (pyroute2 ``IPRoute``).

Everything acts in the network namespace of the calling thread, like ``ip(8)``.
These calls block (briefly) and pyroute2's synchronous ``IPRoute`` runs its own
event loop, so they cannot be called from inside a running asyncio loop: the
daemon calls them through ``asyncio.to_thread``.  Calling them from a running
loop raises LocalError rather than pyroute2's obscure RuntimeError.

Routes are added the way wg-quick does with ``ip route add NET dev IFACE``
(protocol ``boot``, link scope): a network already reached through the
interface's own on-link address route (the ``proto kernel`` route the kernel
adds for ``10.0.0.1/24``) is skipped.  A default route (``0.0.0.0/0``,
``::/0``) with ``Table = auto`` is wg-quick's policy routing, built by the
caller from ``free_table`` and ``add_policy_rules``: the route goes into its
own table N, the tunnel's socket carries fwmark N, and two rules per family
send everything unmarked there while the main table keeps its more specific
routes (wg-quick's ``add_default``)::

    32764: from all lookup main suppress_prefixlength 0
    32765: not from all fwmark N lookup N

Netlink failures become LocalError naming the interface and the object.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
from collections.abc import Iterable
from socket import AF_INET, AF_INET6

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from wgdisco.errors import LocalError

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

RT_TABLE_MAIN = 254
RTPROT_KERNEL = 2  # routes the kernel adds for an address
RTPROT_BOOT = 3  # what `ip route add` uses; also our marker when deleting
RT_SCOPE_LINK = 253
FIB_RULE_INVERT = 0x2  # <linux/fib_rules.h>: the "not" of `ip rule add not fwmark ...`
PRIO_SUPPRESS, PRIO_NOT_MARKED = 32764, 32765  # what wg-quick's rules get on a fresh system
IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40


def _iproute() -> IPRoute:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return IPRoute()
    raise LocalError("wgdisco.io.netlink blocks: call it through asyncio.to_thread() from the event loop")


def _index(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def _require_index(ipr: IPRoute, name: str) -> int:
    index = _index(ipr, name)
    if index is None:
        raise LocalError(f"interface {name} does not exist")
    return index


def _family(net: IPNetwork | IPInterface) -> int:
    return AF_INET if net.version == 4 else AF_INET6


def _scope(net: IPNetwork) -> int:
    return RT_SCOPE_LINK if net.version == 4 else 0  # `ip route add NET dev X`; IPv6 has no scopes


def link_exists(name: str) -> bool:
    """True if an interface called ``name`` exists in this namespace."""
    with _iproute() as ipr:
        return _index(ipr, name) is not None


def configure_link(name: str, *, addresses: Iterable[IPInterface], mtu: int, up: bool = True,
                   link_local: bool = True) -> None:
    """Set the MTU, add ``addresses`` (already present ones are kept) and bring the link up.

    Additive: addresses not in the list are left alone.  Note that an MTU below
    1280 disables IPv6 on the link, so IPv6 addresses then fail to add.
    ``link_local=False``: no IPv6 link-local address is made when the link comes up
    (``addr_gen_mode`` 1, "none"), and one made already goes.
    """
    if not link_local:
        _no_link_local(name)
    with _iproute() as ipr:
        index = _require_index(ipr, name)
        if not link_local:
            for msg in ipr.get_addr(index=index, family=AF_INET6):
                address = msg.get_attr("IFA_ADDRESS")
                if address and ipaddress.ip_address(address).is_link_local:
                    ipr.addr("del", index=index, address=address, prefixlen=msg["prefixlen"])
        try:
            ipr.link("set", index=index, mtu=mtu)
        except NetlinkError as e:
            raise LocalError(f"cannot set MTU {mtu} on {name}: {e.args[1]}") from e
        for address in addresses:
            try:
                ipr.addr("add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen)
            except NetlinkError as e:
                if e.code != errno.EEXIST:
                    raise LocalError(f"cannot add address {address} to {name}: {e.args[1]}") from e
        if up:
            try:
                ipr.link("set", index=index, state="up")
            except NetlinkError as e:
                raise LocalError(f"cannot bring {name} up: {e.args[1]}") from e


def _no_link_local(name: str) -> None:
    """net.ipv6.conf.<name>.addr_gen_mode = 1 (none) in this network namespace; nothing without IPv6."""
    path = f"/proc/sys/net/ipv6/conf/{name}/addr_gen_mode"
    try:
        with open(path, "w") as f:
            f.write("1\n")
    except FileNotFoundError:
        pass
    except OSError as e:
        raise LocalError(f"cannot turn off IPv6 link-local addresses on {name}: {e.strerror}") from e


def remove_address(name: str, address: IPInterface) -> None:
    """Remove ``address`` from ``name`` (absent already: fine)."""
    with _iproute() as ipr:
        index = _require_index(ipr, name)
        try:
            ipr.addr("del", index=index, address=str(address.ip), prefixlen=address.network.prefixlen)
        except NetlinkError as e:
            if e.code not in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ESRCH):
                raise LocalError(f"cannot remove address {address} from {name}: {e.args[1]}") from e


def _onlink_networks(ipr: IPRoute, index: int) -> list[IPNetwork]:
    """Destinations of the kernel's address routes through interface ``index`` (main table)."""
    nets: list[IPNetwork] = []
    for msg in ipr.route("dump"):
        if (
            msg.get("oif") == index
            and msg.get("table") == RT_TABLE_MAIN
            and msg["proto"] == RTPROT_KERNEL
            and msg.get("dst") is not None
        ):
            nets.append(ipaddress.ip_network(f"{msg.get('dst')}/{msg['dst_len']}", strict=False))
    return nets


def add_routes(name: str, networks: Iterable[IPNetwork], table: int | None = None) -> list[IPNetwork]:
    """Route ``networks`` through interface ``name``; the networks actually added.

    ``table`` None means the main table.  Existing routes (EEXIST) are fine, and
    in the main table a network inside an on-link address route is skipped.
    """
    added: list[IPNetwork] = []
    with _iproute() as ipr:
        index = _require_index(ipr, name)
        onlink = _onlink_networks(ipr, index) if table in (None, RT_TABLE_MAIN) else []
        for net in networks:
            if any(net.version == o.version and net.subnet_of(o) for o in onlink):  # type: ignore[arg-type]
                continue
            try:
                ipr.route(
                    "add",
                    family=_family(net),
                    dst=str(net),
                    oif=index,
                    table=table or RT_TABLE_MAIN,
                    proto=RTPROT_BOOT,
                    scope=_scope(net),
                )
            except NetlinkError as e:
                if e.code != errno.EEXIST:
                    raise LocalError(f"cannot add route {net} dev {name}: {e.args[1]}") from e
            added.append(net)
    return added


def remove_routes(name: str, networks: Iterable[IPNetwork], table: int | None = None) -> None:
    """Remove routes ``add_routes`` made; missing routes or a missing link are ignored.

    Only ``proto boot`` routes match, so the kernel's own address routes stay.
    """
    with _iproute() as ipr:
        index = _index(ipr, name)
        if index is None:
            return  # the routes went with the link
        for net in networks:
            try:
                ipr.route(
                    "del",
                    family=_family(net),
                    dst=str(net),
                    oif=index,
                    table=table or RT_TABLE_MAIN,
                    proto=RTPROT_BOOT,
                    scope=_scope(net),  # IPv4 matches the scope on delete too
                )
            except NetlinkError as e:
                if e.code not in (errno.ESRCH, errno.ENOENT, errno.ENODEV):
                    raise LocalError(f"cannot remove route {net} dev {name}: {e.args[1]}") from e


def delete_link(name: str) -> None:
    """Delete interface ``name``; nothing happens if it is already gone."""
    with _iproute() as ipr:
        index = _index(ipr, name)
        if index is None:
            return
        try:
            ipr.link("del", index=index)
        except NetlinkError as e:
            if e.code != errno.ENODEV:
                raise LocalError(f"cannot delete interface {name}: {e.args[1]}") from e


def delete_link_index(index: int, name: str) -> bool:
    """Delete the link with ifindex ``index``, only if it still exists and is called ``name``.

    For a daemon removing the link it created: after ``ip link del`` an unrelated
    link may have taken the name (a new link gets a new index), so never by name
    alone.  True if this call deleted it; a link gone or renamed is left alone.
    """
    with _iproute() as ipr:
        try:
            [msg] = ipr.link("get", index=index)
            if msg.get("ifname") != name:
                return False
            ipr.link("del", index=index)
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                return False
            raise LocalError(f"cannot delete interface {name} (index {index}): {e.args[1]}") from e
    return True


def interface_addresses(exclude: Iterable[str] = ()) -> list[tuple[str, IPInterface]]:
    """``(ifname, address)`` for every usable address, for announcing local candidates.

    Skipped: interfaces named in ``exclude`` (e.g. the tunnel itself), interfaces
    that are down or loopback, loopback and link-local addresses, and IPv6
    addresses still tentative or whose duplicate address detection failed.
    """
    excluded = set(exclude)
    result: list[tuple[str, IPInterface]] = []
    with _iproute() as ipr:
        links = {
            msg["index"]: msg.get("ifname")
            for msg in ipr.link("dump")
            if msg["flags"] & IFF_UP and not msg["flags"] & IFF_LOOPBACK and msg.get("ifname") not in excluded
        }
        for msg in ipr.addr("dump"):
            ifname = links.get(msg["index"])
            if ifname is None:
                continue
            if msg.get("IFA_FLAGS", msg["flags"]) & (IFA_F_DADFAILED | IFA_F_TENTATIVE):
                continue
            # On point-to-point links IFA_ADDRESS is the peer; IFA_LOCAL is ours.
            local = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
            if local is None:
                continue
            iface = ipaddress.ip_interface(f"{local}/{msg['prefixlen']}")
            if iface.ip.is_loopback or iface.ip.is_link_local:
                continue
            result.append((ifname, iface))
    return result


def default_gateway() -> tuple[str, str] | None:
    """``(gateway, our source address towards it)`` of the main table's IPv4 default route with
    the lowest metric that has a next hop (the gateway port mapping asks, docs/nat-traversal.md);
    None without one."""
    with _iproute() as ipr:
        best: tuple[int, str] | None = None
        for msg in ipr.get_default_routes(family=AF_INET, table=RT_TABLE_MAIN):
            gateway = msg.get_attr("RTA_GATEWAY")
            if gateway is None:
                continue
            metric = msg.get_attr("RTA_PRIORITY") or 0
            if best is None or metric < best[0]:
                best = (metric, gateway)
        if best is None:
            return None
        try:
            found = ipr.route("get", dst=best[1])
        except NetlinkError:
            return None
        source = found[0].get_attr("RTA_PREFSRC") if found else None
        return None if source is None else (best[1], source)


def route_interfaces(lookups: Iterable[tuple[str, str]], fwmark: int = 0) -> list[int | None]:
    """The output interface index of the route from each ``(source, destination)``, as ``ip route
    get DST from SRC mark FWMARK`` resolves it (the lookup the kernel module's send4 makes with a
    remembered source); None where there is no route or the source is no longer ours."""
    out: list[int | None] = []
    with _iproute() as ipr:
        for src, dst in lookups:
            kw = {"mark": fwmark} if fwmark else {}
            try:
                found = ipr.route("get", dst=dst, src=src, **kw)
            except NetlinkError:
                out.append(None)
                continue
            out.append(found[0].get_attr("RTA_OIF") if found else None)
    return out


# --- policy routing for default routes (wg-quick's add_default) ------------------------------


def free_table(start: int = 51820) -> int:
    """The first routing table from ``start`` with no IPv4 or IPv6 route (as wg-quick picks it)."""
    with _iproute() as ipr:
        used = {msg.get("table") for family in (AF_INET, AF_INET6) for msg in ipr.route("dump", family=family)}
    table = start
    while table in used:
        table += 1
    return table


def _rules(family: int, table: int) -> list[dict[str, int]]:
    return [
        {"family": family, "table": RT_TABLE_MAIN, "suppress_prefixlen": 0, "priority": PRIO_SUPPRESS},
        {"family": family, "table": table, "fwmark": table, "flags": FIB_RULE_INVERT, "priority": PRIO_NOT_MARKED},
    ]


def add_policy_rules(versions: Iterable[int], table: int) -> list[dict[str, int]]:
    """Add the two rules per IP version; returns those this call added (for ``remove_policy_rules``).

    A rule that exists already (another tunnel's identical suppress rule) is not
    ours to remove later, so it is left out of the result.
    """
    added: list[dict[str, int]] = []
    with _iproute() as ipr:
        for version in sorted(set(versions)):
            for rule in _rules(AF_INET if version == 4 else AF_INET6, table):
                try:
                    ipr.rule("add", **rule)
                except NetlinkError as e:
                    if e.code != errno.EEXIST:
                        remove_policy_rules(added)
                        raise LocalError(f"cannot add routing rule for table {table}: {e.args[1]}") from e
                    continue
                added.append(rule)
    return added


def remove_policy_rules(rules: Iterable[dict[str, int]]) -> None:
    """Remove rules ``add_policy_rules`` added; ones already gone are fine."""
    rules = list(rules)
    if not rules:
        return
    with _iproute() as ipr:
        for rule in reversed(rules):
            try:
                ipr.rule("del", **rule)
            except NetlinkError as e:
                if e.code not in (errno.ENOENT, errno.ESRCH):
                    raise LocalError(f"cannot remove routing rule for table {rule['table']}: {e.args[1]}") from e


def set_src_valid_mark() -> None:
    """``net.ipv4.conf.all.src_valid_mark = 1`` (wg-quick sets it with an IPv4 default route), so
    reverse-path checks see the mark; in this network namespace."""
    try:
        with open("/proc/sys/net/ipv4/conf/all/src_valid_mark", "w") as f:
            f.write("1")
    except OSError as e:
        raise LocalError(f"cannot set net.ipv4.conf.all.src_valid_mark: {e.strerror}") from e
