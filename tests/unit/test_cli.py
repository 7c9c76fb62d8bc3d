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
