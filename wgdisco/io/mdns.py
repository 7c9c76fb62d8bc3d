"""Multicast DNS shell: publish and browse ``_wireguard._udp.local.`` with python-zeroconf.

Theory of operation
-------------------
One ``AsyncZeroconf`` runs on the caller's asyncio loop (``use_asyncio=True``,
never a thread) and only ``async_*`` calls are made.  Records follow the wgsd
layout (../shared/ARCHITECTURE.md, "Records")::

    _wireguard._udp.local.                PTR  <b32>._wireguard._udp.local.
    <b32>._wireguard._udp.local.          SRV  0 0 <port> wg-<b32[:16]>.local.
    wg-<b32[:16]>.local.                  A/AAAA <addresses given to publish()>
    <b32>._wireguard._udp.local.          TXT  the raw strings given, in order

TXT strings go on the wire exactly as given: zeroconf takes the TXT rdata as
bytes (``ServiceInfo(properties=bytes)``), so order (``txtvers=1`` first,
RFC 6763 §6.7) and duplicate or valueless keys are kept.  TTLs are zeroconf's,
those of RFC 6762 §10: 120 s for SRV and address records, 4500 s for PTR and
TXT; TTL 0 only in goodbyes (``unpublish``/``close``, RFC 6762 §10.1).  Each
name is probed before it is announced (RFC 6762 §8.1); zeroconf waits
150-250 ms, then sends three probes 500 ms apart (the RFC says 250 ms) and
announces right after the third, so ``publish`` takes about 1.1 s until the
first announcement and 1.6 s until the third (RFC 6762 §8.3).

Interfaces are chosen by *name*.  ``start()`` turns the names into what
zeroconf binds to: every IPv4 address of the interface (IP_ADD_MEMBERSHIP and
IP_MULTICAST_IF take an address) and, for IPv6, the interface's link-local
address (zeroconf maps it to the interface index for IPV6_JOIN_GROUP and binds
its responder socket to it, so IPv6 mDNS leaves from fe80::/10); an
interface with IPv6 but no link-local address is given by index.
``None`` means every interface zeroconf finds (loopback included).  The
addresses that go into A/AAAA records are not derived from the interfaces:
the caller passes them to ``publish``; ``interface_addresses`` lists the
usable ones.  zeroconf joins its multicast groups once, when it starts: to follow
the network, a caller compares ``bind_choice(names)`` with ``bound`` after each
change and starts a new service when they differ (wgdisco/daemon/discovery.py does).

Browsing: zeroconf's browser callbacks are synchronous, so each Added/Updated
schedules one resolve task per instance (``AsyncServiceInfo.async_request``,
answered from the cache when the announcement carried everything); an event
that arrives while a resolve runs makes it resolve again.  The callback gets a
``Seen`` when what is known about an instance changed, and a ``Removal``
after a goodbye or TTL expiry of an instance it was told about.  Instances
this service publishes itself (heard through multicast loopback) are ignored.
Sightings are hints (ARCHITECTURE.md, "Trust model"): nothing here checks them.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import ifaddr  # zeroconf's own dependency for listing interfaces
from zeroconf import (
    BadTypeInNameException,
    InterfaceChoice,
    IPVersion,
    NonUniqueNameException,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from wgdisco.errors import LocalError
from wgdisco.proto import records

__all__ = [
    "SERVICE_TYPE",
    "IPVersion",
    "MdnsService",
    "Removal",
    "Seen",
    "SightingCallback",
    "decode_txt",
    "encode_txt",
    "FAMILIES",
    "bind_choice",
    "family_text",
    "interface_addresses",
    "server_name",
]

log = logging.getLogger(__name__)


class _NoSocketTracebacks(logging.Filter):
    """zeroconf logs a socket error (ENETUNREACH when an interface lost its address, say)
    as a warning *with a traceback*, once per socket. The message already names the
    socket and the error; a traceback in a daemon's log reads as a crash, so it goes."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], OSError):
            record.exc_info = None
            record.exc_text = None
        return True


logging.getLogger("zeroconf").addFilter(_NoSocketTracebacks())

