"""Config parsing: wg-quick compatibility and errors that name file, line and key."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from wgdisco import config
from wgdisco.config import Endpoint
from wgdisco.errors import ConfigError
from wgdisco.proto import keys

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "configs"
PRIV = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="
PUB1 = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
PUB2 = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0="


def parse(text: str) -> config.Config:
    return config.parse(text, "t.conf")


def error_of(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return info.value


# --- the upstream examples parse unchanged --------------------------------------


@pytest.mark.parametrize("path", sorted(VECTORS.glob("*.conf")), ids=lambda p: p.name)
def test_upstream_examples_parse(path: Path) -> None:
    cfg = config.parse(path.read_text(), str(path))
    assert cfg.interface.private_key is not None
    assert cfg.peers, "every example has at least one peer"
    for peer in cfg.peers:
        assert len(peer.public_key) == 32


def test_wg8_example_values() -> None:
    cfg = config.parse((VECTORS / "wg8-example.conf").read_text(), "wg8")
    assert cfg.interface.listen_port == 51820
    assert [keys.key_to_base64(p.public_key) for p in cfg.peers][:2] == [PUB1, PUB2]
    assert cfg.peers[0].endpoint == Endpoint("192.95.5.67", 1234)
    assert cfg.peers[1].endpoint == Endpoint("2607:5300:60:6b0::c05f:543", 2468)
    assert str(cfg.peers[1].endpoint) == "[2607:5300:60:6b0::c05f:543]:2468"
    assert cfg.peers[2].endpoint == Endpoint("test.wireguard.com", 18981)
    # wg masks host bits: 10.192.124.1/24 is 10.192.124.0/24
    assert cfg.peers[0].allowed_ips == [
        ipaddress.ip_network("10.192.122.3/32"),
        ipaddress.ip_network("10.192.124.0/24"),
    ]


def test_wg_quick_server_repeated_address_and_saveconfig_warning() -> None:
    cfg = config.parse((VECTORS / "wg-quick8-server.conf").read_text(), "srv.conf")
    assert [str(a) for a in cfg.interface.addresses] == ["10.192.122.1/24", "10.10.0.1/16"]
    assert cfg.interface.save_config is True
    assert cfg.warnings == ["srv.conf:4: SaveConfig: SaveConfig is not supported; the file is never rewritten"]


def test_postup_table_mtu_fwmark() -> None:
    cfg = config.parse((VECTORS / "wg-quick8-postup.conf").read_text(), "p.conf")
    i = cfg.interface
    assert i.post_up[0] == "wg set %i private-key /path/to/private-key"
    assert len(i.post_up) == 2 and len(i.post_down) == 1
    assert "MASQUERADE" in i.post_down[0]  # '#' is the only comment char; ';' stays
    assert (i.table, i.mtu, i.fwmark) == ("off", 1420, 0x1234)
    assert cfg.peers[0].persistent_keepalive == 25
    assert [str(n) for n in cfg.peers[0].allowed_ips] == ["0.0.0.0/0", "::/0"]


def test_case_insensitive_comments_whitespace_and_accumulation() -> None:
    cfg = config.parse((VECTORS / "quickstart.conf").read_text(), "q.conf")
    assert cfg.interface.listen_port == 51820
    assert [str(a) for a in cfg.interface.addresses] == ["10.0.0.1/24", "fd00::1/64"]
    peer = cfg.peers[0]
    assert [str(n) for n in peer.allowed_ips] == ["10.0.0.2/32", "fd00::2/128"]
    assert peer.endpoint == Endpoint("fd00:1::2%eth0", 51820)
    assert peer.persistent_keepalive == 0


def test_dns_warns_but_parses() -> None:
    cfg = config.parse((VECTORS / "wg-quick8-client.conf").read_text(), "c.conf")
    assert cfg.interface.dns == ["10.200.100.1"]
    assert cfg.peers[0].preshared_key is not None
    assert any("DNS is not applied" in w for w in cfg.warnings)


def test_last_value_wins_for_single_keys() -> None:
    cfg = parse(f"[Interface]\nPrivateKey = {PRIV}\nListenPort = 1\nListenPort = 2\n")
    assert cfg.interface.listen_port == 2


# --- errors: file, line and key --------------------------------------------------

BAD = [
    # (text, line, key, fragment of the message)
    (f"[Interface]\nPrivateKey = {PRIV}\nListenPort = 70000\n", 3, "ListenPort", "not a port"),
    ("[Interface]\nPrivateKey = abc\n", 2, "PrivateKey", "not a valid key"),
    (f"[Interface]\nPrivateKey = {PRIV}\nFrobnicate = 1\n", 3, "Frobnicate", "unknown key in [Interface]"),
    (f"[Interface]\nPrivateKey = {PRIV}\n\n[Peer]\nPublicKey = {PUB1}\nEndpoint = fd00::1:51820\n", 6, "Endpoint", "[addr]:port"),
    (f"[Interface]\nPrivateKey = {PRIV}\n[Peer]\nPublicKey = {PUB1}\nEndpoint = host:0\n", 5, "Endpoint", "not a port"),
    (f"[Interface]\nPrivateKey = {PRIV}\n[Peer]\nPublicKey = {PUB1}\nEndpoint = justahost\n", 5, "Endpoint", "not an endpoint"),
    (f"[Interface]\nPrivateKey = {PRIV}\n[Peer]\nPublicKey = {PUB1}\nAllowedIPs = 10.0.0.0/33\n", 5, "AllowedIPs", "not a network"),
    (f"[Interface]\nPrivateKey = {PRIV}\n[Peer]\nPublicKey = {PUB1}\nPersistentKeepalive = soon\n", 5, "PersistentKeepalive", "keepalive"),
    (f"[Interface]\nPrivateKey = {PRIV}\nAddress = 10.0.0.300/24\n", 3, "Address", "not an address"),
    (f"[Interface]\nPrivateKey = {PRIV}\nMTU = 100\n", 3, "MTU", "not an MTU"),
    (f"[Interface]\nPrivateKey = {PRIV}\nTable = vpn\n", 3, "Table", "not a routing table"),
    (f"[Interface]\nPrivateKey = {PRIV}\nAddress = fd00::1/64\nMTU = 1000\n", 4, "MTU", "IPv6"),
    (f"[Interface]\nPrivateKey = {PRIV}\n[Discovery]\nMagic = yes\n", 4, "Magic", "unknown key in [Discovery]"),
    (f"[Interface]\nPrivateKey = {PRIV}\n[Discovery]\nmDNS = maybe\n", 4, "mDNS", "not a boolean"),
    (f"[Interface]\nPrivateKey = {PRIV}\n[Discovery]\nDomain = bad..name\n", 4, "Domain", "not a domain"),
    (f"[Interface]\nPrivateKey = {PRIV}\n[Discovery]\nDomain = wg.example.net\nNameserver = ns1\n", 5, "Nameserver", "not a nameserver"),
    (f"[Interface]\nPrivateKey = {PRIV}\n[Discovery]\nDomain = wg.example.net\nPollInterval = 0\n", 5, "PollInterval", "out of range"),
    (f"[Interface]\nPrivateKey = {PRIV}\n[Discovery]\nPortMapping = igd\n", 4, "PortMapping", "want one of auto, pcp, natpmp, upnp, off"),
    (f"[Interface]\nPrivateKey = {PRIV}\n[Discovery]\nmDNSFamily = ipv5\n", 4, "mDNSFamily", "want one of auto, both, ipv4, ipv6"),
    (f"[Interface]\nPrivateKey = {PRIV}\n[Discovery]\nNatKeepalive = 2\n", 4, "NatKeepalive", "out of range (5-300"),
    (f"[Interface]\nPrivateKey = {PRIV}\n[Discovery]\nNameserver = 192.0.2.53\n", 4, "Nameserver", "needs Domain"),
    (f"[Interface]\nPrivateKey = {PRIV}\n[Discovery]\nDomain = wg.example.net\nUpdateKey = md5:k:AAAA\n", 5, "UpdateKey", "not one of"),
    (f"[Interface]\nPrivateKey = {PRIV}\n[Discovery]\nDomain = wg.example.net\nUpdateKey = hmac-sha256:k:!!\n", 5, "UpdateKey", "not valid base64"),
    (f"[Interface]\nPrivateKey = {PRIV}\n[Peer]\nAllowedIPs = 10.0.0.2/32\n", 3, "PublicKey", "no PublicKey"),
    ("[Interface]\nListenPort = 1\n", 1, "PrivateKey", "no PrivateKey"),
    (f"[Interface]\nPrivateKey = {PRIV}\n[Peer]\nPublicKey = {PUB1}\n[Peer]\nPublicKey = {PUB1}\n", 5, "PublicKey", "line 3"),
    (f"[Interface]\nPrivateKey = {PRIV}\njust words\n", 3, None, "Key = Value"),
    (f"ListenPort = 1\n[Interface]\nPrivateKey = {PRIV}\n", 1, "ListenPort", "outside of any section"),
    (f"[Interface]\nPrivateKey = {PRIV}\n[Peers]\n", 3, None, "unknown section"),
    (f"[Interface]\nPrivateKey = {PRIV}\n[Interface]\n", 3, None, "second [Interface]"),
]


@pytest.mark.parametrize("text,line,key,fragment", BAD)
def test_errors_name_file_line_and_key(text: str, line: int, key: str | None, fragment: str) -> None:
    e = error_of(text)
    assert (e.file, e.line, e.key) == ("t.conf", line, key)
    assert fragment in e.message
    prefix = f"t.conf:{line}: " + (f"{key}: " if key else "")
    assert str(e).startswith(prefix)


PSK = "FpCyhws9cxwWoV4xELtfJvjJN+zQVRPISllRWgeopVE="
HEX = bytes(range(32)).hex()


@pytest.mark.parametrize("text", [
    f"[Interface]\nPrivateKey {PRIV}\n",  # no '=' after the key name: the key's own '=' is the only one
    f"[Interface]\nPrivateKey: {PRIV}\n",
    f"[Interface]\nPrivateKey {HEX}\n",
    f"[Interface]\nPrivateKey = {PRIV}\n[Peer]\nPresharedKey {PSK}\n",
    f"[Interface]\nPrivateKey = {PRIV}\n[Peer]\nPresharedKey: {PSK}\n",
    f"[Interface {PRIV}]\n",
    f"[Interface]\x0bPrivateKey = {PRIV}\n",
    f"{PRIV}\n",
])
def test_no_key_material_in_any_error(text: str) -> None:
    e = error_of(text)
    for secret in (PRIV, PRIV[:-1], PRIV[:12], PSK[:12], HEX[:12]):
        assert secret not in str(e), str(e)


def test_line_numbers_count_newlines_only() -> None:
    # str.splitlines() also breaks at \v \f \x1c-\x1e \x85 \u2028 \u2029: wg-quick's `read` does not
    text = f"[Interface]\nPrivateKey = {PRIV}\n# \x0b \x0c \x1c \x1d \x1e \x85 \u2028 \u2029\r\nListenPort = 70000\n"
    assert error_of(text).line == 4


def test_peer_with_own_public_key_is_an_error() -> None:
    own = keys.key_to_base64(keys.public_key(keys.key_from_base64(PRIV)))
    e = error_of(f"[Interface]\nPrivateKey = {PRIV}\n[Peer]\nPublicKey = {own}\n")
    assert (e.line, e.key) == (3, "PublicKey")


def test_no_interface_section() -> None:
    e = error_of(f"[Peer]\nPublicKey = {PUB1}\n")
    assert e.line is None and "no [Interface]" in str(e)


# --- files ---------------------------------------------------------------------


def test_load_names_interface_after_stem_and_warns_on_loose_mode(tmp_path: Path) -> None:
    path = tmp_path / "wg7.conf"
    path.write_text(f"[Interface]\nPrivateKey = {PRIV}\n")
    os.chmod(path, 0o644)
    cfg = config.load(path)
    assert cfg.name == "wg7"
    assert cfg.warnings and "accessible by others (mode 644" in cfg.warnings[0]
    os.chmod(path, 0o600)
    assert config.load(path).warnings == []


@pytest.mark.parametrize("name", ["this-name-is-too-long.conf", "bad name.conf", ".conf"])
def test_bad_interface_names(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text(f"[Interface]\nPrivateKey = {PRIV}\n")
    with pytest.raises(ConfigError, match="interface name"):
        config.load(path)


def test_unreadable_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(tmp_path / "missing.conf")
    path = tmp_path / "bin.conf"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        config.load(path)


# --- normalized output -----------------------------------------------------------


def test_format_hides_secrets_and_round_trips() -> None:
    cfg = config.parse((VECTORS / "wg-quick8-client.conf").read_text(), "c.conf")
    text = config.format_config(cfg)
    assert PRIV not in text and "oK56DE9Ue9zK76rAc8pBl6opph" not in text
    assert "/UwcSPg38hW" not in text  # the preshared key
    assert "PrivateKey = (hidden)" in text and "PresharedKey = (hidden)" in text
    again = config.parse(config.format_config(cfg, show_secrets=True), "again.conf")
    assert again.interface == cfg.interface
    assert again.peers[0].public_key == cfg.peers[0].public_key
    assert again.peers[0].allowed_ips == cfg.peers[0].allowed_ips
    assert again.peers[0].endpoint == cfg.peers[0].endpoint


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.conf")), ids=lambda p: p.name)
def test_shipped_examples_parse(path: Path) -> None:
    cfg = config.load(path)
    assert cfg.name == path.stem and cfg.peers


def test_discovery_keys_parse_and_showconf_hides_the_tsig_secret() -> None:
    secret = "c2VjcmV0LXNlY3JldC1zZWNyZXQ="
    cfg = parse(f"[Interface]\nPrivateKey = {PRIV}\n[Discovery]\nmdns = off\nmDNSInterfaces = eth0, eth1\n"
                f"Domain = WG.Example.Net.\nNameserver = [2001:db8::53]:5353\nPollInterval = 5\n"
                f"UpdateKey = hmac-sha256:wgdisco.:{secret}\n")
    d = cfg.discovery
    assert (d.mdns, d.mdns_interfaces, d.domain) == (False, ["eth0", "eth1"], "wg.example.net")
    assert d.nameserver == ("2001:db8::53", 5353) and d.poll_interval == 5.0
    assert d.update_key.name == "wgdisco."
    text = config.format_config(cfg)
    assert secret not in text and "UpdateKey = (hidden)" in text and "Nameserver = [2001:db8::53]:5353" in text
    assert parse(f"[Interface]\nPrivateKey = {PRIV}\n[Discovery]\nNameserver = 198.51.100.53\nDomain = x.test\n"
                 ).discovery.nameserver == ("198.51.100.53", 53)


def test_update_key_file_is_read_and_checked(tmp_path: Path) -> None:
    key = tmp_path / "tsig.key"
    key.write_text("hmac-sha256:wgdisco.:c2VjcmV0\n")
    key.chmod(0o644)
    conf = tmp_path / "wg0.conf"
    conf.write_text(f"[Interface]\nPrivateKey = {PRIV}\n[Discovery]\nDomain = wg.example.net\nUpdateKeyFile = tsig.key\n")
    conf.chmod(0o600)
    cfg = config.load(conf)
    assert cfg.discovery.update_key.name == "wgdisco."
    assert any("TSIG secret but is accessible by others" in w for w in cfg.warnings)
    key.write_text("garbage")
    with pytest.raises(ConfigError) as info:
        config.load(conf)
    assert (info.value.line, info.value.key) == (5, "UpdateKeyFile")
    key.unlink()
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(conf)


def test_stun_servers() -> None:
    cfg = parse(f"[Interface]\nPrivateKey = {PRIV}\n[Discovery]\n"
                f"STUN = 203.0.113.10:3478, stun.example.net, [2001:db8::10]:3479, 2001:db8::11\n")
    assert [str(e) for e in cfg.discovery.stun] == [
        "203.0.113.10:3478", "stun.example.net:3478", "[2001:db8::10]:3479", "[2001:db8::11]:3478"]
    assert parse(f"[Interface]\nPrivateKey = {PRIV}\n").discovery.stun == []  # no default servers
    with pytest.raises(ConfigError, match="STUN server"):
        parse(f"[Interface]\nPrivateKey = {PRIV}\n[Discovery]\nSTUN = host:0\n")


# --- mesh mode (docs/mesh.md) ----------------------------------------------------------

MESH = "[Interface]\nListenPort = 51820\n\n[Discovery]\nMeshKey = correct horse battery staple\n"


def test_mesh_config_needs_no_private_key_or_address_and_hides_the_key() -> None:
    c = parse(MESH)
    assert c.interface.private_key is None and c.interface.addresses == []
    assert c.discovery.mesh_key == "correct horse battery staple"
    assert c.discovery.mesh_max_peers == 256 and c.discovery.mesh_ipv4 is None
    shown = config.format_config(c)
    assert "MeshKey = (hidden)" in shown and "horse" not in shown


def test_mesh_keys_checked() -> None:
    c = parse(MESH + "MeshIPv4 = 10.77.0.0/16\nMeshMaxPeers = 40\n")
    assert c.discovery.mesh_ipv4 == ipaddress.ip_network("10.77.0.0/16") and c.discovery.mesh_max_peers == 40
    e = error_of(MESH + "MeshIPv4 = 10.77.0.1/16\n")
    assert (e.line, e.key) == (6, "MeshIPv4")
    e = error_of(MESH + "MeshMaxPeers = 0\n")
    assert e.key == "MeshMaxPeers"
    e = error_of("[Interface]\nPrivateKey = " + PRIV + "\n[Discovery]\nMeshIPv4 = 10.77.0.0/16\n")
    assert "MeshKey" in str(e)
    e = error_of(MESH + "MeshKeyFile = k\n")
    assert e.key == "MeshKeyFile" and "horse" not in str(e)
    e = error_of("[Interface]\nListenPort = 1\n")
    assert e.key == "PrivateKey"  # without a mesh the key is still required
    e = error_of("[Interface]\nListenPort = 1\n[Discovery]\nMeshKey =   \n")
    assert e.key == "MeshKey"


def test_mesh_name_checked() -> None:
    assert parse(MESH + "Name = build-7\n").discovery.name == "build-7"
    assert parse(MESH).discovery.name is None  # the host name, at start
    for bad in ("Build 7", "-x", "wg-x", "x" * 64, "a.b", "123"):
        e = error_of(MESH + f"Name = {bad}\n")
        assert (e.line, e.key) == (6, "Name") and "not a usable name" in str(e)
    e = error_of("[Interface]\nPrivateKey = " + PRIV + "\n[Discovery]\nName = x\n")
    assert e.key == "Name" and "MeshKey" in str(e)


def test_mesh_key_file_is_read_and_mode_checked(tmp_path: Path) -> None:
    (tmp_path / "mesh.key").write_text("s3cret-mesh\n")
    os.chmod(tmp_path / "mesh.key", 0o644)
    path = tmp_path / "mesh0.conf"
    path.write_text("[Interface]\nListenPort = 51820\n[Discovery]\nMeshKeyFile = mesh.key\n")
    os.chmod(path, 0o600)
    c = config.load(path)
    assert c.discovery.mesh_key == "s3cret-mesh"
    assert any("mesh key but is accessible" in w for w in c.warnings)
    assert not any("s3cret" in w for w in c.warnings)
    shown = config.format_config(c)
    assert "s3cret" not in shown and "MeshKeyFile = mesh.key" in shown
    os.remove(tmp_path / "mesh.key")
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert info.value.key == "MeshKeyFile"


def test_mesh_identity_is_generated_once_0600(tmp_path: Path) -> None:
    env = {"WGDISCO_STATE_DIR": str(tmp_path / "state")}
    key = config.mesh_identity("mesh0", env)
    assert config.mesh_identity("mesh0", env) == key
    assert config.mesh_identity("mesh1", env) != key
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "state" / "mesh0.key").stat().st_mode & 0o777 == 0o600
    (tmp_path / "state" / "mesh0.key").write_text("garbage\n")
    with pytest.raises(Exception) as info:
        config.mesh_identity("mesh0", env)
    assert "garbage" not in str(info.value)


@pytest.mark.parametrize("value,mode", [("", "auto"), ("PortMapping = PCP\n", "pcp"), ("PortMapping = off\n", "off"),
                                        ("PortMapping = natpmp\n", "natpmp"), ("PortMapping = upnp\n", "upnp")])
def test_port_mapping_key(value: str, mode: str) -> None:
    assert parse(f"[Interface]\nPrivateKey = {PRIV}\n[Discovery]\n{value}").discovery.port_mapping == mode


@pytest.mark.parametrize("value,family", [("", "auto"), ("mDNSFamily = Both\n", "both"), ("mdnsfamily = ipv4\n", "ipv4"),
                                          ("mDNSFamily = IPv6\n", "ipv6"), ("mDNSFamily = auto\n", "auto")])
def test_mdns_family_key(value: str, family: str) -> None:
    cfg = parse(f"[Interface]\nPrivateKey = {PRIV}\n[Discovery]\n{value}")
    assert cfg.discovery.mdns_family == family
    assert f"mDNSFamily = {family}" in config.format_config(cfg) or family == "auto"


def test_the_discovery_dataclass_and_the_key_table_agree() -> None:
    """[Discovery] is a typed DiscoveryConfig (issue 22); its defaults are DISCOVERY_KEYS's and every
    key has a field, so the two cannot drift apart."""
    table = {canonical: default for canonical, _p, default in config.DISCOVERY_KEYS.values()}
    assert set(table) == set(config.DISCOVERY_FIELDS)
    assert config.DiscoveryConfig() == config.DiscoveryConfig.from_keys(table)
    assert config.DiscoveryConfig().by_key() == table


# --- the mesh's lifecycle keys (issue 27, docs/mesh.md "Rotating the mesh key") ----------------

ROTATING = MESH.replace("correct horse battery staple", "a brand new key") + (
    "PreviousMeshKey = correct horse battery staple\nPreviousMeshKeyUntil = 2026-12-08T12:00:00Z\n"
    "MeshId = m1." + "A" * 51 + "\n")


def test_rotation_keys_parse_and_the_previous_key_is_hidden() -> None:
    import datetime

    d = parse(ROTATING).discovery
    assert d.previous_mesh_key == "correct horse battery staple" and d.mesh_key == "a brand new key"
    assert d.previous_mesh_key_until == datetime.datetime(2026, 12, 8, 12, tzinfo=datetime.timezone.utc).timestamp()
    assert d.mesh_id.text == "m1." + "A" * 51
    shown = config.format_config(parse(ROTATING))
    assert "PreviousMeshKey = (hidden)" in shown and "horse" not in shown and "brand" not in shown
    assert "PreviousMeshKeyUntil = 2026-12-08T12:00:00Z" in shown and "MeshId = m1.AAAA" in shown


@pytest.mark.parametrize("drop, add, key, words", [
    ("PreviousMeshKeyUntil", "", "PreviousMeshKey", "PreviousMeshKeyUntil"),
    ("PreviousMeshKey =", "", "PreviousMeshKeyUntil", "PreviousMeshKey"),
    ("MeshId", "", "PreviousMeshKey", "MeshId"),
    ("", "PreviousMeshKeyUntil = 2026-12-08 12:00\n", "PreviousMeshKeyUntil", "time zone"),
    ("", "PreviousMeshKeyUntil = tomorrow\n", "PreviousMeshKeyUntil", "date and time"),
    ("", "MeshId = 0123456789abcdef\n", "MeshId", "m1."),
    ("", "MeshId = m1.AAAA\n", "MeshId", "length"),
])
def test_rotation_keys_checked(drop: str, add: str, key: str, words: str) -> None:
    text = "".join(line + "\n" for line in ROTATING.splitlines() if not drop or not line.startswith(drop)) + add
    e = error_of(text)
    assert e.key == key and words in str(e) and "horse" not in str(e) and e.line
    e = error_of(MESH + "PreviousMeshKey = correct horse battery staple\n"
                 "PreviousMeshKeyUntil = 2026-12-08T12:00:00Z\nMeshId = m1." + "A" * 51 + "\n")
    assert e.key == "PreviousMeshKey" and "same as MeshKey" in str(e) and "horse" not in str(e)


def test_mesh_deny_adds_up_and_never_echoes_a_bad_entry() -> None:
    k1, k2 = keys.key_to_base64(bytes([1]) * 32), keys.key_to_base64(bytes([2]) * 32)
    d = parse(MESH + f"MeshDeny = {k1}\nMeshDeny = {k2}, {k1}\n").discovery
    assert d.mesh_deny == [bytes([1]) * 32, bytes([2]) * 32, bytes([1]) * 32]
    assert f"MeshDeny = {k1}, {k2}, {k1}" in config.format_config(parse(MESH + f"MeshDeny = {k1}\nMeshDeny = {k2}, {k1}\n"))
    e = error_of(MESH + f"MeshDeny = {k1}, not-a-key-s3cret\n")
    assert (e.key, e.line) == ("MeshDeny", 6) and "entry 2" in str(e) and "s3cret" not in str(e)
    e = error_of("[Interface]\nPrivateKey = " + PRIV + f"\n[Discovery]\nMeshDeny = {k1}\n")
    assert e.key == "MeshDeny" and "MeshKey" in str(e)


def test_multicast_groups_and_peers() -> None:
    plain = "[Interface]\nPrivateKey = " + PRIV + "\n[Discovery]\n"
    assert parse(MESH).discovery.multicast_groups() == ("224.0.0.251", "ff02::fb")  # on in mesh mode
    assert parse(plain).discovery.multicast_groups() == ()  # off otherwise
    assert parse(MESH + "Multicast = off\n").discovery.multicast_groups() == ()
    c = parse(plain + "Multicast = mdns, 239.255.255.250, MDNS\n")
    assert c.discovery.multicast_groups() == ("224.0.0.251", "ff02::fb", "239.255.255.250")
    peer = keys.key_to_base64(keys.public_key(bytes(range(32))))
    c = parse(plain + f"MulticastPeers = {peer}\n")
    assert c.discovery.multicast_peers == [keys.key_from_base64(peer)]
    shown = config.format_config(parse(plain + f"Multicast = ff02::fb\nMulticastPeers = {peer}\n"))
    assert "Multicast = ff02::fb\n" in shown and f"MulticastPeers = {peer}\n" in shown
    assert "Multicast = off\n" in config.format_config(parse(MESH + "Multicast = off\n"))
    assert parse(config.format_config(c, show_secrets=True)).discovery.multicast_peers == c.discovery.multicast_peers
    for bad, words in (("10.0.0.1", "not a multicast group"), ("mdns, off", "cannot be combined"),
                       ("printers", "not off, mdns or a multicast group"), ("", "empty")):
        e = error_of(plain + f"Multicast = {bad}\n")
        assert (e.line, e.key) == (4, "Multicast") and words in str(e), str(e)
    e = error_of(plain + "MulticastPeers = not-a-key\n")
    assert e.key == "MulticastPeers"


def test_mdns_never_on_the_tunnel_itself() -> None:
    text = "[Interface]\nPrivateKey = " + PRIV + "\n[Discovery]\nmDNSInterfaces = eth0, mesh0\n"
    with pytest.raises(ConfigError) as e:
        config.parse(text, "mesh0.conf", name="mesh0")
    assert (e.value.line, e.value.key) == (4, "mDNSInterfaces") and "mesh0 is this tunnel" in str(e.value)
    assert config.parse(text, "wg0.conf", name="wg0").discovery.mdns_interfaces == ["eth0", "mesh0"]
