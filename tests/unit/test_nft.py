"""io/nft.py: the ruleset text is wg-quick's, per family, for the tunnel's own addresses."""

from __future__ import annotations

import ipaddress

from wgdisco.io import nft

ADDRS = [ipaddress.ip_interface("10.9.0.2/24"), ipaddress.ip_interface("fd00:9::2/64")]


def test_ipv4_ruleset_is_wg_quicks() -> None:
    assert nft.ruleset("wg0", 51820, {4}, ADDRS).splitlines() == [
        "add table ip wgdisco-wg0",
        "add chain ip wgdisco-wg0 preraw { type filter hook prerouting priority -300; }",
        "add chain ip wgdisco-wg0 premangle { type filter hook prerouting priority -150; }",
        "add chain ip wgdisco-wg0 postmangle { type filter hook postrouting priority -150; }",
        'add rule ip wgdisco-wg0 preraw iifname != "wg0" ip daddr 10.9.0.2 fib saddr type != local drop',
        "add rule ip wgdisco-wg0 postmangle meta l4proto udp mark 51820 ct mark set mark",
        "add rule ip wgdisco-wg0 premangle meta l4proto udp meta mark set ct mark",
    ]


def test_both_families_each_get_their_own_table_and_addresses() -> None:
    text = nft.ruleset("wg0", 0xCA6D, {6, 4}, ADDRS)
    assert text.index("add table ip wgdisco-wg0") < text.index("add table ip6 wgdisco-wg0")
    assert 'ip6 daddr fd00:9::2 fib' in text and "ip daddr fd00:9::2" not in text
    assert text.count("mark 51821 ct mark set mark") == 2


def test_no_addresses_no_drop_rule() -> None:
    assert "preraw iifname" not in nft.ruleset("wg0", 51820, {6}, ADDRS[:1])