SERVICE_TYPE = "_wireguard._udp.local."
# RFC 6763 §6.1-6.2 limits: one home, proto/records.py
# wgsd instance labels: lowercase RFC 4648 base32 of a 32-byte key, with its padding (docs/records.md)
WGSD_LABEL = re.compile(r"[a-z2-7]{52}====")
MAX_SIGHTED = 256  # instances remembered (for deduplication and goodbyes); strangers can make many
TRIM_INTERVAL = 1.0  # seconds between trims of zeroconf's cache (_trim_cache)
TXT_STRING_MAX = records.TXT_STRING_MAX
TXT_TOTAL_MAX = records.TXT_LIMIT
LABEL_MAX = 63  # RFC 1035 §2.3.4
RESOLVE_TIMEOUT = 3.0  # seconds for SRV/TXT/A/AAAA after an Added/Updated event


@dataclass(frozen=True)
class Seen:
    """A ``_wireguard._udp`` instance seen on the link (a hint, unauthenticated).

    ``instance`` is the lowercase instance label (the base32 key for wgsd
    records); ``addresses`` holds IPv4 then IPv6 literals, link-local IPv6 only
    with ``%<interface index>`` (the receiving interface); ``txt`` the raw TXT
    strings in wire order; ``server`` the SRV target, lowercase.
    """

    instance: str
    port: int
    addresses: tuple[str, ...]
    txt: tuple[bytes, ...]
    server: str


@dataclass(frozen=True)
class Removal:
    """An instance previously reported by a ``Seen`` is gone (goodbye or TTL expiry)."""

    instance: str


SightingCallback = Callable[[Seen | Removal], object]


# --- TXT rdata (RFC 6763 §6) ---------------------------------------------------


def encode_txt(strings: Sequence[bytes]) -> bytes:
    """TXT rdata from raw strings, in order; no strings gives one empty string (RFC 6763 §6.1)."""
    if not strings:
        return b"\x00"
    out = bytearray()
    for s in strings:
        if not isinstance(s, bytes):
            raise LocalError(f"TXT strings are bytes, not {type(s).__name__}")
        if len(s) > TXT_STRING_MAX:
            raise LocalError(f"TXT string of {len(s)} bytes exceeds {TXT_STRING_MAX}: {s[:32]!r}...")
        out.append(len(s))
        out += s
    if len(out) > TXT_TOTAL_MAX:
        raise LocalError(f"TXT record of {len(out)} bytes exceeds {TXT_TOTAL_MAX}")
    return bytes(out)


def decode_txt(rdata: bytes) -> tuple[bytes, ...]:
    """The strings of TXT rdata, in order; a lone empty string means none (RFC 6763 §6.1).

    A length byte running past the end yields the truncated rest, the way
    zeroconf reads it: the record is a hint, not worth an error.
    """
    strings = []
    pos = 0
    while pos < len(rdata):
        n = rdata[pos]
        strings.append(rdata[pos + 1 : pos + 1 + n])
        pos += 1 + n
    if strings == [b""]:
        return ()
    return tuple(strings)


def server_name(instance: str) -> str:
    """The SRV target published for ``instance``: ``wg-<first 16 characters>.local.``."""
    return records.target_name(instance, "local")


def _check_instance(instance: str) -> str:
    if not instance or len(instance.encode()) > LABEL_MAX or "." in instance:
        raise LocalError(f"bad instance label {instance!r}: 1..{LABEL_MAX} bytes, no dot")
    return instance.lower()


def _check_addresses(addresses: Sequence[str]) -> list[str]:
    if not addresses:
        raise LocalError("publish needs at least one address for the A/AAAA records")
    out = []
    for a in addresses:
        if "%" in a:
            raise LocalError(f"an address record cannot carry a scope: {a!r}")
        try:
            ip = ipaddress.ip_address(a)
        except ValueError:
            raise LocalError(f"not an IP address literal: {a!r}") from None
        out.append(str(ip))
    return out


def _address_key(addr: str) -> tuple[int, int, str]:
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    return ip.version, int(ip), addr


def _usable_addresses(addresses: Sequence[str]) -> tuple[str, ...]:
    """IPv4 then IPv6, sorted; link-local IPv6 only with its ``%<ifindex>`` scope.

    zeroconf knows the scope only of a record that arrived on an IPv6 socket;
    the copy of the same AAAA received over IPv4 (Avahi sends both) has none
    and could not be used as an endpoint, so it is left out until the scoped
    copy arrives (moments later: another Seen).
    """
    usable = [a for a in addresses if "%" in a or not ipaddress.ip_address(a).is_link_local]
    return tuple(sorted(set(usable), key=_address_key))


# --- interfaces -------------------------------------------------------------

