"""The command line, run as a user runs it: a subprocess of the installed entry point."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from wgdisco.proto import keys

PRIV = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="


def wgdisco(*args: str, stdin: str = "", cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wgdisco", *args], input=stdin, capture_output=True, text=True, timeout=30, cwd=cwd
    )


def test_genkey_pubkey_pipeline() -> None:
    gen = wgdisco("genkey")
    assert gen.returncode == 0
    priv = keys.key_from_base64(gen.stdout)
    assert keys.clamp(priv) == priv
    pub = wgdisco("pubkey", stdin=gen.stdout)
    assert pub.returncode == 0
    assert pub.stdout == keys.key_to_base64(keys.public_key(priv)) + "\n"


def test_genkey_is_random_and_genpsk_is_a_key() -> None:
    assert wgdisco("genkey").stdout != wgdisco("genkey").stdout
    keys.key_from_base64(wgdisco("genpsk").stdout)


def test_genkey_warns_on_world_readable_file(tmp_path: Path) -> None:
    target = tmp_path / "key"
    with open(target, "w") as out:
        os.chmod(target, 0o644)
        proc = subprocess.run([sys.executable, "-m", "wgdisco", "genkey"], stdout=out, stderr=subprocess.PIPE, text=True)
    assert proc.returncode == 0
    assert "world accessible" in proc.stderr
    keys.key_from_base64(target.read_text())


def test_pubkey_rejects_garbage() -> None:
    proc = wgdisco("pubkey", stdin="not a key\n")
    assert proc.returncode == 1
    assert proc.stderr == "wgdisco pubkey: Key is not the correct length or format\n"
    assert proc.stdout == ""


def test_showconf_hides_private_key(tmp_path: Path) -> None:
    path = tmp_path / "wg0.conf"
    path.write_text(f"[Interface]\nPrivateKey = {PRIV}\nListenPort = 51820\n")
    path.chmod(0o600)
    proc = wgdisco("showconf", str(path))
    assert proc.returncode == 0, proc.stderr
    assert PRIV not in proc.stdout and PRIV not in proc.stderr
    assert "PrivateKey = (hidden)" in proc.stdout
    assert "# PublicKey = HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=" in proc.stdout
    assert proc.stderr == ""


def test_showconf_malformed_config_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "wg0.conf"
    path.write_text(f"[Interface]\nPrivateKey = {PRIV}\nListenPort = many\n")
    path.chmod(0o600)
    proc = wgdisco("showconf", str(path))
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert lines == [f"wgdisco showconf: {path}:3: ListenPort: 'many' is not a port number (0-65535)"]


def test_showconf_warns_about_loose_mode(tmp_path: Path) -> None:
    path = tmp_path / "wg0.conf"
    path.write_text(f"[Interface]\nPrivateKey = {PRIV}\n")
    path.chmod(0o644)
    proc = wgdisco("showconf", str(path))
    assert proc.returncode == 0
    assert "accessible by others" in proc.stderr and PRIV not in proc.stderr


def test_no_command_is_a_usage_error() -> None:
    proc = wgdisco()
    assert proc.returncode == 2 and "usage:" in proc.stderr


def test_up_with_bad_config_exits_with_one_error(tmp_path: Path) -> None:
    path = tmp_path / "wg0.conf"
    path.write_text("[Interface]\nListenPort = 1\n")
    proc = wgdisco("up", str(path))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == f"wgdisco up: {path}:1: PrivateKey: [Interface] has no PrivateKey"


def test_status_without_a_daemon_says_so() -> None:
    proc = wgdisco("status", "nosuchif0")
    assert proc.returncode == 1
    assert proc.stderr == "wgdisco status: no wgdisco is running nosuchif0 (/run/wgdisco/nosuchif0.sock does not exist)\n"


def test_status_schema_checker_can_fail() -> None:
    import json as _json

    from tests.schema_check import check

    schema = _json.loads((Path(__file__).resolve().parents[2] / "docs" / "status.schema.json").read_text())
    good = {"interface": "wg0", "public_key": "k", "listen_port": 1, "dropped": {},
            "nat": {"reflexive": [], "mapping": "unknown"}, "peers": [],
            "handshakes": {"under_load": False, "cookie_replies_sent": 0, "cookie_replies_limited": 0,
                           "over_budget": 0}}
    check(good, schema)
    for bad in ({**good, "listen_port": "1"}, {**good, "nat": {"reflexive": [], "mapping": "weird"}},
                {k: v for k, v in good.items() if k != "peers"}):
        with pytest.raises(AssertionError):
            check(bad, schema)


def test_genmesh_is_random_strong_and_usable_as_mesh_key(tmp_path: Path) -> None:
    a, b = wgdisco("genmesh"), wgdisco("genmesh")
    assert a.returncode == 0 and a.stdout != b.stdout
    key = a.stdout.strip()
    assert len(key) == 43 and "#" not in key  # 256 bits, URL-safe base64
    conf = tmp_path / "mesh0.conf"
    conf.write_text(f"[Interface]\nListenPort = 51820\n\n[Discovery]\nMeshKey = {key}\n")
    conf.chmod(0o600)
    shown = wgdisco("showconf", str(conf))
    assert shown.returncode == 0 and key not in shown.stdout and "MeshKey = (hidden)" in shown.stdout


# --- the mesh's lifecycle (issue 27): genmesh --rotate/--finish, the config edits ---------------

MESH_CONF = ("# the mesh\n[Interface]\nListenPort = 51820\n\n[Discovery]\nMeshKey = correct horse battery staple\n"
             "Name = alpha  # this host\n\n[Peer]\nPublicKey = " + keys.key_to_base64(bytes([7]) * 32) + "\n")


def test_genmesh_rotate_keeps_the_addresses_and_every_other_line(tmp_path: Path) -> None:
    from wgdisco import config
    from wgdisco.proto.mesh import Mesh

    conf = tmp_path / "mesh0.conf"
    conf.write_text(MESH_CONF)
    conf.chmod(0o600)
    r = wgdisco("genmesh", "--rotate", str(conf), "--window", "2h")
    assert r.returncode == 0, r.stderr
    new = config.parse(r.stdout, "x.conf").discovery
    assert new.previous_mesh_key == "correct horse battery staple" and new.mesh_key not in (None, new.previous_mesh_key)
    assert 7190 < new.previous_mesh_key_until - __import__("time").time() <= 7200
    old, rotated = Mesh("correct horse battery staple"), Mesh(new.mesh_key, plan=new.mesh_id)
    assert rotated.same_addresses(old) and rotated.id != old.id
    for i in range(1, 10):  # every key keeps its addresses
        assert rotated.ipv6_of(bytes([i]) * 32) == old.ipv6_of(bytes([i]) * 32)
    for line in ("# the mesh", "Name = alpha  # this host", "[Peer]", "ListenPort = 51820"):
        assert line in r.stdout
    assert conf.read_text() == MESH_CONF  # printed, not written
    # --write: in place, mode kept; a second rotation waits for the first one's end
    assert wgdisco("genmesh", "--rotate", str(conf), "--window", "30s", "--write").returncode == 0
    assert conf.stat().st_mode & 0o777 == 0o600 and "PreviousMeshKey = correct horse" in conf.read_text()
    again = wgdisco("genmesh", "--rotate", str(conf))
    assert again.returncode == 1 and "under way until" in again.stderr and "horse" not in again.stderr
    early = wgdisco("genmesh", "--finish", str(conf))
    assert early.returncode == 1 and "finish after that" in early.stderr


def test_genmesh_finish_drops_the_previous_key_after_the_end(tmp_path: Path) -> None:
    conf = tmp_path / "mesh0.conf"
    conf.write_text(MESH_CONF.replace("Name = alpha", "PreviousMeshKey = old one\nPreviousMeshKeyUntil = "
                                      "2020-01-01T00:00:00Z\nMeshId = m1." + "A" * 51 + "\nName = alpha"))
    r = wgdisco("genmesh", "--finish", str(conf))
    assert r.returncode == 0, r.stderr
    assert "PreviousMeshKey" not in r.stdout and "MeshId = m1." in r.stdout and "Name = alpha" in r.stdout


def test_genmesh_rotate_refuses_a_mesh_key_file_and_a_non_mesh(tmp_path: Path) -> None:
    (tmp_path / "k").write_text("s3cret key\n")
    (tmp_path / "k").chmod(0o600)
    conf = tmp_path / "m.conf"
    conf.write_text("[Interface]\nListenPort = 1\n[Discovery]\nMeshKeyFile = k\n")
    r = wgdisco("genmesh", "--rotate", str(conf))
    assert r.returncode == 1 and "MeshKeyFile" in r.stderr and "s3cret" not in r.stderr
    conf.write_text("[Interface]\nPrivateKey = " + keys.key_to_base64(bytes([9]) * 32) + "\n")
    r = wgdisco("genmesh", "--rotate", str(conf))
    assert r.returncode == 1 and "not a mesh" in r.stderr


def test_config_edits_keep_every_other_byte() -> None:
    from wgdisco.tools import meshconf

    k1, k2 = keys.key_to_base64(bytes([1]) * 32), keys.key_to_base64(bytes([2]) * 32)
    once = meshconf.add_deny(MESH_CONF, k1)
    assert once == MESH_CONF.replace("Name = alpha  # this host\n", f"Name = alpha  # this host\nMeshDeny = {k1}\n")
    twice = meshconf.add_deny(meshconf.add_deny(once, k2), k2)
    assert f"MeshDeny = {k1}, {k2}\n" in twice and twice.count("MeshDeny") == 1
    assert meshconf.set_keys(twice, {"MeshDeny": None}) == MESH_CONF
    bare = meshconf.set_keys("[Interface]\nListenPort = 1", {"MeshKey": "x"})
    assert bare == "[Interface]\nListenPort = 1\n\n[Discovery]\nMeshKey = x\n"
    assert [meshconf.parse_duration(t) for t in ("90", "30s", "10m", "2h", "7d")] == [90, 30, 600, 7200, 604800]
    with pytest.raises(ValueError):
        meshconf.parse_duration("soon")


def test_mesh_members_and_ban_without_a_daemon_fail_in_one_line() -> None:
    r = wgdisco("mesh", "members", "nosuch0")
    assert r.returncode == 1 and r.stderr.startswith("wgdisco mesh members: ") and r.stderr.count("\n") == 1
    r = wgdisco("mesh", "ban", "somebody", "nosuch0")
    assert r.returncode == 1 and r.stderr.startswith("wgdisco mesh ban: ")
