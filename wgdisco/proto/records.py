"""The DNS-SD record model: wgsd v0.3 layout plus wgdisco's own TXT keys (docs/records.md).

One node is one service instance (RFC 6763 §4.1) under ``_wireguard._udp.<domain>``::

    _wireguard._udp.<domain>         PTR  <b32>._wireguard._udp.<domain>
    <b32>._wireguard._udp.<domain>   SRV  0 0 <port> <target>
    <target>                         A/AAAA <address>
    <b32>._wireguard._udp.<domain>   TXT  "txtvers=1" "pub=<base64>" "allowed=<cidr,...>" "cand=..."

``<b32>`` is the lowercase padded base32 public key (56 characters).  wgsd puts the
address on the instance name itself (the SRV target is the instance name); that is
our default target too.

Shards (issue 26, docs/records.md "Shards"): every instance is also listed under one of
``SHARDS`` RFC 6763 §7.1 subtypes, ``_<xx>._sub._wireguard._udp.<domain> PTR <instance>``,
``xx`` two hex digits of SHA-256 of the lowercase instance label (``shard_label``).  A PTR set
of ~900 instances already fills the 65,535 bytes one DNS message can hold (RFC 1035 §4.2.2);
the shards hold a 256th each, so a browse of tens of thousands of instances can be answered.

Theory of operation.  Publishing: ``ServiceRecord`` -> ``build_txt`` gives the TXT
strings; the I/O shell (mDNS or RFC 2136) writes the four record types.  Browsing:
the shell hands back what the DNS said (labels, SRV port and target, addresses, TXT
strings); ``record_from_dns`` turns that into a ``Sighting``: a public key and a list
of candidate endpoints.  Sightings are hints only (ARCHITECTURE.md, "Trust model"):
nothing here authenticates anything, so parsing is lenient (RFC 6763 §6: malformed
entries are ignored and counted) and the only hard failures are a label that is not a
key or a ``pub=`` that names a different key than the label.

Pure: no I/O, no clock, no DNS library; names are plain strings.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from wgdisco.errors import DecodeError, LocalError
from wgdisco.proto import keys

__all__ = [
    "MAX_CANDIDATES",
    "PLAIN_BROWSE_MAX",
    "PTR_UDP_MAX",
    "SERVICE",
    "SHARDS",
    "TXTVERS",
    "TXT_LIMIT",
    "TXT_STRING_MAX",
    "HostPort",
    "IPAddress",
    "IPNetwork",
    "ServiceRecord",
    "Sighting",
    "build_txt",
    "format_candidate",
    "instance_name",
    "list_items",
    "parse_candidate",
    "parse_txt",
    "record_from_dns",
    "service_name",
    "shard_label",
    "shard_names",
    "txt_wire_size",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
HostPort = tuple[IPAddress, int]

SERVICE = "_wireguard._udp"
TXTVERS = b"1"  # RFC 6763 §6.7; wgsd v0.3 publishes txtvers=1
TXT_STRING_MAX = 255  # one character-string (RFC 1035 §3.3)
TXT_LIMIT = 1300  # RFC 6763 §6.2: TXT records above 1300 bytes are NOT RECOMMENDED; we stay below
MAX_CANDIDATES = 32  # a sighting never carries more (DNS answers can be long)

# Shards (docs/records.md "Shards"). A PTR of a wgsd instance costs 71 bytes in an answer (name
# compressed to a pointer, 10 bytes of type/class/TTL/length, 57 of label and a pointer), so one
# DNS message (65,535 bytes, RFC 1035 §4.2.2) holds ~920 of them; Knot answers SERVFAIL beyond.
SHARDS = 256  # subtypes _00 … _ff: ~6 instances each at 1,500 members, one UDP answer each
SHARD_LABELS = tuple(f"_{n:02x}" for n in range(SHARDS))  # the subtypes' labels, in order
PTR_UDP_MAX = 16  # instances in one 1232-byte EDNS answer (DNS flag day 2020): ~16 x 71 bytes
PLAIN_BROWSE_MAX = 768  # a plain set larger than this (~55 KB) is read through the shards

# Keys whose value is a comma list that may continue in key1=, key2=, ... (in that order).
_LIST_KEYS = ("allowed", "cand")
_LIST_KEY_RE = re.compile(r"^(allowed|cand)([1-9][0-9]{0,2})?$")
_RESERVED = ("txtvers", "pub")


# ----------------------------------------------------------------------------- names


def _fqdn(domain: str) -> str:
    """``domain`` with exactly one trailing dot; checks label lengths (RFC 1035 §2.3.4)."""
    name = domain.strip()
    if name in ("", "."):
        raise LocalError("a DNS-SD domain must not be empty or the root")
    name = name.rstrip(".") + "."
    labels = name[:-1].split(".")
    if any(not 0 < len(label) <= 63 for label in labels) or len(name) > 254:
        raise LocalError(f"{domain!r} is not a valid domain name (empty label or too long)")
    return name


def service_name(domain: str) -> str:
    """``_wireguard._udp.<domain>.`` (absolute, trailing dot)."""
    return f"{SERVICE}.{_fqdn(domain)}"


def target_name(instance_label: str, domain: str) -> str:
    """The SRV target host name of an instance: ``wg-<first 16 of the label>.<domain>.``
    (docs/records.md); the one home of that rule (mDNS and unicast DNS-SD alike)."""
    return f"wg-{instance_label[:16]}.{domain.rstrip('.')}."


def shard_label(instance_label: str) -> str:
    """The RFC 6763 §7.1 subtype an instance is listed under: ``_`` and two hex digits of the
    first byte of SHA-256(lowercase label). Hashed, so keys ground for a vanity prefix (which
    share the label's first characters) still spread over all shards."""
    digest = hashlib.sha256(instance_label.strip().lower().encode("ascii")).digest()
    return SHARD_LABELS[digest[0] % SHARDS]


def shard_names(domain: str) -> list[str]:
    """Every shard's PTR owner, ``_<xx>._sub._wireguard._udp.<domain>.``, in order."""
    service = service_name(domain)
    return [f"{label}._sub.{service}" for label in SHARD_LABELS]


def instance_name(public_key: bytes, domain: str) -> str:
    """``<b32>._wireguard._udp.<domain>.``: the SRV/TXT owner, and wgsd's SRV target."""
    return f"{keys.key_to_base32(public_key)}.{service_name(domain)}"


# ------------------------------------------------------------------------ candidates


def _plain(ip: IPAddress) -> IPAddress:
    """IPv4-mapped IPv6 (RFC 4291 §2.5.5.2) as IPv4, so duplicates compare equal."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def format_candidate(ip: IPAddress | str, port: int) -> str:
    """``198.51.100.7:51820`` or ``[2001:db8::7]:51820``."""
    addr = _plain(ipaddress.ip_address(ip))
    if not 0 < port <= 65535:
        raise LocalError(f"candidate port {port} is out of range 1..65535")
    if not _usable(addr):
        raise LocalError(f"candidate {addr} is not an address a peer can send to")
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id:
            raise LocalError(f"candidate {addr} has a zone index, meaningless to other hosts")
        return f"[{addr.compressed}]:{port}"
    return f"{addr}:{port}"


def parse_candidate(text: str) -> HostPort:
    """Inverse of ``format_candidate``; DecodeError on anything else (no zone index, no names)."""
    text = text.strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise DecodeError(f"candidate {text!r}: want [v6]:port")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise DecodeError(f"candidate {text!r}: want ip:port or [v6]:port")
    if "%" in host:
        raise DecodeError(f"candidate {text!r}: zone index not allowed")
    try:
        parsed = ipaddress.ip_address(host)
    except ValueError:
        raise DecodeError(f"candidate {text!r}: {host!r} is not an IP address") from None
    if text.startswith("[") != (parsed.version == 6):
        raise DecodeError(f"candidate {text!r}: IPv6 goes in brackets, IPv4 does not")
    addr = _plain(parsed)
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) <= 65535:
        raise DecodeError(f"candidate {text!r}: port must be 1..65535")
    return addr, int(port_text)


def _usable(ip: IPAddress) -> bool:
    """An address a peer could send to (not 0.0.0.0/::, not multicast or broadcast)."""
    return not (ip.is_unspecified or ip.is_multicast or ip == ipaddress.IPv4Address("255.255.255.255"))


# ---------------------------------------------------------------------------- model


@dataclass
class ServiceRecord:
    """What a node publishes about itself.

    ``candidates`` are in priority order (best first: usually host addresses on
    the LAN, then the STUN-reflexive address); ``build_txt`` drops from the end
    when the TXT would grow too large.  ``txt_extra`` adds keys of wgdisco's own
    (``None`` value: a boolean attribute, RFC 6763 §6.4).
    """

    public_key: bytes
    port: int
    target: str
    addresses: list[IPAddress] = field(default_factory=list)
    allowed: list[IPNetwork] = field(default_factory=list)
    candidates: list[HostPort] = field(default_factory=list)
    txt_extra: dict[str, str | bytes | None] = field(default_factory=dict)

    @property
    def instance_label(self) -> str:
        return keys.key_to_base32(self.public_key)


@dataclass
class Sighting:
    """What the DNS says about one instance: hints, never trusted as such.

    ``candidates``: SRV target addresses (with the SRV port) first, then ``cand=``
    entries, duplicates removed, at most MAX_CANDIDATES.  ``malformed`` counts the
    parts that were ignored (bad TXT strings, unparsable entries, SRV port 0...).
    ``txt`` holds every TXT key (lowercase) with its raw value, known or not.
    """

    public_key: bytes
    candidates: list[HostPort]
    allowed: list[IPNetwork] = field(default_factory=list)
    txt: dict[str, bytes | None] = field(default_factory=dict)
    malformed: int = 0


# ------------------------------------------------------------------------------ TXT


def txt_wire_size(strings: Iterable[bytes]) -> int:
    """RDATA length of a TXT record: each string plus its length octet (RFC 1035 §3.3.14)."""
    return sum(1 + len(s) for s in strings)


def _check_key(key: str) -> str:
    """RFC 6763 §6.4: printable US-ASCII except '=', at least one character."""
    if not key or not all(0x20 <= ord(c) <= 0x7E for c in key) or "=" in key:
        raise LocalError(f"TXT key {key!r} must be printable ASCII without '='")
    low = key.lower()
    if low in _RESERVED or _LIST_KEY_RE.match(low):
        raise LocalError(f"TXT key {key!r} is reserved for the record layout")
    return key


def _pack_list(key: str, items: Sequence[str], budget: int) -> tuple[list[bytes], int]:
    """Pack ``items`` in order into ``key=a,b`` ``key1=c`` ``key2=...`` strings of <= 255 bytes.

    Stops before the first item that would take the strings past ``budget`` wire
    bytes; returns the strings and how many items went in (always a prefix).
    """
    done: list[bytes] = []
    current: bytes | None = None
    used = 0
    for n, item in enumerate(items):
        raw = item.encode("ascii")
        fresh = current is None or len(current) + 1 + len(raw) > TXT_STRING_MAX
        if fresh:
            index = len(done) + (current is not None)
            grown = f"{key}{index or ''}=".encode() + raw
            extra = 1 + len(grown)
            if len(grown) > TXT_STRING_MAX:
                raise LocalError(f"{key} entry {item!r} does not fit one TXT string")
        else:
            grown, extra = current + b"," + raw, 1 + len(raw)  # type: ignore[operator]
        if used + extra > budget:
            if current is not None:
                done.append(current)
            return done, n
        if fresh and current is not None:
            done.append(current)
        used += extra
        current = grown
    if current is not None:
        done.append(current)
    return done, len(items)


def build_txt(record: ServiceRecord) -> list[bytes]:
    """The TXT strings for ``record``: wgsd's three keys, then ``cand``, then ``txt_extra``.

    Each string is at most 255 bytes and the whole TXT stays below 1300 bytes
    (TXT_LIMIT).  Candidates that do not fit are dropped from the end (lowest
    priority first); anything else that does not fit is a LocalError.
    """
    head = [b"txtvers=" + TXTVERS, b"pub=" + keys.key_to_base64(record.public_key).encode()]
    nets = [str(n) for n in record.allowed]
    if nets:
        allowed, _ = _pack_list("allowed", nets, TXT_LIMIT)
    else:
        allowed = [b"allowed="]  # wgsd always writes the key, empty when there are none
    extras: list[bytes] = []
    for key, value in record.txt_extra.items():
        raw = _check_key(key).encode("ascii")
        if value is not None:
            raw += b"=" + (value.encode() if isinstance(value, str) else bytes(value))
        if len(raw) > TXT_STRING_MAX:
            raise LocalError(f"TXT key {key!r}: {len(raw)} bytes, more than one string holds")
        extras.append(raw)
    fixed = head + allowed + extras
    budget = TXT_LIMIT - 1 - txt_wire_size(fixed)
    if budget < 0:
        raise LocalError(f"the TXT record needs {txt_wire_size(fixed)} bytes without candidates; "
                         f"the limit is {TXT_LIMIT - 1}")
    seen: set[HostPort] = set()
    cands: list[str] = []
    for ip, port in record.candidates:
        cand = (_plain(ipaddress.ip_address(ip)), port)
        if cand not in seen:
            seen.add(cand)
            cands.append(format_candidate(*cand))
    cand_strings, _ = _pack_list("cand", cands, budget)
    return head + allowed + cand_strings + extras


def parse_txt(strings: Iterable[bytes | str]) -> tuple[dict[str, bytes | None], int]:
    """TXT strings -> ({lowercase key: value or None}, malformed count), per RFC 6763 §6.

    §6.4: keys are case-insensitive, a string without '=' is a boolean attribute
    (value None), ``key=`` has an empty value; a string starting with '=' or a key
    with a non-printable character is malformed.  §6.4: only the first occurrence
    of a key counts (later ones are counted as malformed).  Zero-length strings
    are ignored (§6.1: a TXT with one empty string is "no data").
    """
    out: dict[str, bytes | None] = {}
    bad = 0
    for s in strings:
        raw = s.encode("utf-8", "surrogateescape") if isinstance(s, str) else bytes(s)
        if not raw:
            continue
        key, eq, value = raw.partition(b"=")
        if not key or any(not 0x20 <= c <= 0x7E for c in key):
            bad += 1
            continue
        name = key.decode("ascii").lower()
        if name in out:
            bad += 1
            continue
        out[name] = value if eq else None
    return out, bad


def _list_values(txt: Mapping[str, bytes | None], key: str) -> tuple[list[str], int]:
    """Items of a list key and its continuations (key, key1, key2, ... by number)."""
    parts: list[tuple[int, bytes | None]] = []
    for name, value in txt.items():
        m = _LIST_KEY_RE.match(name)
        if m and m.group(1) == key:
            parts.append((int(m.group(2) or 0), value))
    items: list[str] = []
    bad = 0
    for _, value in sorted(parts, key=lambda p: p[0]):
        if value is None:
            bad += 1
            continue
        try:
            text = value.decode("ascii")
        except UnicodeDecodeError:
            bad += 1
            continue
        items += [i.strip() for i in text.split(",") if i.strip()]
    return items, bad


def list_items(txt: Mapping[str, bytes | None], key: str) -> list[str]:
    """The items of a list key (``cand``, ``allowed``) across its continuations, in order."""
    return _list_values(txt, key)[0]


def key_of_label(label: str) -> bytes:
    """The public key an instance label names; only the canonical spelling is accepted."""
    try:
        key = keys.key_from_base32(label)
    except DecodeError:
        raise DecodeError(f"instance label {label!r} is not a base32 WireGuard public key") from None
    if keys.key_to_base32(key) != label.strip().lower():
        raise DecodeError(f"instance label {label!r} is not the canonical base32 of a key")
    return key


def record_from_dns(
    instance_label: str,
    srv_port: int | None,
    srv_target: str | None,
    addresses: Iterable[IPAddress | str],
    txt_strings: Iterable[bytes | str],
) -> Sighting:
    """What the DNS said about one instance -> a Sighting.

    ``srv_port``/``srv_target`` are None when there was no SRV record.  Raises
    DecodeError only when ``instance_label`` is not a key or when ``pub=`` names a
    different key; every other defect is ignored and counted in ``malformed``.
    A ``txtvers`` other than 1 makes the TXT unreadable: its keys are not used.
    """
    public_key = key_of_label(instance_label)
    txt, bad = parse_txt(txt_strings)

    usable_txt = True
    if "txtvers" in txt and txt["txtvers"] != TXTVERS:
        bad += 1  # RFC 6763 §6.7: a version we do not speak
        usable_txt = False

    if usable_txt and "pub" in txt:
        value = txt["pub"]
        try:
            pub = keys.key_from_base64((value or b"").decode("ascii"))
        except (DecodeError, UnicodeDecodeError):
            bad += 1
        else:
            if pub != public_key:
                raise DecodeError(
                    f"instance {instance_label!r} publishes pub={keys.key_to_base64(pub)}, "
                    f"a different key than its label ({keys.key_to_base64(public_key)})"
                )

    candidates: list[HostPort] = []
    seen: set[HostPort] = set()

    def add(cand: HostPort) -> None:
        nonlocal bad
        if not _usable(cand[0]):
            bad += 1
        elif cand not in seen:
            seen.add(cand)
            candidates.append(cand)

    has_target = srv_target is not None and srv_target.strip() not in ("", ".")  # "." = no service
    port_ok = srv_port is not None and 0 < srv_port <= 65535
    for a in addresses:
        try:
            ip = _plain(ipaddress.ip_address(a))
        except ValueError:
            bad += 1
            continue
        if has_target and port_ok:
            add((ip, int(srv_port)))  # type: ignore[arg-type]
    if srv_port is not None and not port_ok:
        bad += 1  # SRV port 0 or out of range

    allowed: list[IPNetwork] = []
    if usable_txt:
        items, b = _list_values(txt, "cand")
        bad += b
        for item in items:
            try:
                add(parse_candidate(item))
            except DecodeError:
                bad += 1
        items, b = _list_values(txt, "allowed")
        bad += b
        for item in items:
            try:
                allowed.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                bad += 1

    return Sighting(public_key, candidates[:MAX_CANDIDATES], allowed, txt, bad)
