"""Configuration: wg-quick INI plus one [Discovery] section.

Theory of operation
-------------------
A config that works with wg-quick(8) works with wgdisco. The parser follows
wg-quick and wg(8) rather than Python's configparser:

- Sections ``[Interface]`` (once), ``[Peer]`` (repeated) and ``[Discovery]``
  (once, wgdisco's own keys). Section and key names are case-insensitive.
- ``#`` starts a comment anywhere on a line (wg-quick strips ``${line%%#*}``);
  blank lines are ignored; whitespace around keys and values is stripped.
- Keys that take lists (Address, DNS, AllowedIPs, Pre/PostUp/Down) accumulate
  over repeated lines, as wg-quick does; other keys: the last value wins.
- Every error names the file, the line and the key (``ConfigError``), and the
  first error stops parsing: a bad config changes nothing.

Discovery keys are declared in ``DISCOVERY_KEYS``; issues that add a feature
add its keys there. An unknown key is an error naming it.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from wgdisco.errors import ConfigError, DecodeError, LocalError
from wgdisco.proto import keys, portmap, tsig
from wgdisco.proto.names import KEY_NAME_PREFIX, MAX_NAME, check_name

_KEY_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]*")  # what a key may be called: never a secret
_KEY_START = re.compile(r"[A-Za-z][A-Za-z0-9]{0,31}")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

# wg-quick: interface names are [a-zA-Z0-9_=+.-]{1,15} (IFNAMSIZ - 1).
IFACE_NAME_RE = re.compile(r"^[a-zA-Z0-9_=+.-]{1,15}$")


@dataclass(frozen=True)
class Endpoint:
    """A peer endpoint as written: ``host:port`` or ``[v6]:port``. The host may be a name."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass
class PeerConfig:
    public_key: bytes
    line: int = 0
    preshared_key: bytes | None = None
    allowed_ips: list[IPNetwork] = field(default_factory=list)
    endpoint: Endpoint | None = None
    persistent_keepalive: int = 0  # seconds, 0 = off


@dataclass
class InterfaceConfig:
    private_key: bytes | None = None
    listen_port: int | None = None
    fwmark: int = 0
    addresses: list[IPInterface] = field(default_factory=list)
    dns: list[str] = field(default_factory=list)
    mtu: int | None = None
    table: str | None = None
    pre_up: list[str] = field(default_factory=list)
    post_up: list[str] = field(default_factory=list)
    pre_down: list[str] = field(default_factory=list)
    post_down: list[str] = field(default_factory=list)
    save_config: bool = False


@dataclass
class Config:
    path: str
    name: str  # interface name: the file stem, as wg-quick
    interface: InterfaceConfig
    peers: list[PeerConfig]
    discovery: DiscoveryConfig
    warnings: list[str] = field(default_factory=list)


# --- value parsers: each raises ValueError with a message for the user ----------


def parse_key(value: str) -> bytes:
    try:
        return keys.key_from_base64(value)
    except DecodeError as e:
        raise ValueError(f"not a valid key ({e})") from None


def parse_port(value: str) -> int:
    if not value.isdigit() or not 0 <= int(value) <= 65535:
        raise ValueError(f"{value!r} is not a port number (0-65535)")
    return int(value)


def parse_fwmark(value: str) -> int:
    if value.lower() == "off":
        return 0
    try:
        mark = int(value, 0)
    except ValueError:
        raise ValueError(f"{value!r} is not a fwmark (a number or 'off')") from None
    if not 0 <= mark <= 0xFFFFFFFF:
        raise ValueError(f"{value!r} is out of range for a fwmark")
    return mark


def parse_keepalive(value: str) -> int:
    if value.lower() == "off":
        return 0
    if not value.isdigit() or not 0 <= int(value) <= 65535:
        raise ValueError(f"{value!r} is not a keepalive interval (1-65535 seconds or 'off')")
    return int(value)


def parse_mtu(value: str) -> int:
    if not value.isdigit() or not 576 <= int(value) <= 65535:
        raise ValueError(f"{value!r} is not an MTU (576-65535)")
    return int(value)


def parse_table(value: str) -> str:
    """``off``, ``auto``, ``main`` or a routing table number (names from rt_tables are not supported)."""
    low = value.lower()
    if low in ("off", "auto", "main") or (value.isdigit() and 0 < int(value) < 2**32):
        return low
    raise ValueError(f"{value!r} is not a routing table (off, auto, main or a number)")


def split_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def parse_address(value: str) -> IPInterface:
    try:
        return ipaddress.ip_interface(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an address (like 10.0.0.1/24 or fd00::1/64)") from None


def parse_network(value: str) -> IPNetwork:
    # wg masks host bits: 10.0.0.1/24 means 10.0.0.0/24.
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not a network (like 10.0.0.0/24 or fd00::/64)") from None


def parse_endpoint(value: str) -> Endpoint:
    """``host:port`` or ``[v6]:port``, as wg(8) accepts them."""
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
        if not sep or not host:
            raise ValueError(f"{value!r} is not an endpoint (IPv6 is written [addr]:port)")
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise ValueError(f"{host!r} in brackets is not an IPv6 address") from None
    else:
        host, sep, port = value.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{value!r} is not an endpoint (host:port)")
        if ":" in host:
            raise ValueError(f"{value!r}: an IPv6 endpoint is written [addr]:port")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{port!r} is not a port number (1-65535)")
    return Endpoint(host, int(port))


def parse_bool(value: str) -> bool:
    low = value.lower()
    if low in ("true", "yes", "on", "1"):
        return True
    if low in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"{value!r} is not a boolean (true/false)")


