"""Knot DNS in a lab host: an authoritative primary for one zone, updatable with a TSIG key.

``start_knot(host, ["198.51.100.53"])`` writes a config and a zone file into a
directory under the lab's log directory, runs ``knotd -c CONF`` in the foreground
(``knotd`` has no separate foreground flag: without ``-d`` it stays attached) and
waits until ``kdig @addr SOA zone`` answers.  The config:

* ``key``: one hmac-sha256 key (name ``wgdisco.`` unless told otherwise);
* ``acl``: that key may ``update`` the zone, nothing else may;
* ``zonefile-sync: 0`` so Knot writes each update back to the zone file at once
  (a restarted ``knotd`` serves what was published before), ``journal-content:
  none`` so the zone file is the only state;
* ``rundir``, ``storage`` and the control socket inside the directory, so that
  several servers (one per test) never share state.

``extra_records`` go into the zone file verbatim (relative names are relative to
the zone), e.g. a hand-written wgsd layout.  Knot's zone parser rejects a bare '='
in a name: base32 padding is written ``\\=`` (``zone_name()`` does it), which is
also how Knot itself dumps such names.  ``Knot.stop()`` / ``Knot.start()``
take the server down and up again on the same config.

``member_zone(recs)`` writes many members' record sets (what ``DnssdPublisher.publish`` would
leave: the plain PTR, the shard PTR, SRV, TXT from ``records.build_txt``, A/AAAA) as zone-file
lines, for a zone of thousands of members loaded before Knot starts (issue 26's browse).
"""

from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from wgdisco.proto import records

from .netns import Host, LabError, Proc
from .skips import require_tool

ZONE = "wg.example.net."


def zone_name(name: str) -> str:
    """A name as Knot's zone file wants it: '=' escaped (RFC 1035 §5.1 "\\X")."""
    return name.replace("=", "\\=")


@dataclass
class Knot:
    host: Host
    listen: list[str]
    port: int
    zone: str
    key_name: str
    secret: str  # base64
    dir: Path
    proc: Proc | None = None
    starts: int = field(default=0)

    @property
    def conf(self) -> Path:
        return self.dir / "knot.conf"

    @property
    def zone_file(self) -> Path:
        return self.dir / "zones" / f"{self.zone.rstrip('.')}.zone"

    @property
    def address(self) -> tuple[str, int]:
        return self.listen[0], self.port

    @property
    def update_key(self) -> str:
        """The key as ``hmac-sha256:<name>:<secret>`` (what ``nsupdate -y`` takes)."""
        return f"hmac-sha256:{self.key_name}:{self.secret}"

    def start(self, timeout: float = 10.0) -> Knot:
        if self.proc is not None and self.proc.alive():
            raise LabError("knotd is already running")
        self.starts += 1
        knotd = require_tool("knotd")
        self.proc = self.host.popen([knotd, "-c", str(self.conf)], name=f"{self.host.name}-knotd{self.starts}")
        deadline = time.monotonic() + timeout
        self.proc.wait_for(r"server started", timeout=timeout)
        while True:
            if not self.proc.alive():
                raise LabError(f"knotd exited with {self.proc.returncode}:\n{self.log()}")
            if "zone event 'load' failed" in self.proc.stdout():
                raise LabError(f"knotd could not load zone {self.zone}:\n{self.log()}")
            cp = self.host.run(["kdig", f"@{self.listen[0]}", "-p", str(self.port), "+time=1", "+retry=0",
                                "+short", "SOA", self.zone], check=False, timeout=5)
            if cp.returncode == 0 and cp.stdout.strip():
                return self
            if time.monotonic() > deadline:
                raise LabError(f"knotd does not answer SOA {self.zone} after {timeout}s:\n"
                               f"{self.proc.stdout()}{self.proc.stderr()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def log(self) -> str:
        return self.proc.stdout() + self.proc.stderr() if self.proc else ""

    def dig(self, client: Host, name: str, rdtype: str, *options: str) -> str:
        """``dig @knot +norec +noall +answer NAME TYPE`` from ``client``; stdout."""
        argv = ["dig", f"@{self.listen[0]}", "-p", str(self.port), "+norec", "+time=2", "+tries=1",
                "+noall", "+answer", *options, name, rdtype]
        return client.run(argv).stdout


def member_zone(recs: list[records.ServiceRecord], domain: str = ZONE, ttl: int = 60) -> str:
    """Zone-file lines (absolute names) of each member's record set in ``domain``, as
    ``DnssdPublisher.publish`` leaves it (docs/records.md, "Shards")."""
    service = records.service_name(domain)
    lines = []
    for rec in recs:
        label = rec.instance_label
        instance = zone_name(f"{label}.{service}")
        target = zone_name(rec.target)
        txt = " ".join('"' + s.decode() + '"' for s in records.build_txt(rec))
        shard = f"{records.shard_label(label)}._sub.{service}"
        lines += [f"{service} {ttl} PTR {instance}", f"{shard} {ttl} PTR {instance}",
                  f"{instance} {ttl} SRV 0 0 {rec.port} {target}", f"{instance} {ttl} TXT {txt}"]
        lines += [f"{target} {ttl} {'AAAA' if a.version == 6 else 'A'} {a}" for a in rec.addresses]
    return "\n".join(lines) + "\n"


def server_conf(d: Path, listens: str) -> str:
    """The part of a lab knot.conf around the zone: server (``listens``: "addr@port, …"), control
    socket, logging to stdout, storage, all under ``d``."""
    return f"""\
server:
    rundir: "{d / 'run'}"
    listen: [ {listens} ]
    identity: ""
    version: ""

control:
    listen: "{d / 'run' / 'knot.sock'}"

log:
  - target: stdout
    any: info

database:
    storage: "{d / 'db'}"
"""


def start_knot(
    host: Host,
    listen: list[str],
    *,
    port: int = 53,
    zone: str = ZONE,
    key_name: str = "wgdisco.",
    secret: str | None = None,
    extra_records: str = "",
    other_keys: dict[str, str] | None = None,
    ttl: int = 3600,
) -> Knot:
    """Write config + zone for ``zone`` and start knotd in ``host`` listening on ``listen``.

    ``other_keys`` ({name: base64 secret}) are known to the server but not in the ACL.
    """
    require_tool("knotd")
    require_tool("kdig")
    secret = secret or base64.b64encode(os.urandom(32)).decode()
    d = host.lab.logdir / f"knot-{host.name}"
    for sub in ("run", "db", "zones"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    knot = Knot(host, list(listen), port, zone, key_name, secret, d)
    listens = ", ".join(f"{a}@{port}" for a in listen)
    keys = "".join(f"  - id: {name}\n    algorithm: hmac-sha256\n    secret: {value}\n"
                   for name, value in {key_name: secret, **(other_keys or {})}.items())
    knot.conf.write_text(server_conf(d, listens) + f"""
key:
{keys}
acl:
  - id: wgdisco-update
    key: {key_name}
    action: update

template:
  - id: default
    storage: "{d / 'zones'}"
    file: "%s.zone"
    zonefile-sync: 0
    zonefile-load: whole
    journal-content: none
    semantic-checks: off

zone:
  - domain: {zone}
    acl: wgdisco-update
""")
    ns_addrs = "\n".join(f"ns {'AAAA' if ':' in a else 'A'} {a}" for a in listen)
    knot.zone_file.write_text(f"""\
$ORIGIN {zone}
$TTL {ttl}
@ SOA ns hostmaster 1 3600 600 86400 60
@ NS ns
{ns_addrs}
{extra_records}
""")
    return knot.start()
