"""``wgdisco rendezvous ZONE``: a TSIG key and ready-to-use snippets for a rendezvous server.

Beyond one LAN, nodes find each other through a DNS zone they update with RFC 2136 UPDATE signed
with TSIG (RFC 8945), and learn their reflexive addresses from a STUN server (docs/rendezvous.md).
This module writes the text: a Knot zone + key + ACL, a BIND ``named.conf`` key + zone with an
``update-policy``, the zone file both start from, and the nodes' ``[Discovery]`` lines. The key
(HMAC-SHA256, 256 random bits: RFC 8945 §6 asks for at least the hash's output length) comes in
as an argument; the CLI makes it and either prints it in the snippets or writes it to a key file
(mode 0600, never overwriting) that the snippets then name.

The update permission is the same on both servers: the key may change only the record types
wgdisco publishes (PTR, SRV, TXT, A, AAAA: docs/records.md), anywhere in the zone (the SRV
target ``wg-<key>.<zone>`` sits directly under the zone), never the SOA or NS.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from wgdisco import config

KEY_NAME = "wgdisco."
ALGORITHM = "hmac-sha256"
UPDATE_TYPES = ("PTR", "SRV", "TXT", "A", "AAAA")
SECTION = "# --- {} ---"  # each snippet starts with such a line (tests cut the output there)
KNOT_CONF = "knot.conf"
ZONE_FILE = "zone file"
NAMED_CONF = "named.conf"
NODE_CONF = "[Discovery]"


@dataclass(frozen=True)
class Rendezvous:
    zone: str  # without the trailing dot
    key_name: str  # with the trailing dot
    secret: str  # base64
    server: str | None  # the server's public address, for the nodes and the zone's NS
    stun: str | None  # host:port for the nodes' STUN line
    key_file: str | None  # where the key was written (the nodes read UpdateKeyFile), or None

    @property
    def update_key(self) -> str:
        return f"{ALGORITHM}:{self.key_name}:{self.secret}"


def check_zone(text: str) -> str:
    """The zone as a domain name without the trailing dot; ValueError (one line) when it is not one."""
    name = config.parse_domain(text)
    if "." not in name:
        raise ValueError(f"{text!r} is a top-level name; use a zone you control (like wg.example.net)")
    return name


def check_key_name(text: str) -> str:
    """A TSIG key name is a domain name (RFC 8945 §4.2); returned with the trailing dot."""
    try:
        return config.parse_domain(text) + "."
    except ValueError:
        raise ValueError(f"--key-name {text!r} is not a DNS name (like wgdisco.)") from None


def check_server(text: str) -> str:
    """An IPv4 or IPv6 address (the server's public one)."""
    try:
        return str(ipaddress.ip_address(text.strip().strip("[]")))
    except ValueError:
        raise ValueError(f"--server {text!r} is not an IP address (the rendezvous server's public address)") from None


def section(title: str) -> str:
    return SECTION.format(title)


def knot_conf(r: Rendezvous) -> str:
    types = ", ".join(UPDATE_TYPES)
    return f"""{section(KNOT_CONF)}
# Add to /etc/knot/knot.conf (tested with Knot 3.2; its server: section listens on the public address),
# put the zone file below at /var/lib/knot/{r.zone}.zone (owner knot), then: knotc reload
key:
  - id: {r.key_name}
    algorithm: {ALGORITHM}
    secret: {r.secret}

acl:
  - id: wgdisco-update
    key: {r.key_name}
    action: update
    update-type: [{types}]

zone:
  - domain: {r.zone}.
    acl: wgdisco-update
"""


def zone_file(r: Rendezvous) -> str:
    server = r.server or "SERVER_ADDRESS"
    kind = "AAAA" if ":" in server else "A"
    return f"""{section(ZONE_FILE)}
; /var/lib/knot/{r.zone}.zone (Knot) or /var/lib/bind/{r.zone}.zone (BIND): the starting point;
; the server adds the nodes' records. Delegate the zone to ns.{r.zone} (with this address as glue)
; in the parent zone, or name this server as Nameserver in every node (below).
$ORIGIN {r.zone}.
$TTL 3600
@   SOA ns hostmaster 1 3600 600 86400 60
@   NS  ns
ns  {kind} {server}
"""


def named_conf(r: Rendezvous) -> str:
    types = " ".join(UPDATE_TYPES)
    return f"""{section(NAMED_CONF)}
# Add to /etc/bind/named.conf.local (tested with BIND 9.18), put the zone file below at
# /var/lib/bind/{r.zone}.zone (writable by the bind user: it keeps a journal beside it),
# then: named-checkconf && rndc reconfig
key "{r.key_name}" {{
    algorithm {ALGORITHM};
    secret "{r.secret}";
}};

zone "{r.zone}" {{
    type primary;
    file "/var/lib/bind/{r.zone}.zone";
    allow-transfer {{ none; }};
    update-policy {{
        grant {r.key_name} subdomain {r.zone}. {types};
    }};
}};
"""


def node_conf(r: Rendezvous) -> str:
    lines = [section(NODE_CONF),
             "# In every node's config (e.g. /etc/wireguard/wg0.conf), beside [Interface] and [Peer]s:",
             "[Discovery]", f"Domain = {r.zone}", f"Nameserver = {r.server or 'SERVER_ADDRESS'}"]
    if r.key_file is not None:
        lines.append(f"UpdateKeyFile = {r.key_file}    # copy it to each node, mode 0600")
    else:
        lines.append(f"UpdateKey = {r.update_key}")
    stun = r.stun or (f"[{r.server}]:3478" if r.server and ":" in r.server else f"{r.server}:3478" if r.server else None)
    lines.append(f"STUN = {stun}    # stund or coturn on the same server" if stun else
                 "STUN = SERVER_ADDRESS:3478    # stund or coturn on the rendezvous server")
    return "\n".join(lines) + "\n"


def render(r: Rendezvous) -> str:
    where = (f"written to {r.key_file} (mode 0600) for the nodes; the server snippets hold it too: keep "
             "this output secret" if r.key_file else "in the snippets below: keep this output secret")
    head = (f"# wgdisco rendezvous for zone {r.zone}: TSIG key {r.key_name} ({ALGORITHM}, 256 random bits), {where}.\n"
            f"# Walk-through, firewall ports and checks: docs/rendezvous.md. Pick Knot or BIND, not both.\n")
    placeholder = "" if r.server else "# SERVER_ADDRESS: put the server's public address (or pass --server).\n"
    return "\n".join([head + placeholder, knot_conf(r), named_conf(r), zone_file(r), node_conf(r)])


def cut(output: str, title: str) -> str:
    """One snippet out of ``render``'s output (its body, without the section line)."""
    marker = section(title) + "\n"
    start = output.index(marker) + len(marker)
    end = output.find("\n# --- ", start)
    return output[start:] if end < 0 else output[start:end + 1]