# --- key tables: lowercase name -> (canonical name, parser, setter) --------------

Setter = Callable[[Any, Any], None]


def _set(attr: str) -> Setter:
    return lambda obj, v: setattr(obj, attr, v)


def _extend(attr: str) -> Setter:
    return lambda obj, v: getattr(obj, attr).extend(v)


def _each(parser: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    return lambda value: [parser(item) for item in split_list(value)]


def _verbatim(value: str) -> list[str]:
    return [value]


INTERFACE_KEYS: dict[str, tuple[str, Callable[[str], Any], Setter]] = {
    "privatekey": ("PrivateKey", parse_key, _set("private_key")),
    "listenport": ("ListenPort", parse_port, _set("listen_port")),
    "fwmark": ("FwMark", parse_fwmark, _set("fwmark")),
    "address": ("Address", _each(parse_address), _extend("addresses")),
    "dns": ("DNS", split_list, _extend("dns")),
    "mtu": ("MTU", parse_mtu, _set("mtu")),
    "table": ("Table", parse_table, _set("table")),
    "preup": ("PreUp", _verbatim, _extend("pre_up")),
    "postup": ("PostUp", _verbatim, _extend("post_up")),
    "predown": ("PreDown", _verbatim, _extend("pre_down")),
    "postdown": ("PostDown", _verbatim, _extend("post_down")),
    "saveconfig": ("SaveConfig", parse_bool, _set("save_config")),
}

PEER_KEYS: dict[str, tuple[str, Callable[[str], Any], Setter]] = {
    "publickey": ("PublicKey", parse_key, _set("public_key")),
    "presharedkey": ("PresharedKey", parse_key, _set("preshared_key")),
    "allowedips": ("AllowedIPs", _each(parse_network), _extend("allowed_ips")),
    "endpoint": ("Endpoint", parse_endpoint, _set("endpoint")),
    "persistentkeepalive": ("PersistentKeepalive", parse_keepalive, _set("persistent_keepalive")),
}

def parse_domain(value: str) -> str:
    """A DNS domain such as ``wg.example.net`` (a trailing dot is fine); returned without the dot."""
    name = value.strip().rstrip(".").lower()
    labels = name.split(".")
    if not name or len(name) > 253 or any(
        not label or len(label) > 63 or not re.fullmatch(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?", label)
        for label in labels
    ):
        raise ValueError(f"{value!r} is not a domain name (like wg.example.net)")
    return name


def parse_nameserver(value: str) -> tuple[str, int]:
    """``IP``, ``IP:port``, ``[IPv6]:port`` or a bare IPv6 address; port 53 by default."""
    text = value.strip()
    host, port = text, "53"
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            host, port = text.strip("[]"), "53"
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{value!r} is not a nameserver address (IP, IP:port or [IPv6]:port)") from None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{port!r} is not a port number (1-65535)")
    return str(ip), int(port)


def parse_seconds(value: str) -> float:
    try:
        seconds = float(value.removesuffix("s"))
    except ValueError:
        raise ValueError(f"{value!r} is not a number of seconds") from None
    if not 1 <= seconds <= 86400:
        raise ValueError(f"{value!r} is out of range (1-86400 seconds)")
    return seconds


def parse_nat_keepalive(value: str) -> float:
    """Seconds between keepalive probes on an idle NATed path in use (issue 26): 5-300, below the
    NAT's UDP timeout (30 s on Linux conntrack, hence the default 25)."""
    seconds = parse_seconds(value)
    if not 5 <= seconds <= 300:
        raise ValueError(f"{value!r} is out of range (5-300 seconds)")
    return seconds


def parse_update_key(value: str) -> Any:
    """``hmac-sha256:<keyname>:<base64 secret>`` (as ``nsupdate -y``) -> a TSIG key."""
    return tsig.parse_update_key(value)


def parse_stun_servers(value: str) -> list[Endpoint]:
    """``host:port, [v6]:port, …``: STUN servers (RFC 5389); port 3478 when omitted."""
    servers = []
    for item in split_list(value):
        if not item.startswith("[") and item.count(":") != 1:
            item = f"[{item}]:3478" if ":" in item else f"{item}:3478"
        try:
            servers.append(parse_endpoint(item))
        except ValueError as e:
            raise ValueError(f"STUN server {item!r}: {e}") from None
    return servers


def parse_interfaces(value: str) -> list[str]:
    names = split_list(value)
    for name in names:
        if not IFACE_NAME_RE.match(name):
            raise ValueError(f"{name!r} is not an interface name")
    return names


def parse_mesh_key(value: str) -> str:
    """A mesh key: any text (a pass phrase or ``wgdisco genmesh`` output). Never echoed back."""
    if not value.strip():
        raise ValueError("the mesh key is empty")
    if len(value) > 1024:
        raise ValueError("the mesh key is longer than 1024 characters")
    return value.strip()


def parse_mesh_ipv4(value: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(value.strip())
    except ValueError:
        raise ValueError(f"{value.strip()!r} is not an IPv4 network such as 10.77.0.0/16 (host bits must be 0)") from None
    if not 8 <= net.prefixlen <= 28:
        raise ValueError(f"{net}: the mesh block needs a prefix length from /8 to /28")
    return net


def parse_mesh_name(value: str) -> str:
    """``Name =``: a mesh member's name (proto/names.py: one lowercase host-name label)."""
    name = check_name(value.strip())
    if name is None:
        raise ValueError(f"{value.strip()[:80]!r} is not a usable name: one label of a-z, 0-9 and '-' "
                         f"(not at either end, not all digits), at most {MAX_NAME} characters, "
                         f"not starting with {KEY_NAME_PREFIX!r}")
    return name


def parse_mesh_id(value: str) -> Any:
    """``MeshId =``: the address plan a mesh keeps across key rotations (proto/mesh.py MeshId)."""
    from wgdisco.proto.mesh import MeshId

    return MeshId.parse(value)


def parse_until(value: str) -> float:
    """An ISO 8601 date and time with a time zone (``2026-12-08T12:00:00Z``), as Unix seconds."""
    import datetime

    text = value.strip()
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text[:40]!r} is not a date and time such as 2026-12-08T12:00:00Z") from None
    if when.tzinfo is None:
        raise ValueError(f"{text[:40]!r} has no time zone (end it with Z for UTC)")
    return when.timestamp()


def format_until(when: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(when, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_deny(value: str) -> list[bytes]:
    """``MeshDeny =``: public keys (base64), comma separated; the key repeats and adds up.
    Errors name the entry's position only: a private key pasted here by mistake is never echoed."""
    out = []
    for n, item in enumerate(split_list(value), 1):
        try:
            out.append(keys.key_from_base64(item))
        except DecodeError:
            raise ValueError(f"entry {n} is not a public key (base64 of 32 bytes)") from None
    return out


def parse_max_peers(value: str) -> int:
    try:
        n = int(value.strip())
    except ValueError:
        raise ValueError(f"{value.strip()!r} is not a number") from None
    if not 1 <= n <= 65535:
        raise ValueError(f"{n} is out of range 1..65535")
    return n


MULTICAST_AUTO = "auto"  # the default: mDNS in mesh mode, off otherwise (docs/mesh.md)


def parse_multicast(value: str) -> tuple[str, ...]:
    """``Multicast =``: ``off``, ``mdns`` (224.0.0.251 and ff02::fb) and/or multicast group
    addresses, comma-separated (``mdns, 239.255.255.250``). The groups, as address strings."""
    items = [item.lower() for item in split_list(value)]
    if items == ["off"]:
        return ()
    if not items:
        raise ValueError("empty: give off, mdns or multicast group addresses")
    groups: list[str] = []
    for item in items:
        if item == "mdns":
            new = ["224.0.0.251", "ff02::fb"]
        elif item in ("off", "auto"):
            raise ValueError(f"{item!r} cannot be combined with groups")
        else:
            try:
                ip = ipaddress.ip_address(item)
            except ValueError:
                raise ValueError(f"{item!r} is not off, mdns or a multicast group address") from None
            if not ip.is_multicast:
                raise ValueError(f"{item} is not a multicast group (224.0.0.0/4, ff00::/8)")
            new = [str(ip)]
        groups += [g for g in new if g not in groups]
    return tuple(groups)


def parse_keys(value: str) -> list[bytes]:
    """A comma-separated list of base64 public keys."""
    out = []
    for item in split_list(value):
        try:
            out.append(keys.key_from_base64(item))
        except DecodeError:
            raise ValueError(f"{item[:60]!r} is not a base64 public key") from None
    return out


PORT_MAPPING_MODES = portmap.MODES  # one list (proto/portmap.py)


def parse_port_mapping(value: str) -> str:
    """``auto``, ``pcp``, ``natpmp``, ``upnp`` or ``off`` (any case)."""
    mode = value.strip().lower()
    if mode not in PORT_MAPPING_MODES:
        raise ValueError(f"{value!r}: want one of {', '.join(PORT_MAPPING_MODES)}")
    return mode


MDNS_FAMILIES = ("auto", "both", "ipv4", "ipv6")


def parse_mdns_family(value: str) -> str:
    """``auto`` (IPv4 on an interface that has an IPv4 address, else IPv6), ``both``, ``ipv4`` or
    ``ipv6`` (any case): which IP families mDNS speaks on (docs/configuration.md)."""
    family = value.strip().lower()
    if family not in MDNS_FAMILIES:
        raise ValueError(f"{value!r}: want one of {', '.join(MDNS_FAMILIES)}")
    return family


# [Discovery] keys: lowercase name -> (canonical name, parser, default). docs/configuration.md
# documents each one. Later features (STUN, metrics) register their keys here.
DISCOVERY_KEYS: dict[str, tuple[str, Callable[[str], Any], Any]] = {
    "mdns": ("mDNS", parse_bool, True),
    "mdnsinterfaces": ("mDNSInterfaces", parse_interfaces, []),
    "mdnsfamily": ("mDNSFamily", parse_mdns_family, "auto"),
    "domain": ("Domain", parse_domain, None),
    "nameserver": ("Nameserver", parse_nameserver, None),
    "pollinterval": ("PollInterval", parse_seconds, 10.0),
    "updatekey": ("UpdateKey", parse_update_key, None),
    "updatekeyfile": ("UpdateKeyFile", str, None),
    "zone": ("Zone", parse_domain, None),
    "stun": ("STUN", parse_stun_servers, []),
    "portmapping": ("PortMapping", parse_port_mapping, "auto"),
    "metrics": ("Metrics", parse_endpoint, None),
    "meshkey": ("MeshKey", parse_mesh_key, None),
    "meshkeyfile": ("MeshKeyFile", str, None),
    "meshipv4": ("MeshIPv4", parse_mesh_ipv4, None),
    "meshmaxpeers": ("MeshMaxPeers", parse_max_peers, 256),
    "name": ("Name", parse_mesh_name, None),
    "natkeepalive": ("NatKeepalive", parse_nat_keepalive, 25.0),
    "meshid": ("MeshId", parse_mesh_id, None),
    "previousmeshkey": ("PreviousMeshKey", parse_mesh_key, None),
    "previousmeshkeyuntil": ("PreviousMeshKeyUntil", parse_until, None),
    "meshdeny": ("MeshDeny", parse_deny, []),
    "multicast": ("Multicast", parse_multicast, MULTICAST_AUTO),
    "multicastpeers": ("MulticastPeers", parse_keys, []),
}
SECRET_DISCOVERY_KEYS = {"UpdateKey", "MeshKey", "PreviousMeshKey"}
MESH_ONLY_KEYS = ("MeshIPv4", "MeshMaxPeers", "Name", "MeshId", "PreviousMeshKey", "PreviousMeshKeyUntil", "MeshDeny")
# canonical key -> DiscoveryConfig field
DISCOVERY_FIELDS = {
    "mDNS": "mdns", "mDNSInterfaces": "mdns_interfaces", "mDNSFamily": "mdns_family", "Domain": "domain",
    "Nameserver": "nameserver",
    "PollInterval": "poll_interval", "UpdateKey": "update_key", "UpdateKeyFile": "update_key_file", "Zone": "zone",
    "STUN": "stun", "PortMapping": "port_mapping", "Metrics": "metrics", "MeshKey": "mesh_key",
    "MeshKeyFile": "mesh_key_file", "MeshIPv4": "mesh_ipv4", "MeshMaxPeers": "mesh_max_peers", "Name": "name",
    "NatKeepalive": "nat_keepalive",
    "MeshId": "mesh_id", "PreviousMeshKey": "previous_mesh_key", "PreviousMeshKeyUntil": "previous_mesh_key_until",
    "MeshDeny": "mesh_deny",
    "Multicast": "multicast", "MulticastPeers": "multicast_peers",
}


@dataclass
class DiscoveryConfig:
    """The ``[Discovery]`` section, parsed and checked (docs/configuration.md has every key; the
    defaults are DISCOVERY_KEYS's). Field names are the keys' in snake case."""

    mdns: bool = True
    mdns_interfaces: list[str] = field(default_factory=list)
    mdns_family: str = "auto"
    domain: str | None = None
    nameserver: Any = None
    poll_interval: float = 10.0
    update_key: Any = None  # a TSIG key (secret: never shown)
    update_key_file: str | None = None
    zone: str | None = None
    stun: list[Any] = field(default_factory=list)
    port_mapping: str = "auto"
    metrics: Any = None
    mesh_key: Any = None  # secret: never shown
    mesh_key_file: str | None = None
    mesh_ipv4: Any = None
    mesh_max_peers: int = 256
    name: str | None = None
    nat_keepalive: float = 25.0
    mesh_id: Any = None  # proto/mesh.py MeshId: the address plan (None: from MeshKey)
    previous_mesh_key: Any = None  # secret: never shown
    previous_mesh_key_until: float | None = None  # Unix seconds
    mesh_deny: list[bytes] = field(default_factory=list)
    multicast: Any = MULTICAST_AUTO  # "auto" or the enabled groups (() = off)
    multicast_peers: list[bytes] = field(default_factory=list)  # non-mesh peers that get multicast

    def multicast_groups(self) -> tuple[str, ...]:
        """The groups carried over the tunnel: ``auto`` is mDNS in mesh mode, nothing otherwise."""
        if self.multicast == MULTICAST_AUTO:
            return ("224.0.0.251", "ff02::fb") if self.mesh_key is not None or self.mesh_key_file else ()
        return tuple(self.multicast)

    def by_key(self) -> dict[str, Any]:
        """{canonical key: value}, in DISCOVERY_KEYS's order (showconf)."""
        return {key: getattr(self, attr) for key, attr in DISCOVERY_FIELDS.items()}

    @classmethod
    def from_keys(cls, values: dict[str, Any]) -> DiscoveryConfig:
        return cls(**{DISCOVERY_FIELDS[k]: v for k, v in values.items()})

# Keys wg-quick honours that wgdisco accepts but does not act on (yet): a warning, not an error.
UNSUPPORTED_INTERFACE_KEYS = {
    "DNS": "DNS is not applied by wgdisco (configure the resolver yourself)",
    "SaveConfig": "SaveConfig is not supported; the file is never rewritten",
}


# --- the parser -------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str, path: str, *, discovery_only: bool = False) -> None:
        self.text = text
        self.path = path
        self.discovery_only = discovery_only  # a side file of wgdisco-userspace: [Discovery] and nothing else
        self.interface: InterfaceConfig | None = None
        self.interface_line = 0
        self.peers: list[PeerConfig] = []
        self.peer_has_key: list[bool] = []
        self.discovery: dict[str, Any] | None = None
        self.seen_unsupported: dict[str, int] = {}
        self.interface_key_lines: dict[str, int] = {}
        self.discovery_key_lines: dict[str, int] = {}

    def error(self, message: str, line: int | None = None, key: str | None = None) -> ConfigError:
        return ConfigError(message, file=self.path, line=line, key=key)

    def parse(self) -> tuple[InterfaceConfig, list[PeerConfig], DiscoveryConfig]:
        section: str | None = None
        for lineno, raw in enumerate(config_lines(self.text), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            if line.startswith("["):
                section = self.open_section(line, lineno)
                continue
            key, sep, value = line.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or not _KEY_NAME.fullmatch(key):
                # never the line itself: it may hold key material (`PrivateKey <key>`, `PrivateKey: <key>`)
                start = _KEY_START.match(line)
                named = f" (it starts with {start.group(0)!r})" if start else ""
                raise self.error(f"expected 'Key = Value'{named}", lineno, start.group(0) if start and sep else None)
            if section is None:
                raise self.error("key outside of any section (add [Interface] above it)", lineno, key)
            self.assign(section, key, value, lineno)
        return self.finish()

    def open_section(self, line: str, lineno: int) -> str:
        m = re.fullmatch(r"\[\s*([A-Za-z]+)\s*\]", line)
        name = m.group(1).lower() if m else ""
        if self.discovery_only and name in ("interface", "peer"):
            raise self.error(f"[{name.capitalize()}] does not belong here: this file holds only [Discovery] "
                             "(the interface and its peers are configured with wg setconf)", lineno)
        if name == "interface":
            if self.interface is not None:
                raise self.error(f"second [Interface] section (first on line {self.interface_line})", lineno)
            self.interface, self.interface_line = InterfaceConfig(), lineno
        elif name == "peer":
            self.peers.append(PeerConfig(public_key=b"", line=lineno))
            self.peer_has_key.append(False)
        elif name == "discovery":
            if self.discovery is not None:
                raise self.error("second [Discovery] section", lineno)
            self.discovery = {}
        else:
            shown = f"[{m.group(1)}]" if m else "header"  # never the rest of the line
            raise self.error(f"unknown section {shown} (expected [Interface], [Peer] or [Discovery])", lineno)
        return name

    def assign(self, section: str, key: str, value: str, lineno: int) -> None:
        low = key.lower()
        if section == "discovery":
            assert self.discovery is not None
            if low not in DISCOVERY_KEYS:
                raise self.error("unknown key in [Discovery]", lineno, key)
            canonical, parser, _default = DISCOVERY_KEYS[low]
            converted = self.convert(parser, value, lineno, canonical)
            if canonical == "MeshDeny":  # repeats add up (wgdisco mesh ban appends)
                converted = self.discovery.get(canonical, []) + converted
            self.discovery[canonical] = converted
            self.discovery_key_lines[canonical] = lineno
            return
        table = INTERFACE_KEYS if section == "interface" else PEER_KEYS
        if low not in table:
            raise self.error(f"unknown key in [{section.capitalize()}]", lineno, key)
        canonical, parser, setter = table[low]
        if section == "peer" and canonical == "PublicKey":
            self.peer_has_key[-1] = True
        if section == "interface":
            self.interface_key_lines[canonical] = lineno
            if canonical in UNSUPPORTED_INTERFACE_KEYS:
                self.seen_unsupported.setdefault(canonical, lineno)
        target = self.interface if section == "interface" else self.peers[-1]
        setter(target, self.convert(parser, value, lineno, canonical))

    def convert(self, parser: Callable[[str], Any], value: str, lineno: int, key: str) -> Any:
        try:
            return parser(value)
        except ValueError as e:
            raise self.error(str(e), lineno, key) from None

    def finish(self) -> tuple[InterfaceConfig, list[PeerConfig], DiscoveryConfig]:
        if self.discovery_only:
            return InterfaceConfig(), [], self.finish_discovery()
        if self.interface is None:
            raise self.error("no [Interface] section")
        mesh = any(k in self.discovery_key_lines for k in ("MeshKey", "MeshKeyFile"))
        if self.interface.private_key is None and not mesh:
            raise self.error("[Interface] has no PrivateKey", self.interface_line, "PrivateKey")
        own_public = keys.public_key(self.interface.private_key) if self.interface.private_key else None
        seen: dict[bytes, int] = {}
        for peer, has_key in zip(self.peers, self.peer_has_key):
            if not has_key:
                raise self.error("[Peer] has no PublicKey", peer.line, "PublicKey")
            if peer.public_key == own_public:
                raise self.error("a peer has this interface's own public key", peer.line, "PublicKey")
            if peer.public_key in seen:
                raise self.error(
                    f"the same peer is already configured on line {seen[peer.public_key]}",
                    peer.line,
                    "PublicKey",
                )
            seen[peer.public_key] = peer.line
        if self.interface.mtu is not None and self.interface.mtu < 1280:
            if any(a.version == 6 for a in self.interface.addresses):
                raise self.error(
                    "IPv6 needs an MTU of at least 1280", self.interface_key_lines.get("MTU"), "MTU"
                )
        return self.interface, self.peers, self.finish_discovery()

    def finish_discovery(self) -> DiscoveryConfig:
        discovery = {canonical: default for canonical, _p, default in DISCOVERY_KEYS.values()}
        discovery.update(self.discovery or {})
        self.check_discovery(discovery)
        return DiscoveryConfig.from_keys(discovery)

    def check_discovery(self, d: dict[str, Any]) -> None:
        lines = self.discovery_key_lines
        if d["MeshKey"] is not None and d["MeshKeyFile"] is not None:
            raise self.error("give MeshKey or MeshKeyFile, not both", lines["MeshKeyFile"], "MeshKeyFile")
        for key in MESH_ONLY_KEYS:
            if key in lines and d["MeshKey"] is None and d["MeshKeyFile"] is None:
                raise self.error("needs MeshKey or MeshKeyFile in [Discovery]", lines[key], key)
        if (d["PreviousMeshKey"] is None) != (d["PreviousMeshKeyUntil"] is None):
            have, need = ("PreviousMeshKey", "PreviousMeshKeyUntil") if d["PreviousMeshKey"] is not None \
                else ("PreviousMeshKeyUntil", "PreviousMeshKey")
            raise self.error(f"needs {need} in [Discovery] (a rotation's old key and its end)", lines[have], have)
        if d["PreviousMeshKey"] is not None:
            if d["MeshId"] is None:  # without it the new key would renumber the mesh
                raise self.error("needs MeshId in [Discovery] (the address plan the rotation keeps; "
                                 "wgdisco genmesh --rotate writes it)", lines["PreviousMeshKey"], "PreviousMeshKey")
            if d["PreviousMeshKey"] == d["MeshKey"]:
                raise self.error("is the same as MeshKey", lines["PreviousMeshKey"], "PreviousMeshKey")
        if d["UpdateKey"] is not None and d["UpdateKeyFile"] is not None:
            raise self.error("give UpdateKey or UpdateKeyFile, not both", lines["UpdateKeyFile"], "UpdateKeyFile")
        for key in ("UpdateKey", "UpdateKeyFile", "Nameserver", "Zone", "PollInterval"):
            if key in lines and d["Domain"] is None:
                raise self.error("needs Domain (unicast DNS-SD) in [Discovery]", lines[key], key)


def parse(text: str, path: str = "<config>", name: str = "wg0") -> Config:
    """Parse config text. Raises ConfigError naming path, line and key."""
    parser = _Parser(text, path)
    interface, peers, discovery = parser.parse()
    if name in discovery.mdns_interfaces:  # wgdisco's discovery never runs on the tunnel (docs/mesh.md)
        raise parser.error(f"{name} is this tunnel: wgdisco's own discovery never runs on it "
                           "(for services across the mesh, see Multicast)",
                           parser.discovery_key_lines.get("mDNSInterfaces"), "mDNSInterfaces")
    warnings = [
        f"{path}:{line}: {key}: {UNSUPPORTED_INTERFACE_KEYS[key]}"
        for key, line in parser.seen_unsupported.items()
    ]
    return Config(path, name, interface, peers, discovery, warnings)


# --- wgdisco-userspace: no config file, only an optional [Discovery] side file ---------

CONFIG_DIR = "/etc/wgdisco"
CONFIG_DIR_ENV = "WGDISCO_CONFIG_DIR"  # overrides CONFIG_DIR (tests use a temporary directory)


def check_interface_name(name: str) -> str:
    """``name`` if wg-quick would accept it as an interface name (1-15 of [a-zA-Z0-9_=+.-])."""
    if not IFACE_NAME_RE.match(name) or name in (".", ".."):
        raise ConfigError(f"interface name {name!r} must be 1-15 of [a-zA-Z0-9_=+.-]")
    return name


def discovery_file(name: str, environ: Mapping[str, str] = os.environ) -> Path:
    """Where wgdisco-userspace looks for the [Discovery] of interface ``name``."""
    return Path(environ.get(CONFIG_DIR_ENV) or CONFIG_DIR) / f"{check_interface_name(name)}.conf"


def parse_discovery(text: str, path: str = "<discovery>", name: str = "wg0") -> Config:
    """A side file holding only a [Discovery] section (or nothing): a Config without a key or
    peers, for an interface configured over UAPI. Errors name the file, the line and the key."""
    interface, peers, discovery = _Parser(text, path, discovery_only=True).parse()
    return Config(path, name, interface, peers, discovery)


def load_discovery(name: str, environ: Mapping[str, str] = os.environ) -> Config:
    """The Config of wgdisco-userspace for ``name``: ``<dir>/<name>.conf`` if it exists (only
    [Discovery]), else the defaults of a config without a [Discovery] section."""
    path = discovery_file(name, environ)
    spath = str(path)
    try:
        with open(spath, encoding="utf-8") as f:
            text = f.read()
            mode = os.fstat(f.fileno()).st_mode
    except FileNotFoundError:
        return parse_discovery("", spath, name)
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror}", file=spath) from None
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text", file=spath) from None
    config = parse_discovery(text, spath, name)
    if config.discovery.update_key is not None and mode & (stat.S_IRWXG | stat.S_IRWXO):
        config.warnings.append(f"{spath}: holds a TSIG secret but is accessible by others "
                               f"(mode {mode & 0o777:03o}; chmod 600)")
    keyfile = config.discovery.update_key_file
    if keyfile is not None:
        load_update_key_file(config, keyfile, text)
    if config.discovery.update_key is not None and config.discovery.nameserver is None:
        # checked by `wgdisco up` when discovery starts; here that is after wg setconf, too late to refuse
        raise ConfigError("publishing with UpdateKey needs a Nameserver", file=spath, key="Nameserver")
    return config


def interface_name(path: str | os.PathLike[str]) -> str:
    """The interface name wg-quick derives from a config path: the file stem."""
    name = Path(path).name
    if name.endswith(".conf"):
        name = name[: -len(".conf")]
    if not IFACE_NAME_RE.match(name):
        raise ConfigError(
            f"interface name {name!r} (from the file name) must be 1-15 of [a-zA-Z0-9_=+.-]",
            file=str(path),
        )
    return name


def load(path: str | os.PathLike[str]) -> Config:
    """Read and parse a config file; warns (in Config.warnings) when others can read it."""
    spath = str(path)
    try:
        with open(spath, encoding="utf-8") as f:
            text = f.read()
            mode = os.fstat(f.fileno()).st_mode
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror}", file=spath) from None
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text", file=spath) from None
    config = parse(text, spath, interface_name(spath))
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        what = "a private key" if config.interface.private_key is not None or not config.discovery.mesh_key \
            else "the mesh key"
        config.warnings.insert(
            0, f"{spath}: holds {what} but is accessible by others (mode {mode & 0o777:03o}; chmod 600)"
        )
    keyfile = config.discovery.update_key_file
    if keyfile is not None:
        load_update_key_file(config, keyfile, text)
    meshfile = config.discovery.mesh_key_file
    if meshfile is not None:
        load_mesh_key_file(config, meshfile, text)
    return config


def load_mesh_key_file(config: Config, keyfile: str, text: str) -> None:
    """Read [Discovery] MeshKeyFile (relative to the config's directory) into MeshKey."""
    line = next((n for n, raw in enumerate(config_lines(text), 1)
                 if raw.split("#", 1)[0].split("=", 1)[0].strip().lower() == "meshkeyfile"), None)
    path = Path(keyfile) if Path(keyfile).is_absolute() else Path(config.path).parent / keyfile
    try:
        with open(path, encoding="utf-8") as f:
            content = f.read(4096)
            mode = os.fstat(f.fileno()).st_mode
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise ConfigError(f"cannot read {path}: {why}", file=config.path, line=line, key="MeshKeyFile") from None
    try:
        config.discovery.mesh_key = parse_mesh_key(content.strip())
    except ValueError as e:
        raise ConfigError(f"{path}: {e}", file=config.path, line=line, key="MeshKeyFile") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        config.warnings.append(f"{path}: holds the mesh key but is accessible by others "
                               f"(mode {mode & 0o777:03o}; chmod 600)")


# --- mesh mode: the generated identity ------------------------------------------

STATE_DIR = "/var/lib/wgdisco"


def state_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """Where generated keys live: /var/lib/wgdisco, or $WGDISCO_STATE_DIR (tests)."""
    return Path(environ.get("WGDISCO_STATE_DIR") or STATE_DIR)


def mesh_identity(name: str, environ: Mapping[str, str] = os.environ) -> bytes:
    """The private key of interface ``name`` in mesh mode: ``<state dir>/<name>.key`` (mode 0600,
    the directory 0700), generated on first start and reused afterwards. LocalError when it
    cannot be read or written; the key itself is never in a message."""
    directory = state_dir(environ)
    path = directory / f"{check_interface_name(name)}.key"
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            with open(path, encoding="ascii") as f:
                return keys.key_from_base64(f.read(200).strip())
        except FileNotFoundError:
            pass
        private = keys.generate_private_key(os.urandom(keys.KEY_LEN))
        tmp = directory / f".{name}.key.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(keys.key_to_base64(private) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return private
    except OSError as e:
        raise LocalError(f"mesh identity {path}: {e.strerror}") from None
    except (DecodeError, UnicodeDecodeError):
        raise LocalError(f"mesh identity {path}: not a WireGuard private key (remove it to get a new one)") from None


def config_lines(text: str) -> list[str]:
    """Lines as wg-quick's `read -r` sees them: split at \\n only (str.splitlines also splits at
    \\v, \\f, \\x1c-\\x1e, \\x85, \\u2028, \\u2029, and the line numbers would be wrong), one
    trailing \\r dropped."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def load_update_key_file(config: Config, keyfile: str, text: str) -> None:
    """Read [Discovery] UpdateKeyFile (relative to the config's directory) into UpdateKey."""
    line = next((n for n, raw in enumerate(config_lines(text), 1)
                 if raw.split("#", 1)[0].split("=", 1)[0].strip().lower() == "updatekeyfile"), None)
    path = Path(keyfile) if Path(keyfile).is_absolute() else Path(config.path).parent / keyfile
    try:
        with open(path, encoding="utf-8") as f:
            content = f.read()
            mode = os.fstat(f.fileno()).st_mode
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise ConfigError(f"cannot read {path}: {why}", file=config.path, line=line, key="UpdateKeyFile") from None
    try:
        config.discovery.update_key = parse_update_key(content)
    except ValueError as e:
        raise ConfigError(f"{path}: {e}", file=config.path, line=line, key="UpdateKeyFile") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        config.warnings.append(f"{path}: holds a TSIG secret but is accessible by others "
                               f"(mode {mode & 0o777:03o}; chmod 600)")


# --- normalized output (showconf) ---------------------------------------------


def format_config(config: Config, show_secrets: bool = False) -> str:
    """Normalized wg-quick INI. Secrets print as ``(hidden)`` unless asked for."""

    def secret(key: bytes | None) -> str:
        assert key is not None
        return keys.key_to_base64(key) if show_secrets else "(hidden)"

    i = config.interface
    if i.private_key is None:  # mesh mode: generated on first start (docs/mesh.md)
        out = ["[Interface]", "# PrivateKey: generated on first start (mesh mode)"]
    else:
        out = ["[Interface]", f"# PublicKey = {keys.key_to_base64(keys.public_key(i.private_key))}"]
        out.append(f"PrivateKey = {secret(i.private_key)}")
    if i.listen_port is not None:
        out.append(f"ListenPort = {i.listen_port}")
    if i.fwmark:
        out.append(f"FwMark = {i.fwmark:#x}")
    if i.addresses:
        out.append("Address = " + ", ".join(str(a) for a in i.addresses))
    if i.dns:
        out.append("DNS = " + ", ".join(i.dns))
    if i.mtu is not None:
        out.append(f"MTU = {i.mtu}")
    if i.table is not None:
        out.append(f"Table = {i.table}")
    for key, commands in (("PreUp", i.pre_up), ("PostUp", i.post_up), ("PreDown", i.pre_down), ("PostDown", i.post_down)):
        out.extend(f"{key} = {c}" for c in commands)
    if i.save_config:
        out.append("SaveConfig = true")
    defaults = {canonical: default for canonical, _p, default in DISCOVERY_KEYS.values()}
    changed = {
        k: v for k, v in config.discovery.by_key().items()
        if v != defaults.get(k) and not (k == "UpdateKey" and config.discovery.update_key_file)
        and not (k == "MeshKey" and config.discovery.mesh_key_file)
    }
    if changed:
        out += ["", "[Discovery]"]
        out.extend(
            f"{k} = {'(hidden)' if k in SECRET_DISCOVERY_KEYS else format_until(v) if k == 'PreviousMeshKeyUntil' else format_discovery_value(v)}"
            for k, v in changed.items()
        )
    for p in config.peers:
        out += ["", "[Peer]", f"PublicKey = {keys.key_to_base64(p.public_key)}"]
        if p.preshared_key is not None:
            out.append(f"PresharedKey = {secret(p.preshared_key)}")
        if p.allowed_ips:
            out.append("AllowedIPs = " + ", ".join(str(n) for n in p.allowed_ips))
        if p.endpoint is not None:
            out.append(f"Endpoint = {p.endpoint}")
        if p.persistent_keepalive:
            out.append(f"PersistentKeepalive = {p.persistent_keepalive}")
    return "\n".join(out) + "\n"


def format_discovery_value(value: Any) -> str:
    from wgdisco.proto.mesh import MeshId

    if isinstance(value, MeshId):
        return value.text
    if isinstance(value, list) and value and all(isinstance(v, bytes) for v in value):  # MeshDeny
        return ", ".join(keys.key_to_base64(v) for v in value)
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], int):  # (ip, port)
        host, port = value
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if value == ():  # Multicast = off (the groups: none)
        return "off"
    if isinstance(value, bytes):  # a public key (MulticastPeers)
        return keys.key_to_base64(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(format_discovery_value(v) for v in value)
    return str(value)