IP_MULTICAST_ALL, IPV6_MULTICAST_ALL = 49, 29  # linux/in.h, linux/in6.h (not in Python's socket module)
SO_RCVBUFFORCE = 33  # <asm-generic/socket.h>: ignores net.core.rmem_max, needs CAP_NET_ADMIN
RECEIVE_BUFFER = 1 << 20  # bytes: ~450 mDNS datagrams queued (each costs ~2.3 KiB of buffer), not ~90


def roomy_receive_buffers(zc: Zeroconf) -> None:
    """A LAN's mDNS comes in bursts: every member announces at once after a start, or answers the
    same query. The default receive buffer (net.core.rmem_default, 208 KiB) holds about 90
    datagrams, and a daemon whose event loop is busy for a moment loses the rest in the kernel;
    a lost announcement is heard again only at zeroconf's next query, seconds later. Measured
    (bench/mesh.py, 40 members starting at once on 2 cores, the kernel's drop counts of all
    hosts at the full mesh): 85,000 and 122,000 datagrams dropped with the default buffer,
    13,800-43,000 in four runs with 1 MiB. So zeroconf's listening sockets get 1 MiB (the memory
    is used only while datagrams wait)."""
    for reader in zc.engine.readers:
        try:
            reader.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
        except OSError:  # no CAP_NET_ADMIN: what net.core.rmem_max allows
            try:
                reader.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            except OSError:
                pass


def only_own_groups(zc: Zeroconf) -> None:
    """Hear only the groups zeroconf joined itself, on its own interfaces. Linux hands a socket bound
    to the wildcard address every multicast packet for a group that *any* socket of the host joined
    on *any* interface (``IP_MULTICAST_ALL``, on by default): with a responder such as Avahi on the
    tunnel (docs/mesh.md, "Services across the mesh"), zeroconf would hear the tunnel's mDNS, and
    wgdisco's discovery never runs there. For IPv4 this is enough (the kernel matches group and
    interface). For IPv6 it is not: ``inet6_mc_check`` matches the group only, so ff02::fb from the
    tunnel still reaches a socket that joined it on a LAN interface; those records are hints like
    any other (counted, capped), and only what members sent comes through the tunnel."""
    for reader in zc.engine.readers:
        for level, option in ((socket.IPPROTO_IP, IP_MULTICAST_ALL), (socket.IPPROTO_IPV6, IPV6_MULTICAST_ALL)):
            try:
                reader.sock.setsockopt(level, option, 0)
            except OSError:
                pass  # not this socket's family (an IPv6 option on an IPv4 socket), or an older kernel


def _adapter(name: str, adapters: list[ifaddr.Adapter]) -> ifaddr.Adapter:
    for adapter in adapters:
        if adapter.nice_name == name or adapter.name == name:
            return adapter
    raise LocalError(f"no network interface named {name!r}")


def interface_addresses(interfaces: Sequence[str], *, link_local: bool = False) -> list[str]:
    """IPv4 and IPv6 addresses of the named interfaces, for ``publish``.

    Loopback addresses are never listed; IPv6 link-local only with
    ``link_local=True`` (they need a scope to be used, which a record cannot carry).
    """
    adapters = ifaddr.get_adapters()
    out: list[str] = []
    for name in interfaces:
        for ip in _adapter(name, adapters).ips:
            addr = ipaddress.ip_address(ip.ip if isinstance(ip.ip, str) else ip.ip[0])
            if addr.is_loopback or (addr.version == 6 and addr.is_link_local and not link_local):
                continue
            out.append(str(addr))
    return sorted(set(out), key=_address_key)


# [Discovery] mDNSFamily (config.MDNS_FAMILIES) -> (zeroconf's IP version, prefer_ipv4 for bind_choice)
FAMILIES: dict[str, tuple[IPVersion, bool]] = {
    "auto": (IPVersion.All, True),
    "both": (IPVersion.All, False),
    "ipv4": (IPVersion.V4Only, False),
    "ipv6": (IPVersion.V6Only, False),
}


