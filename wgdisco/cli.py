"""The command line: ``wgdisco <command>``.

Key commands behave like wg(8): ``wgdisco genkey | wgdisco pubkey`` gives the
same output as ``wg genkey | wg pubkey``. Errors go to stderr as one line,
``wgdisco <command>: <what went wrong>``, and the exit code is non-zero.
"""

from __future__ import annotations

import argparse
import base64
import os
import stat
import sys
from typing import Callable, Sequence, TextIO

from wgdisco import __version__, config
from wgdisco.errors import ConfigError, DecodeError
from wgdisco.proto import keys

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2  # as argparse's usage errors


def warn_if_world_accessible(out: TextIO, err: TextIO) -> None:
    """wg genkey warns when the key goes into a file others can read; so do we."""
    try:
        mode = os.fstat(out.fileno()).st_mode
    except (OSError, ValueError, AttributeError):
        return
    if stat.S_ISREG(mode) and mode & stat.S_IRWXO:
        print("Warning: writing to world accessible file.\nConsider setting the umask to 077 and trying again.", file=err)


def cmd_genkey(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    warn_if_world_accessible(out, err)
    print(keys.key_to_base64(keys.generate_private_key(os.urandom(keys.KEY_LEN))), file=out)
    return EXIT_OK


def cmd_genpsk(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    warn_if_world_accessible(out, err)
    print(keys.key_to_base64(os.urandom(keys.KEY_LEN)), file=out)
    return EXIT_OK


def new_mesh_key() -> str:
    """A strong random mesh key: 256 random bits, URL-safe base64 (no '#', which starts a comment)."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode("ascii").rstrip("=")


def cmd_genmesh(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.rotate is None and args.finish is None:
        warn_if_world_accessible(out, err)
        print(new_mesh_key(), file=out)
        return EXIT_OK
    try:
        text = _rotate(args) if args.rotate is not None else _finish(args)
    except (ConfigError, ValueError, OSError) as e:
        print(f"wgdisco genmesh: {e}", file=err)
        return EXIT_ERROR
    path = args.rotate if args.rotate is not None else args.finish
    if args.write:
        from wgdisco.tools import meshconf

        meshconf.write(path, text)
        what = "rotated" if args.rotate is not None else "rotation finished"
        print(f"{path}: {what}; copy it to every member, then reload each (systemctl reload, or kill -HUP)", file=err)
    else:
        warn_if_world_accessible(out, err)
        out.write(text)
    return EXIT_OK


def _rotate(args: argparse.Namespace) -> str:
    """The config at ``args.rotate`` with a new MeshKey, the old one as PreviousMeshKey until now
    + ``args.window``, and MeshId (the address plan the mesh keeps: docs/mesh.md)."""
    import time

    from wgdisco.tools import meshconf
    from wgdisco.proto.mesh import MeshId, derive_master

    cfg = config.load(args.rotate)
    d = cfg.discovery
    if d.mesh_key is None:
        raise ValueError(f"{args.rotate}: no MeshKey in [Discovery]: not a mesh")
    if d.mesh_key_file is not None:
        raise ValueError(f"{args.rotate}: the mesh key is in MeshKeyFile; put MeshKey in the config to rotate it "
                         "(docs/mesh.md \"Rotating the mesh key\")")
    now = time.time()
    if d.previous_mesh_key_until is not None and d.previous_mesh_key_until > now:
        raise ValueError(f"{args.rotate}: a rotation is under way until {config.format_until(d.previous_mesh_key_until)}; "
                         "wait for its end (members still on the older key would be cut off)")
    window = meshconf.parse_duration(args.window)
    plan = d.mesh_id if d.mesh_id is not None else MeshId.from_master(derive_master(d.mesh_key))
    with open(args.rotate, encoding="utf-8") as f:
        text = f.read()
    return meshconf.set_keys(text, {
        "MeshKey": new_mesh_key(), "PreviousMeshKey": d.mesh_key,
        "PreviousMeshKeyUntil": config.format_until(now + window), "MeshId": plan.text,
    })


def _finish(args: argparse.Namespace) -> str:
    """The config at ``args.finish`` without PreviousMeshKey and PreviousMeshKeyUntil (after the end)."""
    import time

    from wgdisco.tools import meshconf

    d = config.load(args.finish).discovery
    if d.previous_mesh_key_until is not None and d.previous_mesh_key_until > time.time():
        raise ValueError(f"{args.finish}: the previous key is accepted until "
                         f"{config.format_until(d.previous_mesh_key_until)}; finish after that")
    with open(args.finish, encoding="utf-8") as f:
        text = f.read()
    return meshconf.set_keys(text, {"PreviousMeshKey": None, "PreviousMeshKeyUntil": None})


def _one_interface(name: str | None) -> str:
    from wgdisco.errors import LocalError
    from wgdisco.io import control

    if name:
        return name
    names = control.interfaces()
    if len(names) != 1:
        raise LocalError("no wgdisco interface is running" if not names
                         else f"several interfaces run ({', '.join(names)}): name one")
    return names[0]


def cmd_mesh_members(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from wgdisco.errors import LocalError
    from wgdisco.io import control

    try:
        report = control.request(_one_interface(args.iface), "members")
    except LocalError as e:
        print(f"wgdisco mesh members: {e}", file=err)
        return EXIT_ERROR
    if "error" in report:
        print(f"wgdisco mesh members: {report['error']}", file=err)
        return EXIT_ERROR
    if args.json:
        import json

        out.write(json.dumps(report, indent=2) + "\n")
    else:
        out.write(format_members(report))
    return EXIT_OK


def format_members(r: dict) -> str:
    """``wgdisco mesh members``: one line per member, then the window and the banned keys."""
    rows = [("NAME", "PUBLIC KEY", "ADDRESSES", "FIRST SEEN", "LAST SEEN", "KEY", "PATH")]
    for m in r["members"]:
        name = (m["name"] or "-") + (" (this host)" if m["self"] else "")
        rows.append((name, m["public_key"], " ".join(m["addresses"]),
                     "-" if m["first_seen"] is None else _ago(m["first_seen"]),
                     "-" if m["last_seen"] is None else _ago(m["last_seen"]),
                     m["generation"] or "-", m["path"] or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"interface: {r['interface']}, mesh id {r['id']}"]
    if r.get("previous_id"):
        import time

        verb = "is accepted until" if r["previous_until"] > time.time() else "was accepted until"
        lines.append(f"rotation: the previous key (id {r['previous_id']}) {verb} {config.format_until(r['previous_until'])}")
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.append(f"banned keys: {', '.join(r['banned']) if r['banned'] else 'none'}")
    return "\n".join(lines) + "\n"


def cmd_mesh_ban(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Add a member's key to MeshDeny in the running daemon's config, then reload it."""
    from wgdisco.tools import meshconf
    from wgdisco.errors import LocalError
    from wgdisco.io import control

    try:
        iface = _one_interface(args.iface)
        report = control.request(iface, "members")
        if "error" in report:
            raise LocalError(report["error"])
        public, shown = _ban_target(args.target, report)
        path = report["config"]
        with open(path, encoding="utf-8") as f:
            text = f.read()
        meshconf.write(path, meshconf.add_deny(text, public))
        answer = control.request(iface, "reload", timeout=30.0)
    except (LocalError, OSError) as e:
        print(f"wgdisco mesh ban: {e}", file=err)
        return EXIT_ERROR
    if not answer.get("reloaded"):
        print(f"wgdisco mesh ban: {path}: MeshDeny written, but the reload failed: {answer.get('error')}", file=err)
        return EXIT_ERROR
    print(f"banned {shown} (MeshDeny in {path}); {iface} reloaded", file=out)
    return EXIT_OK


def _ban_target(target: str, report: dict) -> tuple[str, str]:
    """(base64 key, how to show it) for a key or a member's name; LocalError if neither fits."""
    from wgdisco.errors import LocalError

    members = report["members"]
    try:
        public = keys.key_to_base64(keys.key_from_base64(target.strip()))
    except DecodeError:
        wanted = target.strip().lower()
        found = [m for m in members if wanted in m["names"] or m["name"] == wanted]
        if not found:
            raise LocalError(f"{target[:64]!r} is neither a public key nor a member's name "
                             "(wgdisco mesh members lists them)") from None
        if len(found) > 1:
            raise LocalError(f"{target[:64]!r} names several members: give the public key")
        public = found[0]["public_key"]
    own = next(m for m in members if m["self"])
    if public == own["public_key"]:
        raise LocalError("that is this host's own key")
    name = next((m["name"] for m in members if m["public_key"] == public and m["name"]), None)
    return public, f"{public} ({name})" if name else public


def cmd_pubkey(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    text = sys.stdin.read(1024)
    try:
        private = keys.key_from_base64(text)
    except DecodeError:
        print("wgdisco pubkey: Key is not the correct length or format", file=err)
        return EXIT_ERROR
    print(keys.key_to_base64(keys.public_key(private)), file=out)
    return EXIT_OK


def cmd_showconf(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        cfg = config.load(args.config)
    except ConfigError as e:
        print(f"wgdisco showconf: {e}", file=err)
        return EXIT_ERROR
    for warning in cfg.warnings:
        print(f"Warning: {warning}", file=err)
    out.write(config.format_config(cfg))
    return EXIT_OK


def cmd_up(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    import asyncio
    import logging

    from wgdisco import daemon
    from wgdisco.errors import LocalError
    from wgdisco.io import systemd

    # under journald: no time of our own, the priority as <N> (io/systemd.py)
    systemd.configure_logging(logging.INFO, err)
    try:
        asyncio.run(daemon.run_config(args.config))
    except (ConfigError, LocalError) as e:
        print(f"wgdisco up: {e}", file=err)
        return EXIT_ERROR
    return EXIT_OK


def cmd_status(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from wgdisco.errors import LocalError
    from wgdisco.io import control

    names = [args.iface] if args.iface else control.interfaces()
    if not names:
        print("wgdisco status: no wgdisco interface is running", file=err)
        return EXIT_ERROR
    reports = []
    for name in names:
        try:
            reports.append(control.request(name))
        except LocalError as e:
            print(f"wgdisco status: {e}", file=err)
            return EXIT_ERROR
    if args.json:
        import json

        out.write(json.dumps(reports[0] if args.iface else reports, indent=2) + "\n")
    else:
        out.write("\n".join(format_status(r) for r in reports))
    return EXIT_OK


def _ago(timestamp: int) -> str:
    import time

    if not timestamp:
        return "never"
    seconds = max(0, int(time.time()) - timestamp)
    if seconds < 120:
        return f"{seconds} seconds ago"
    if seconds < 7200:
        return f"{seconds // 60} minutes ago"
    return f"{seconds // 3600} hours ago"


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.2f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


HARD_SIDE = {"hard": "our", "easy": "the peer's"}
BASIS_TEXT = {
    "lan": "a LAN address",
    "record": "a published candidate (host or STUN-reflexive address)",
    "peer-reflexive": "the address the peer's probes came from",
    "birthday": "a birthday-punched port",
    "roaming": "the source of the peer's latest authenticated packet",
    "config": "the configured Endpoint",
}


def format_status(r: dict) -> str:
    """Human status, in the manner of `wg show` plus where each path stands."""
    lines = [f"interface: {r['interface']}", f"  public key: {r['public_key']}",
             f"  listening port: {r['listen_port']}"]
    mesh = r.get("mesh")
    if mesh:
        lines.append(f"  mesh: {mesh['id']}, addresses {', '.join(mesh['addresses'])}, prefixes {mesh['ipv4']} "
                     f"and {mesh['ipv6']}; {mesh['peers']} of at most {mesh['max_peers']} mesh peers")
        if mesh.get("names"):
            lines.append(f"  mesh names: {', '.join(mesh['names'])} (in {mesh.get('hosts_file') or 'no hosts file'})")
        if mesh.get("previous_until"):
            lines.append(f"  mesh key rotation: the previous key (id {mesh['previous_id']}) accepted until "
                         f"{config.format_until(mesh['previous_until'])}")
        if mesh.get("banned"):
            lines.append(f"  banned keys: {mesh['banned']} (wgdisco mesh members lists them)")
        if mesh.get("contested_names"):
            lines.append(f"  contested names (claimed by two or more members, resolve to none): "
                         f"{', '.join(mesh['contested_names'])}")
    nat = r["nat"]
    if nat["reflexive"]:
        filtering = nat.get("filtering", "unknown")
        shown = f", filtering {filtering}" if filtering != "unknown" else ""
        lines.append(f"  reflexive: {', '.join(nat['reflexive'])} (NAT mapping {nat['mapping']}{shown})")
    pm = r.get("port_mapping")
    if pm:
        lines.append(f"  port mapping: {format_port_mapping(pm)}")
    for p in r["peers"]:
        lines += ["", f"peer: {p['public_key']}" + (" (mesh)" if p.get("mesh") else "")]
        if p.get("mesh_addresses"):
            lines.append(f"  mesh addresses: {', '.join(p['mesh_addresses'])}")
        if p.get("mesh"):
            claimed = p.get("mesh_name")
            names = ", ".join(p.get("mesh_names") or [])
            if claimed is not None and claimed not in (p.get("mesh_names") or []):
                names += f" (claims {claimed!r}, which another member claims too)"
            lines.append(f"  mesh names: {names}")
        if p["path"] == "none":
            lines.append(f"  path: none ({p['reason_text'] or p['reason']})")
        else:
            lines.append(f"  path: {p['path']} via {p['endpoint']} (from {p['endpoint_source'] or 'unknown'})")
            if p.get("path_basis"):
                extra = f" from local port {p['local_port']}" if p.get("path_basis") == "birthday" and p.get("local_port") else ""
                lines.append(f"  based on: {BASIS_TEXT.get(p['path_basis'], p['path_basis'])}{extra}")
        m = p.get("path_mtu")
        if m and m.get("state") not in (None, "off", "none"):
            how = {"probe": "confirmed by probes", "black-hole": "black hole found, fell back",
                   "error": "the path is below the minimum", "interface": "the interface MTU",
                   "link": "on the link, no search"}.get(m["how"], m["how"])
            outer = f", outer {m['path']}" if m.get("path") else ""
            holes = f", {m['black_holes']} black hole(s) so far" if m.get("black_holes") else ""
            lines.append(f"  path MTU: inner packets up to {m['inner']} bytes{outer} ({how}; {m['state']}{holes})")
        b = p.get("birthday") or {}
        if b.get("role"):
            lines.append(f"  birthday punching: attempt {b['attempts']} running ({HARD_SIDE[b['role']]} NAT is the hard one), {b['sockets']} extra sockets")
        if p["endpoint"] and p["path"] == "none":
            lines.append(f"  endpoint: {p['endpoint']} (from {p['endpoint_source'] or 'unknown'})")
        if p["allowed_ips"]:
            lines.append(f"  allowed ips: {', '.join(p['allowed_ips'])}")
        for c in p["candidates"]:
            rtt = f", {c['rtt_ms']} ms" if c["rtt_ms"] is not None else ""
            lines.append(f"  candidate: {c['address']} {c['kind']} via {c['source']}: {c['state']}{rtt}")
        lines.append(f"  latest handshake: {_ago(p['latest_handshake'])}")
        lines.append(f"  transfer: {_bytes(p['rx_bytes'])} received, {_bytes(p['tx_bytes'])} sent")
        if p["persistent_keepalive"]:
            lines.append(f"  persistent keepalive: every {p['persistent_keepalive']} seconds")
    return "\n".join(lines) + "\n"


PORT_MAPPING_NAMES = {"pcp": "PCP", "natpmp": "NAT-PMP", "upnp": "UPnP IGD"}


def format_port_mapping(pm: dict) -> str:
    """``status``'s port-mapping line: the mapping and its protocol, or what happened."""
    name = PORT_MAPPING_NAMES.get(pm["protocol"] or "", pm["protocol"])
    answered = ", ".join(PORT_MAPPING_NAMES.get(a, a) for a in pm["answered"]) or "none"
    gateway = pm["gateway"] or "no default route"
    if pm["state"] == "mapped":
        expiry = "permanent" if pm["expires_in"] is None else f"expires in {pm['expires_in']} s"
        return f"{pm['external']} by {name} from gateway {gateway} ({expiry})"
    if pm["state"] == "probing":
        return f"asking gateway {gateway} by {name} (PortMapping = {pm['mode']})"
    if pm["state"] == "failed":
        return (f"none: no gateway mapping (PortMapping = {pm['mode']}, gateway {gateway}, answered: {answered}"
                + (f"; last: {pm['last_failure']}" if pm["last_failure"] else "") + ")")
    return f"{pm['state']} (PortMapping = {pm['mode']})"


def cmd_netcheck(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    import json

    from wgdisco.tools import netcheck
    from wgdisco.errors import LocalError

    try:
        servers = netcheck.parse_servers(args.stun)
        timeout = netcheck.check_timeout(args.timeout)
    except ValueError as e:
        print(f"wgdisco netcheck: {e}", file=err)
        return EXIT_USAGE
    try:
        report = netcheck.run(servers, timeout=timeout, port_mapping=args.port_mapping)
    except LocalError as e:
        print(f"wgdisco netcheck: {e}", file=err)
        return EXIT_ERROR
    if args.json:
        print(json.dumps(netcheck.to_json(report), indent=2), file=out)
    else:
        out.write(netcheck.format_report(report))
    return netcheck.exit_code(report)


def cmd_rendezvous(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """A fresh TSIG key and the Knot / BIND / node snippets for ZONE (wgdisco/tools/rendezvous.py)."""
    from wgdisco.tools import rendezvous

    try:
        zone = rendezvous.check_zone(args.zone)
        key_name = rendezvous.check_key_name(args.key_name)
        server = rendezvous.check_server(args.server) if args.server else None
        stun = None
        if args.stun:
            stun = str(config.parse_stun_servers(args.stun)[0])
    except ValueError as e:
        print(f"wgdisco rendezvous: {e}", file=err)
        return EXIT_USAGE
    secret = base64.b64encode(os.urandom(32)).decode("ascii")  # RFC 8945 §6: at least the hash's length
    key_file = None
    if args.key_file:
        key_file = os.path.abspath(args.key_file)
        try:  # O_EXCL: an existing file (another zone's key, a symlink planted there) is never touched
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            print(f"wgdisco rendezvous: {key_file} exists; not overwriting it (remove it or name another file)",
                  file=err)
            return EXIT_ERROR
        except OSError as e:
            print(f"wgdisco rendezvous: cannot create {key_file}: {e.strerror}", file=err)
            return EXIT_ERROR
        with os.fdopen(fd, "w") as f:
            f.write(f"{rendezvous.ALGORITHM}:{key_name}:{secret}\n")
    r = rendezvous.Rendezvous(zone, key_name, secret, server, stun, key_file)
    warn_if_world_accessible(out, err)
    out.write(rendezvous.render(r))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from wgdisco import demo

    return demo.main(out, err)


def version_text() -> str:
    """``--version``: the version and where it runs from, the data path in use, the Python."""
    import platform

    import wgdisco
    from wgdisco.daemon import fastpath
    from wgdisco.errors import LocalError

    try:
        datapath = fastpath.choose(os.environ)[1]
    except LocalError as e:
        datapath = f"data path: none ({e})"
    return (f"wgdisco {__version__} ({os.path.dirname(wgdisco.__file__)})\n{datapath}\n"
            f"Python {platform.python_version()} ({sys.executable})")


class VersionAction(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version, the data path in use "
                         "(compiled or pure Python, and its crypto library) and the Python version")

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wgdisco",
        description="WireGuard endpoint discovery and NAT traversal, with a userspace tunnel.",
    )
    parser.add_argument("--version", action=VersionAction)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name: str, func: Callable[..., int], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        return p

    add("genkey", cmd_genkey, "print a new private key (base64), like wg genkey")
    add("genpsk", cmd_genpsk, "print a new preshared key (base64), like wg genpsk")
    p = add("genmesh", cmd_genmesh, "print a new random mesh key for [Discovery] MeshKey; with --rotate, the "
            "config with a new key and the old one accepted for a while (docs/mesh.md)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--rotate", metavar="CONFIG", help="print CONFIG with a new MeshKey, the old one as "
                       "PreviousMeshKey until now + --window, and MeshId (addresses stay)")
    group.add_argument("--finish", metavar="CONFIG", help="print CONFIG without PreviousMeshKey and "
                       "PreviousMeshKeyUntil (after the window's end)")
    p.add_argument("--window", default="1d", metavar="DURATION",
                   help="how long the old key is still accepted: 30s, 10m, 2h, 7d (default 1d)")
    p.add_argument("--write", action="store_true", help="rewrite CONFIG in place (atomically, mode kept) "
                   "instead of printing it")
    add("pubkey", cmd_pubkey, "read a private key on stdin, print its public key, like wg pubkey")
    add("showconf", cmd_showconf, "print a config file normalized, secrets hidden").add_argument(
        "config", help="path to a wg-quick style config (e.g. /etc/wireguard/wg0.conf)"
    )
    add("up", cmd_up, "run the tunnel and discovery in the foreground").add_argument(
        "config", help="path to the config; the interface is named after the file stem"
    )
    p = add("status", cmd_status, "show interfaces, peers and paths of running daemons")
    p.add_argument("iface", nargs="?", help="one interface (default: every running one)")
    p.add_argument("--json", action="store_true", help="print JSON (schema: docs/status.schema.json)")
    p = add("netcheck", cmd_netcheck, "report reflexive addresses and NAT behaviour")
    p.add_argument("--stun", action="append", default=[], metavar="HOST:PORT",
                   help="a STUN server to ask (repeatable); none given: no STUN at all")
    p.add_argument("--json", action="store_true", help="print a JSON object (schema: docs/cli.md)")
    p.add_argument("--port-mapping", action=argparse.BooleanOptionalAction, default=None,
                   help="ask the default gateway whether it speaks PCP, NAT-PMP, UPnP IGD "
                        "(default: yes when --stun is given)")
    p.add_argument("--timeout", type=float, default=3.0, metavar="S",
                   help="seconds to wait for the STUN answers (default 3)")
    p = add("rendezvous", cmd_rendezvous, "print a fresh TSIG key and the Knot, BIND and [Discovery] snippets "
            "for a rendezvous zone (docs/rendezvous.md)")
    p.add_argument("zone", help="the DNS zone the nodes publish in, e.g. wg.example.net")
    p.add_argument("--server", metavar="IP", help="the rendezvous server's public address (for the zone's NS, "
                   "the nodes' Nameserver and STUN lines)")
    p.add_argument("--stun", metavar="HOST:PORT", help="the nodes' STUN server (default: the --server address, port 3478)")
    p.add_argument("--key-file", metavar="FILE", help="also write the key to FILE (mode 0600, never overwritten) "
                   "and have the nodes read it (UpdateKeyFile)")
    p.add_argument("--key-name", default="wgdisco.", metavar="NAME", help="the TSIG key's name (default wgdisco.)")
    mesh = add("mesh", lambda args, out, err: EXIT_USAGE, "see and change a running mesh's members (docs/mesh.md): "
               "'wgdisco mesh members [IFACE] [--json]' lists them (name, key, addresses, first and last seen, "
               "mesh key, path) and the banned keys; 'wgdisco mesh ban KEY-OR-NAME [IFACE]' adds the key to "
               "MeshDeny in the daemon's config and reloads it")
    msub = mesh.add_subparsers(dest="mesh_command", metavar="COMMAND")
    msub.required = True
    p = msub.add_parser("members", help="list the members: names, keys, addresses, first and last seen, "
                        "mesh key, path; and the banned keys", description="list the mesh's members")
    p.set_defaults(func=cmd_mesh_members)
    p.add_argument("iface", nargs="?", help="the interface (default: the only one running)")
    p.add_argument("--json", action="store_true", help="print JSON (docs/cli.md)")
    p = msub.add_parser("ban", help="add a member's key to MeshDeny in the daemon's config and reload it",
                        description="ban a key at once: its sessions end, its name and addresses go")
    p.set_defaults(func=cmd_mesh_ban)
    p.add_argument("target", help="the member's public key (base64) or name")
    p.add_argument("iface", nargs="?", help="the interface (default: the only one running)")
    add("demo", cmd_demo, "build a lab of namespaces and show discovery and NAT traversal")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args, sys.stdout, sys.stderr)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
