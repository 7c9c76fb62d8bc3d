"""``wgdisco rendezvous``: the key, the key file, bad input, and snippets each server accepts.

The servers started from the output, with two nodes behind NATs: tests/netns/test_rendezvous_lab.py.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from wgdisco import cli, config
from wgdisco.tools import rendezvous
from wgdisco.proto import tsig


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    args = cli.build_parser().parse_args(["rendezvous", *argv])
    return args.func(args, out, err), out.getvalue(), err.getvalue()


def test_a_fresh_key_each_time_and_every_snippet() -> None:
    rc, out, err = run("wg.example.net", "--server", "198.51.100.53")
    assert rc == 0 and err == ""
    rc2, out2, _ = run("wg.example.net", "--server", "198.51.100.53")
    node = rendezvous.cut(out, rendezvous.NODE_CONF)
    key_line = next(line for line in node.splitlines() if line.startswith("UpdateKey = "))
    key = tsig.parse_update_key(key_line.split(" = ", 1)[1])
    assert key.name == "wgdisco." and len(key.secret) == 32 and key.algorithm == "hmac-sha256"
    assert key_line not in out2  # 256 fresh random bits per run
    secret = base64.b64encode(key.secret).decode()
    assert f"secret: {secret}" in rendezvous.cut(out, rendezvous.KNOT_CONF)
    assert f'secret "{secret}";' in rendezvous.cut(out, rendezvous.NAMED_CONF)
    assert "grant wgdisco. subdomain wg.example.net. PTR SRV TXT A AAAA;" in out
    assert "update-type: [PTR, SRV, TXT, A, AAAA]" in out
    assert "ns  A 198.51.100.53" in rendezvous.cut(out, rendezvous.ZONE_FILE)
    # the [Discovery] lines are a valid config as printed
    cfg = config.parse("[Interface]\nPrivateKey = " + "A" * 43 + "=\n\n" + node, "wg0.conf")
    assert cfg.discovery.domain == "wg.example.net"
    assert str(cfg.discovery.stun[0]) == "198.51.100.53:3478"


def test_key_file_is_written_once_with_mode_0600(tmp_path: Path) -> None:
    key_file = tmp_path / "wg.tsig"
    rc, out, err = run("wg.example.net.", "--key-file", str(key_file), "--stun", "[2001:db8::1]:3478")
    assert rc == 0 and err == ""
    assert key_file.stat().st_mode & 0o777 == 0o600
    written = key_file.read_text()
    tsig.parse_update_key(written)
    node = rendezvous.cut(out, rendezvous.NODE_CONF)
    assert f"UpdateKeyFile = {key_file}" in node and "UpdateKey =" not in node
    assert "STUN = [2001:db8::1]:3478" in node and "Nameserver = SERVER_ADDRESS" in node
    # again: one clear line, the file untouched, nothing printed (no secret anywhere)
    rc, out, err = run("wg.example.net", "--key-file", str(key_file))
    assert rc == 1 and out == ""
    assert err == f"wgdisco rendezvous: {key_file} exists; not overwriting it (remove it or name another file)\n"
    assert key_file.read_text() == written


def test_a_symlink_at_the_key_file_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    (tmp_path / "k").symlink_to(target)
    rc, out, err = run("wg.example.net", "--key-file", str(tmp_path / "k"))
    assert rc == 1 and out == "" and "exists; not overwriting it" in err
    assert not target.exists()


@pytest.mark.parametrize("argv, message", [
    (["bad zone"], "'bad zone' is not a domain name (like wg.example.net)"),
    (["x-.example"], "'x-.example' is not a domain name (like wg.example.net)"),
    (["net"], "'net' is a top-level name; use a zone you control (like wg.example.net)"),
    (["a" * 64 + ".example"], "is not a domain name"),
    (["wg.example.net", "--server", "ns.example.net"], "--server 'ns.example.net' is not an IP address"),
    (["wg.example.net", "--key-name", "bad key"], "--key-name 'bad key' is not a DNS name"),
])
def test_bad_input_is_one_line_and_writes_nothing(argv: list[str], message: str, tmp_path: Path) -> None:
    rc, out, err = run(*argv, "--key-file", str(tmp_path / "k"))
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("wgdisco rendezvous: ") and message in err, err
    assert not (tmp_path / "k").exists()


def test_knot_accepts_its_snippet(tmp_path: Path) -> None:
    knotc = shutil.which("knotc") or shutil.which("knotc", path="/usr/sbin")
    if knotc is None:
        pytest.skip("knotc not installed (make system-deps)")
    _, out, _ = run("wg.example.net", "--server", "198.51.100.53")
    conf = tmp_path / "knot.conf"
    conf.write_text(f"server:\n    rundir: {tmp_path}\ntemplate:\n  - id: default\n    storage: {tmp_path}\n\n"
                    + rendezvous.cut(out, rendezvous.KNOT_CONF))
    (tmp_path / "wg.example.net.zone").write_text(rendezvous.cut(out, rendezvous.ZONE_FILE))
    check = subprocess.run([knotc, "-c", str(conf), "conf-check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    kzonecheck = shutil.which("kzonecheck") or shutil.which("kzonecheck", path="/usr/sbin")
    if kzonecheck:
        zone = subprocess.run([kzonecheck, "-o", "wg.example.net.", str(tmp_path / "wg.example.net.zone")],
                              capture_output=True, text=True)
        assert zone.returncode == 0, zone.stdout + zone.stderr


def test_bind_accepts_its_snippet(tmp_path: Path) -> None:
    checkconf = shutil.which("named-checkconf") or shutil.which("named-checkconf", path="/usr/sbin")
    checkzone = shutil.which("named-checkzone") or shutil.which("named-checkzone", path="/usr/sbin")
    if checkconf is None or checkzone is None:
        pytest.skip("BIND's named-checkconf/named-checkzone not installed (make system-deps)")
    _, out, _ = run("wg.example.net", "--server", "2001:db8::53")
    conf = tmp_path / "named.conf"
    conf.write_text(rendezvous.cut(out, rendezvous.NAMED_CONF))
    check = subprocess.run([checkconf, str(conf)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    zone = tmp_path / "z"
    zone.write_text(rendezvous.cut(out, rendezvous.ZONE_FILE))
    check = subprocess.run([checkzone, "wg.example.net", str(zone)], capture_output=True, text=True)
    assert check.returncode == 0 and "ns  AAAA 2001:db8::53" in zone.read_text(), check.stdout + check.stderr


def test_world_readable_output_file_is_warned_about(tmp_path: Path) -> None:
    path = tmp_path / "out"
    with open(path, "w") as f:
        os.chmod(path, 0o644)
        args = cli.build_parser().parse_args(["rendezvous", "wg.example.net"])
        err = io.StringIO()
        assert args.func(args, f, err) == 0
    assert err.getvalue().startswith("Warning: writing to world accessible file.")