def bind_choice(interfaces: Sequence[str], ip_version: IPVersion = IPVersion.All, *,
                prefer_ipv4: bool = False) -> tuple[list[str | int], IPVersion]:
    """What zeroconf binds to for the named interfaces, and the IP version that results.

    ``prefer_ipv4`` (``mDNSFamily = auto``): an interface that has an IPv4 address speaks mDNS
    over IPv4 alone, one without over IPv6. Every mDNS message is a multicast that each host on
    the link receives and parses, and a dual-stack responder sends each one twice, once per
    family, with the same records in it (RFC 6762 §20 lets a host use either); so one family
    halves the link's mDNS. AAAA records still travel over IPv4. A host whose interface has no
    IPv4 address speaks IPv6 and is heard by members configured with ``both``.

    LocalError if an interface does not exist or none has a usable address.  A
    caller that follows the network compares this with ``MdnsService.bound``:
    when it differs (an address or interface came or went) the service must be
    started again, since zeroconf joins its groups once, at start.
    """
    adapters = ifaddr.get_adapters()
    v4: list[str] = []
    v6: list[str | int] = []
    for name in interfaces:
        adapter = _adapter(name, adapters)
        v6_ips = [ip.ip[0] for ip in adapter.ips if isinstance(ip.ip, tuple)]
        v4_here = [ip.ip for ip in adapter.ips if isinstance(ip.ip, str)] if ip_version != IPVersion.V6Only else []
        v4 += v4_here
        if ip_version != IPVersion.V4Only and v6_ips and not (prefer_ipv4 and v4_here):
            link_local = [a for a in v6_ips if ipaddress.IPv6Address(a.split("%", 1)[0]).is_link_local]
            v6.append(link_local[0].split("%", 1)[0] if link_local else socket.if_nametoindex(name))
    if v4 and v6:
        return [*v4, *v6], IPVersion.All
    if v4:
        return list(v4), IPVersion.V4Only
    if v6:
        return v6, IPVersion.V6Only
    raise LocalError(f"no usable {ip_version.name} address on interfaces {list(interfaces)}")


def family_text(bound: tuple[list[str | int], IPVersion] | None) -> str:
    """A binding (``MdnsService.bound``) as a log line says it: "IPv4", "IPv6" or "IPv4 and IPv6"."""
    version = IPVersion.All if bound is None else bound[1]
    return {IPVersion.V4Only: "IPv4", IPVersion.V6Only: "IPv6"}.get(version, "IPv4 and IPv6")


# --- the service ----------------------------------------------------------------

CLOSE_YIELDS = 3  # loop iterations after close: the transports' connection_lost callbacks run


async def _collect_closed() -> None:
    """Free a closed zeroconf instance now (issue 17, the soak's RSS slope).

    A Zeroconf is a web of reference cycles (engine, listeners, transports, handlers, its
    cache: about 300 objects), so closing it frees nothing: only the cyclic collector can.
    In the daemon that collector's full pass hardly ever runs (its heap is frozen at start,
    gc.freeze, and allocations and frees balance), so every closed instance, one per mDNS
    rebind (a network change), stayed with everything its cache held: RSS grew by about
    25 kB a minute with a LAN address changing every 90 s. A rebind is rare, and a full
    pass over the small unfrozen heap takes a few milliseconds.
    """
    for _ in range(CLOSE_YIELDS):
        await asyncio.sleep(0)
    gc.collect()



