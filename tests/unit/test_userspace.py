"""wgdisco-userspace: wireguard-go's command line (main.go) and the [Discovery] side file.

Nothing here creates an interface: usage and configuration errors are decided before the
daemon starts (the lab test tests/netns/test_wgquick_lab.py runs the real thing under wg-quick).
"""

from __future__ import annotations

import dataclasses

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wgdisco import __version__, config, userspace
from wgdisco.errors import ConfigError
from wgdisco.lab import require_tool

PRIV = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="
USAGE = "Usage: {} [-f/--foreground] INTERFACE-NAME\n"


def run(argv: list[str], environ: dict[str, str] | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = userspace.main(argv, out=out, err=err, environ=environ if environ is not None else {})
    return rc, out.getvalue(), err.getvalue()


# --- the command line, as wireguard-go's main.go reads it ------------------------------


@pytest.mark.parametrize("args,expected", [
    (["wg0"], (False, "wg0")),
    (["-f", "wg0"], (True, "wg0")),
    (["--foreground", "wg0"], (True, "wg0")),
    ([], None),
    (["-f"], None),
    (["--foreground"], None),
    (["wg0", "wg1"], None),
    (["wg0", "-f"], None),  # the flag comes first, as in main.go
    (["-f", "wg0", "x"], None),
])
def test_parse_args(args: list[str], expected: tuple[bool, str] | None) -> None:
    assert userspace.parse_args(args) == expected


@pytest.mark.parametrize("args", [[], ["-f"], ["--foreground"], ["a", "b"], ["-f", "a", "b"], ["a", "b", "c"]])
def test_usage_errors_print_the_usage_on_stdout_and_exit_0(args: list[str]) -> None:
    rc, out, err = run(["/usr/bin/wgdisco-userspace", *args])
    assert (rc, out, err) == (0, USAGE.format("/usr/bin/wgdisco-userspace"), "")


def test_usage_matches_wireguard_go() -> None:
    """Same text (but for the program name) and the same exit status as the real wireguard-go."""
    wireguard_go = require_tool("wireguard-go")  # a skip without it; a failure under WGDISCO_REQUIRE_NETNS=1
    for args in ([], ["-f"], ["a", "b"]):
        real = subprocess.run([wireguard_go, *args], capture_output=True, text=True, timeout=10,
                              env={**os.environ, "WG_PROCESS_FOREGROUND": "1"})
        ours = run([wireguard_go, *args])
        assert (ours[0], ours[1]) == (real.returncode, real.stdout), args


def test_version() -> None:
    rc, out, _ = run(["wgdisco-userspace", "--version"])
    assert rc == 0 and out.startswith(f"wgdisco-userspace {__version__}\n")


def test_installed_entry_point() -> None:
    script = Path(sys.executable).parent / "wgdisco-userspace"
    if not script.exists():
        pytest.fail(f"{script} is missing: run `make bootstrap` (pyproject [project.scripts])")
    cp = subprocess.run([str(script)], capture_output=True, text=True, timeout=30)
    assert (cp.returncode, cp.stdout) == (0, USAGE.format(script))


@pytest.mark.parametrize("value,level", [
    (None, 30), ("", 30), ("error", 30), ("verbose", 20), ("debug", 10), ("silent", None), ("loud", 30),
])
def test_log_level(value: str | None, level: int | None) -> None:
    assert userspace.log_level(value) == level


@pytest.mark.parametrize("environ,keeps", [
    ({}, False), ({"LOG_LEVEL": ""}, False), ({"LOG_LEVEL": "silent"}, False),
    ({"LOG_LEVEL": "error"}, True), ({"LOG_LEVEL": "verbose"}, True),
])
def test_daemon_keeps_output_only_when_log_level_asks(environ: dict[str, str], keeps: bool) -> None:
    assert userspace.keeps_output(environ) is keeps


# --- the side file: /etc/wgdisco/<iface>.conf, [Discovery] only ----------------------


def defaults() -> config.DiscoveryConfig:
    """What `wgdisco up` uses for a config without a [Discovery] section."""
    return config.parse(f"[Interface]\nPrivateKey = {PRIV}\n", "wg0.conf").discovery


def test_no_side_file_means_the_defaults_of_a_config_without_discovery(tmp_path: Path) -> None:
    cfg = config.load_discovery("wg0", {config.CONFIG_DIR_ENV: str(tmp_path)})
    assert cfg.discovery == defaults()
    assert cfg.discovery.mdns is True  # as documented in docs/configuration.md
    assert cfg.name == "wg0" and cfg.path == str(tmp_path / "wg0.conf")
    assert cfg.interface.private_key is None and cfg.peers == [] and cfg.warnings == []


def test_side_file_directory(tmp_path: Path) -> None:
    assert config.discovery_file("wg0", {}) == Path("/etc/wgdisco/wg0.conf")
    assert config.discovery_file("wg0", {config.CONFIG_DIR_ENV: str(tmp_path)}) == tmp_path / "wg0.conf"
    for bad in ("", "..", ".", "a/b", "x" * 16, "wg 0"):
        with pytest.raises(ConfigError, match="interface name"):
            config.discovery_file(bad, {})


def test_side_file_is_read(tmp_path: Path) -> None:
    (tmp_path / "wg0.conf").write_text("# discovery for wg0\n[discovery]\nmDNS = off\n"
                                       "STUN = 192.0.2.1:3478\nMetrics = 127.0.0.1:9586\n")
    cfg = config.load_discovery("wg0", {config.CONFIG_DIR_ENV: str(tmp_path)})
    assert cfg.discovery == dataclasses.replace(defaults(), mdns=False, stun=[config.Endpoint("192.0.2.1", 3478)],
                                                metrics=config.Endpoint("127.0.0.1", 9586))
    assert cfg.discovery == config.DiscoveryConfig(mdns=False, stun=[config.Endpoint("192.0.2.1", 3478)],
                                                   metrics=config.Endpoint("127.0.0.1", 9586))


def test_empty_side_file_is_the_defaults() -> None:
    assert config.parse_discovery("", "x.conf").discovery == defaults()
    assert config.parse_discovery("# nothing\n\n", "x.conf").discovery == defaults()


@pytest.mark.parametrize("text,line,key,message", [
    ("[Discovery]\nmDNS = perhaps\n", 2, "mDNS", "not a boolean"),
    ("[Discovery]\nColour = blue\n", 2, "Colour", "unknown key in [Discovery]"),
    ("[Discovery]\nPollInterval = 5\n", 2, "PollInterval", "needs Domain"),
    ("[Interface]\nPrivateKey = " + PRIV + "\n", 1, None, "[Interface] does not belong here"),
    ("[Discovery]\nmDNS = off\n[Peer]\n", 3, None, "[Peer] does not belong here"),
    ("[Discovery]\n[Discovery]\n", 2, None, "second [Discovery] section"),
    ("mDNS = off\n", 1, "mDNS", "key outside of any section"),
])
def test_side_file_errors_name_file_line_and_key(text: str, line: int, key: str | None, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.parse_discovery(text, "/etc/wgdisco/wg0.conf")
    e = info.value
    assert (e.file, e.line, e.key) == ("/etc/wgdisco/wg0.conf", line, key)
    assert message in str(e)
    assert str(e).startswith(f"/etc/wgdisco/wg0.conf:{line}: ")


def test_side_file_update_key(tmp_path: Path) -> None:
    env = {config.CONFIG_DIR_ENV: str(tmp_path)}
    (tmp_path / "tsig.key").write_text("hmac-sha256:wgdisco.:c2VjcmV0\n")
    (tmp_path / "tsig.key").chmod(0o600)
    side = tmp_path / "wg0.conf"
    side.write_text("[Discovery]\nDomain = wg.example.net\nNameserver = 192.0.2.53\nUpdateKeyFile = tsig.key\n")
    side.chmod(0o644)
    cfg = config.load_discovery("wg0", env)
    assert cfg.discovery.update_key.name == "wgdisco." and cfg.warnings == []  # no secret in the file
    side.write_text("[Discovery]\nDomain = wg.example.net\nNameserver = 192.0.2.53\n"
                    "UpdateKey = hmac-sha256:wgdisco.:c2VjcmV0\n")
    cfg = config.load_discovery("wg0", env)
    assert any("TSIG secret but is accessible by others" in w for w in cfg.warnings)
    assert all("c2VjcmV0" not in w for w in cfg.warnings)
    side.write_text("[Discovery]\nDomain = wg.example.net\nUpdateKey = hmac-sha256:wgdisco.:c2VjcmV0\n")
    with pytest.raises(ConfigError, match="needs a Nameserver") as info:
        config.load_discovery("wg0", env)
    assert "c2VjcmV0" not in str(info.value)


def test_unreadable_side_file(tmp_path: Path) -> None:
    (tmp_path / "wg0.conf").mkdir()
    with pytest.raises(ConfigError, match="cannot read"):
        config.load_discovery("wg0", {config.CONFIG_DIR_ENV: str(tmp_path)})


def test_main_reports_a_bad_side_file_before_starting_anything(tmp_path: Path) -> None:
    (tmp_path / "wg0.conf").write_text("[Discovery]\nmDNS = perhaps\n")
    for args in (["wg0"], ["-f", "wg0"]):
        rc, out, err = run(["wgdisco-userspace", *args], {config.CONFIG_DIR_ENV: str(tmp_path)})
        assert (rc, out) == (1, "")
        assert err == f"wgdisco-userspace: {tmp_path}/wg0.conf:2: mDNS: 'perhaps' is not a boolean (true/false)\n"


def test_main_refuses_a_bad_interface_name(tmp_path: Path) -> None:
    rc, out, err = run(["wgdisco-userspace", "-f", "this-name-is-too-long"], {config.CONFIG_DIR_ENV: str(tmp_path)})
    assert (rc, out) == (1, "")
    assert err.startswith("wgdisco-userspace: interface name 'this-name-is-too-long' must be 1-15 of")