class MdnsService:
    """Publish and browse ``_wireguard._udp.local.`` on the running asyncio loop.

    ``interfaces``: interface names (``None``: all); ``ip_version``: which
    families to speak mDNS on (zeroconf's ``IPVersion``, re-exported here);
    ``bound``: what ``bind_choice`` gave the caller for ``interfaces`` (the daemon
    computes it off the event loop, with its ``mDNSFamily``), else ``start``
    computes it.
    """

    def __init__(
        self,
        interfaces: Sequence[str] | None = None,
        *,
        ip_version: IPVersion = IPVersion.All,
        resolve_timeout: float = RESOLVE_TIMEOUT,
        bound: tuple[list[str | int], IPVersion] | None = None,
    ) -> None:
        self.interfaces = None if interfaces is None else list(interfaces)
        self.ip_version = ip_version
        self.resolve_timeout = resolve_timeout
        self._aiozc: AsyncZeroconf | None = None
        self.bound = bound  # bind_choice() for named interfaces: the caller's, or start()'s
        self._infos: dict[str, AsyncServiceInfo] = {}  # own instances, by lowercase label
        self._browser: AsyncServiceBrowser | None = None
        self._callback: SightingCallback | None = None
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._sighted: dict[str, Seen] = {}  # what each instance said last, at most MAX_SIGHTED
        self.ignored_names = 0  # instance names that cannot be a wgsd record, or that zeroconf refused
        self.unresolved = 0  # Added/Updated instances whose SRV, TXT and addresses did not come within resolve_timeout
        self.trimmed = 0  # instances whose records _trim_cache dropped from zeroconf's cache
        self._trim: asyncio.TimerHandle | None = None

    # -- lifecycle
    async def start(self) -> None:
        """Open the multicast sockets on the chosen interfaces (LocalError if none is usable)."""
        if self._aiozc is not None:
            raise LocalError("MdnsService already started")
        if self.interfaces is None:
            choice: list[str | int] | InterfaceChoice = InterfaceChoice.All
            version = self.ip_version
        else:
            if self.bound is None:
                self.bound = bind_choice(self.interfaces, self.ip_version)
            choice, version = list(self.bound[0]), self.bound[1]
        zc = Zeroconf(interfaces=choice, ip_version=version, use_asyncio=True)
        aiozc = AsyncZeroconf(zc=zc)
        try:
            await zc.async_wait_for_start()
        except BaseException:
            await aiozc.async_close()
            raise
        only_own_groups(zc)
        roomy_receive_buffers(zc)
        self._aiozc = aiozc
        self._trim = asyncio.get_running_loop().call_later(TRIM_INTERVAL, self._trim_cache)

    def _trim_cache(self) -> None:
        """zeroconf caches every record any responder sends, and has no cap of its own (avahi's
        is cache-entries-max = 4096): a stranger inventing instance names would grow it without
        bound. Every TRIM_INTERVAL, past MAX_SIGHTED wgsd instances, the records of instances we
        do not remember (``_sighted``, newest MAX_SIGHTED) and do not publish are dropped."""
        aiozc = self._aiozc
        if aiozc is None:
            return
        self._trim = asyncio.get_running_loop().call_later(TRIM_INTERVAL, self._trim_cache)
        cache = aiozc.zeroconf.cache
        suffix = "." + SERVICE_TYPE
        instances = [n for n in cache.names() if n.lower().endswith(suffix)]
        if len(instances) <= MAX_SIGHTED:
            return
        keep = {f"{label}{suffix}" for label in list(self._sighted) + list(self._infos)}
        gone = {n for n in instances if n.lower() not in keep}
        doomed = []
        for name in gone:
            for record in cache.async_entries_with_name(name):
                doomed.append(record)
                server = getattr(record, "server", None)  # SRV: the target's A/AAAA go too
                if server:
                    doomed.extend(cache.async_entries_with_name(server))
        doomed.extend(r for r in cache.async_entries_with_name(SERVICE_TYPE) if getattr(r, "alias", "") in gone)
        cache.async_remove_records(doomed)
        self.trimmed += len(gone)

    async def close(self) -> None:
        """Stop browsing, send goodbyes for every published instance, close the sockets."""
        aiozc = self._aiozc
        if aiozc is None:
            return
        if self._trim is not None:
            self._trim.cancel()
            self._trim = None
        if self._browser is not None:
            await self._browser.async_cancel()  # no more events, so no new resolve tasks
            self._browser = None
        tasks = list(self._resolving.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._resolving.clear()
        self._aiozc = None
        await aiozc.async_close()  # async_unregister_all_services: goodbyes, RFC 6762 §10.1
        self._infos.clear()
        del aiozc
        await _collect_closed()

    async def __aenter__(self) -> MdnsService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _zc(self) -> AsyncZeroconf:
        if self._aiozc is None:
            raise LocalError("MdnsService is not started")
        return self._aiozc

    # -- publishing
    def _info(self, instance: str, port: int, addresses: Sequence[str], txt: Sequence[bytes]) -> AsyncServiceInfo:
        if not 0 < port <= 65535:
            raise LocalError(f"port {port} is out of range 1..65535")
        return AsyncServiceInfo(
            SERVICE_TYPE,
            f"{instance}.{SERVICE_TYPE}",
            port=port,
            properties=encode_txt(txt),
            server=server_name(instance),
            parsed_addresses=_check_addresses(addresses),
        )

    async def publish(self, instance: str, port: int, addresses: Sequence[str], txt: Sequence[bytes]) -> None:
        """Probe for, then announce ``<instance>._wireguard._udp.local.``.

        Returns once the announcements (RFC 6762 §8.3) are sent.  LocalError if
        the instance is already published here, or if another responder on the
        link answers the probe (the same key on another node).
        """
        label = _check_instance(instance)
        info = self._info(label, port, addresses, txt)
        aiozc = self._zc()
        if label in self._infos:
            raise LocalError(f"instance {label} is already published (use update)")
        self._infos[label] = info  # from now on our own announcements are not sightings
        try:
            announced = await aiozc.async_register_service(info)
        except (NonUniqueNameException, BadTypeInNameException) as e:
            del self._infos[label]
            raise LocalError(f"cannot publish {label}: {type(e).__name__} {e}") from None
        except BaseException:  # cancelled while probing: nothing was registered
            del self._infos[label]
            raise
        await announced

    async def update(self, instance: str, port: int, addresses: Sequence[str], txt: Sequence[bytes]) -> None:
        """Replace a published instance's port, addresses and TXT; re-announced at once.

        Cache-flush records (RFC 6762 §10.2) make listeners drop the old
        SRV/TXT/A/AAAA data one second later; a listener that resolves at once
        (our browser does) may report old and new addresses together until then.
        """
        label = _check_instance(instance)
        info = self._info(label, port, addresses, txt)
        aiozc = self._zc()
        if label not in self._infos:
            raise LocalError(f"instance {label} is not published")
        self._infos[label] = info
        await (await aiozc.async_update_service(info))

    async def unpublish(self, instance: str) -> None:
        """Withdraw one instance with goodbye records (TTL 0, RFC 6762 §10.1)."""
        label = _check_instance(instance)
        aiozc = self._zc()
        info = self._infos.pop(label, None)
        if info is None:
            raise LocalError(f"instance {label} is not published")
        await (await aiozc.async_unregister_service(info))

    @property
    def published(self) -> list[str]:
        """Labels of the instances this service publishes."""
        return list(self._infos)

    # -- browsing
    async def browse(self, callback: SightingCallback) -> None:
        """Browse ``_wireguard._udp.local.``; ``callback`` runs on the loop for each change."""
        aiozc = self._zc()
        if self._browser is not None:
            raise LocalError("already browsing")
        self._callback = callback
        self._browser = AsyncServiceBrowser(aiozc.zeroconf, SERVICE_TYPE, handlers=[self._on_state_change])

    def _on_state_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        # zeroconf calls handlers with keyword arguments of exactly these names.
        suffix = "." + SERVICE_TYPE
        if not name.lower().endswith(suffix):
            return
        label = name[: -len(suffix)].lower()
        if label in self._infos:
            return  # our own records, heard through multicast loopback
        if not WGSD_LABEL.fullmatch(label):
            # not the base32 of a key (wgsd layout, docs/records.md): nothing could come of it, so
            # it costs no resolve and no state (a stranger may invent any number of names)
            self.ignored_names += 1
            return
        if state_change is ServiceStateChange.Removed:
            task = self._resolving.pop(label, None)
            if task is not None:
                task.cancel()
            if self._sighted.pop(label, None) is not None:
                self._deliver(Removal(label))
            return
        if label in self._resolving:
            self._again.add(label)
            return
        self._resolving[label] = asyncio.get_running_loop().create_task(self._resolve(label, name))

    async def _resolve(self, label: str, name: str) -> None:
        aiozc = self._zc()
        try:
            while True:
                self._again.discard(label)
                try:
                    info = AsyncServiceInfo(SERVICE_TYPE, name)
                except (BadTypeInNameException, ValueError):  # zeroconf refuses the name: drop it
                    self.ignored_names += 1
                    return
                found = await info.async_request(aiozc.zeroconf, self.resolve_timeout * 1000)
                if label not in self._again:
                    break
        finally:
            if self._resolving.get(label) is asyncio.current_task():
                del self._resolving[label]
        if not found or info.port is None:
            self.unresolved += 1
            log.debug("mDNS: %s did not resolve within %.1f s", name, self.resolve_timeout)
            return
        sighting = Seen(
            instance=label,
            port=info.port,
            addresses=_usable_addresses(info.parsed_scoped_addresses(IPVersion.All)),
            txt=decode_txt(info.text or b""),
            server=(info.server or "").lower(),
        )
        if self._sighted.get(label) != sighting:
            self._sighted.pop(label, None)
            self._sighted[label] = sighting  # newest last: the oldest go first past the cap
            while len(self._sighted) > MAX_SIGHTED:
                del self._sighted[next(iter(self._sighted))]
            self._deliver(sighting)

    def replay(self) -> int:
        """Hand every instance's last ``Seen`` to the callback again (the caller's view of them
        changed, e.g. a new mesh key); how many."""
        if self._callback is None:
            return 0
        seen = list(self._sighted.values())
        for sighting in seen:
            self._deliver(sighting)
        return len(seen)

    def _deliver(self, event: Seen | Removal) -> None:
        assert self._callback is not None
        try:
            self._callback(event)
        except Exception:  # a broken consumer must not stop the browser
            log.exception("mDNS sighting callback failed for %r", event)
