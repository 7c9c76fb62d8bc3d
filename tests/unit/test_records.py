"""wgdisco.proto.records: the wgsd layout, wgdisco's TXT keys, lenient parsing (RFC 6763 §6)."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wgdisco.errors import DecodeError, LocalError
from wgdisco.proto import keys, records
from wgdisco.proto.records import (
    TXT_LIMIT,
    TXT_STRING_MAX,
    ServiceRecord,
    build_txt,
    format_candidate,
    instance_name,
    parse_candidate,
    parse_txt,
    record_from_dns,
    service_name,
    txt_wire_size,
)

ip = ipaddress.ip_address
net = ipaddress.ip_network

# The key of wgsd's README example, and its instance label.
PUB = keys.key_from_base64("xScVkH3fUGUv4RrJFfmcqm8rs3SEHr41km6+yffAHw4=")
LABEL = "yutrled535igkl7bdlerl6m4vjxsxm3uqqpl4nmsn27mt56ad4ha===="
OTHER = keys.key_from_base64("syKB97XhGnvC+kynh2KqQJPXoOoOpx/HmpMRTc+r4js=")
DOCS = Path(__file__).resolve().parents[2] / "docs" / "records.md"


def example() -> ServiceRecord:
    """The record docs/records.md shows."""
    return ServiceRecord(
        public_key=PUB,
        port=51820,
        target=instance_name(PUB, "wg.example.net"),
        addresses=[ip("203.0.113.7")],
        allowed=[net("10.0.0.1/32"), net("fd00::1/128")],
        candidates=[(ip("10.1.0.2"), 51820), (ip("fd00:1::2"), 51820), (ip("203.0.113.7"), 51820)],
    )


# --- names -----------------------------------------------------------------------------------


def test_names() -> None:
    assert service_name("wg.example.net") == "_wireguard._udp.wg.example.net."
    assert service_name("wg.example.net.") == "_wireguard._udp.wg.example.net."
    assert service_name("local.") == "_wireguard._udp.local."
    assert instance_name(PUB, "wg.example.net") == f"{LABEL}._wireguard._udp.wg.example.net."
    assert example().instance_label == LABEL


@pytest.mark.parametrize("bad", ["", ".", "a..b", "x" * 64 + ".net", ("a" * 63 + ".") * 4 + "net"])
def test_bad_domain(bad: str) -> None:
    with pytest.raises(LocalError):
        service_name(bad)


# --- candidates --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("198.51.100.7:51820", (ip("198.51.100.7"), 51820)),
        ("[2001:db8::7]:1", (ip("2001:db8::7"), 1)),
        ("[::ffff:198.51.100.7]:65535", (ip("198.51.100.7"), 65535)),  # mapped -> IPv4
        (" 10.0.0.1:9 ", (ip("10.0.0.1"), 9)),
    ],
)
def test_parse_candidate(text: str, want: tuple) -> None:
    assert parse_candidate(text) == want


@pytest.mark.parametrize(
    "text",
    ["198.51.100.7", "198.51.100.7:0", "198.51.100.7:65536", "2001:db8::7:80", "[198.51.100.7]:80",
     "[2001:db8::7]80", "[fe80::1%eth0]:80", "host.example:80", ":80", "1.2.3.4:+80", "1.2.3.4:٣"],
)
def test_parse_candidate_rejects(text: str) -> None:
    with pytest.raises(DecodeError):
        parse_candidate(text)


def test_format_candidate() -> None:
    assert format_candidate(ip("2001:db8:0:0::7"), 51820) == "[2001:db8::7]:51820"
    assert format_candidate("::ffff:198.51.100.7", 5) == "198.51.100.7:5"
    with pytest.raises(LocalError):
        format_candidate(ip("198.51.100.7"), 0)
    with pytest.raises(LocalError):
        format_candidate(ip("fe80::1%eth0"), 80)
    for unusable in ("0.0.0.0", "::", "224.0.0.251", "ff02::fb", "255.255.255.255"):
        with pytest.raises(LocalError):
            format_candidate(ip(unusable), 80)


# --- build_txt ---------------------------------------------------------------------------------


def test_build_txt_layout() -> None:
    assert build_txt(example()) == [
        b"txtvers=1",
        b"pub=xScVkH3fUGUv4RrJFfmcqm8rs3SEHr41km6+yffAHw4=",
        b"allowed=10.0.0.1/32,fd00::1/128",
        b"cand=10.1.0.2:51820,[fd00:1::2]:51820,203.0.113.7:51820",
    ]


def test_build_txt_wgsd_prefix_without_candidates() -> None:
    # Exactly what wgsd's getTXTRR writes: the same three strings, allowed= even when empty.
    rec = ServiceRecord(PUB, 7777, "x.")
    assert build_txt(rec) == [b"txtvers=1", b"pub=xScVkH3fUGUv4RrJFfmcqm8rs3SEHr41km6+yffAHw4=", b"allowed="]


def test_build_txt_dedups_and_extras() -> None:
    rec = example()
    rec.candidates = [(ip("198.51.100.1"), 1), (ip("::ffff:198.51.100.1"), 1), (ip("198.51.100.1"), 2)]
    rec.txt_extra = {"mesh": "abc", "relay": None, "Bin": b"\x00\xff"}
    assert build_txt(rec)[3:] == [b"cand=198.51.100.1:1,198.51.100.1:2", b"mesh=abc", b"relay", b"Bin=\x00\xff"]


@pytest.mark.parametrize("key", ["pub", "TXTVERS", "allowed", "cand", "Cand7", "allowed12", "a=b", "", "k\x00"])
def test_build_txt_rejects_bad_extra_keys(key: str) -> None:
    rec = example()
    rec.txt_extra = {key: "x"}
    with pytest.raises(LocalError):
        build_txt(rec)


def test_build_txt_rejects_what_cannot_fit() -> None:
    rec = example()
    rec.txt_extra = {"big": "x" * 252}  # 256 bytes with "big="
    with pytest.raises(LocalError, match="more than one string"):
        build_txt(rec)
    rec = example()
    rec.allowed = [net(f"2001:db8:{i:x}::/48") for i in range(80)]  # ~1600 bytes of allowed IPs
    with pytest.raises(LocalError, match="without candidates"):
        build_txt(rec)


def test_long_allowed_continues_in_allowed1() -> None:
    rec = example()
    rec.allowed = [net(f"10.{i}.0.0/16") for i in range(40)]
    txt = build_txt(rec)
    names = [s.split(b"=")[0] for s in txt]
    assert names == [b"txtvers", b"pub", b"allowed", b"allowed1", b"allowed2", b"cand"]
    assert record_from_dns(LABEL, None, None, [], txt).allowed == rec.allowed


def test_many_candidates_are_split_and_the_lowest_priority_dropped() -> None:
    rec = example()
    rec.candidates = [(ip(f"2001:db8:ffff:{i:x}::abcd"), 40000 + i) for i in range(100)]
    txt = build_txt(rec)
    assert all(len(s) <= TXT_STRING_MAX for s in txt)
    assert txt_wire_size(txt) < TXT_LIMIT
    names = [s.split(b"=")[0].decode() for s in txt if s.startswith(b"cand")]
    assert names == ["cand"] + [f"cand{i}" for i in range(1, len(names))]
    got = record_from_dns(LABEL, None, None, [], txt).candidates
    assert 20 <= len(got) < 100
    assert got == rec.candidates[: len(got)]  # a prefix: best first, the tail dropped


def _usable(a: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return not (a.is_unspecified or a.is_multicast or a == ip("255.255.255.255"))


candidates_st = st.lists(
    st.tuples(
        st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).filter(
            lambda a: _usable(a) and not (a.version == 6 and a.ipv4_mapped is not None)
        ),
        st.integers(1, 65535),
    ),
    max_size=80,
    unique=True,
)


@settings(max_examples=300)
@given(
    candidates=candidates_st,
    allowed=st.lists(st.ip_addresses().map(lambda a: ipaddress.ip_network(a)), max_size=10),
    extra=st.dictionaries(st.text("abcdefghij", min_size=1, max_size=8).filter(
        lambda k: k not in ("pub",) and not k.startswith(("cand", "allowed"))), st.binary(max_size=40), max_size=4),
)
def test_build_txt_limits_and_round_trip(candidates: list, allowed: list, extra: dict) -> None:
    rec = ServiceRecord(PUB, 51820, "x.", allowed=allowed, candidates=candidates, txt_extra=extra)
    txt = build_txt(rec)
    assert all(0 < len(s) <= TXT_STRING_MAX for s in txt)
    assert txt_wire_size(txt) < TXT_LIMIT
    parsed, bad = parse_txt(txt)
    assert bad == 0
    assert {k: parsed[k] for k in extra} == extra
    sighting = record_from_dns(LABEL, None, None, [], txt)
    assert sighting.public_key == PUB and sighting.malformed == 0
    assert sighting.allowed == allowed
    published = [parse_candidate(c) for k in parsed if k.startswith("cand") for c in parsed[k].decode().split(",")]
    assert published == candidates[: len(published)]  # a prefix, in priority order
    assert sighting.candidates == published[: records.MAX_CANDIDATES]
    if len(published) < len(candidates):  # the next one did not fit: dropped for want of room only
        last = [s for s in txt if s.startswith(b"cand")][-1:]
        item = format_candidate(*candidates[len(published)])
        if last and len(last[0]) + 1 + len(item) <= TXT_STRING_MAX:
            cost = 1 + len(item)
        else:
            cost = 1 + len(f"cand{len([s for s in txt if s.startswith(b'cand')]) or ''}=") + len(item)
        assert txt_wire_size(txt) + cost > TXT_LIMIT - 1


# --- parse_txt (RFC 6763 §6) ---------------------------------------------------------------


def test_parse_txt_rules() -> None:
    txt, bad = parse_txt([
        b"TxtVers=1",          # keys are case-insensitive
        b"pub=first",
        b"PUB=second",         # §6.4: only the first occurrence counts
        b"flag",               # boolean attribute
        b"empty=",             # present, empty value
        b"=novalue",           # §6.4: no key: ignored
        b"",                   # §6.1: zero-length string, nothing
        b"ke\x01y=1",          # non-printable key
        b"k\xc3\xa9=1",        # non-ASCII key
        b"bin=\x00\xff=x",     # values are opaque bytes; only the first '=' splits
        "uni=é",               # str accepted
        b"unknown-key=whatever",
    ])
    assert txt == {"txtvers": b"1", "pub": b"first", "flag": None, "empty": b"", "bin": b"\x00\xff=x",
                   "uni": "é".encode(), "unknown-key": b"whatever"}
    assert bad == 4


@given(st.lists(st.binary(max_size=300), max_size=20))
def test_parse_txt_never_raises(strings: list[bytes]) -> None:
    txt, bad = parse_txt(strings)
    assert len(txt) + bad <= len(strings)
    assert all(k == k.lower() for k in txt)


# --- record_from_dns ---------------------------------------------------------------------------


def test_wgsd_record_without_candidates() -> None:
    # What wgsd v0.3 serves: SRV port + A on the instance name + its three TXT strings.
    txt = [b"txtvers=1", b"pub=xScVkH3fUGUv4RrJFfmcqm8rs3SEHr41km6+yffAHw4=", b"allowed=10.0.0.1/32"]
    s = record_from_dns(LABEL.upper(), 7777, f"{LABEL}._wireguard._udp.example.com.", ["203.0.113.1"], txt)
    assert s.public_key == PUB
    assert s.candidates == [(ip("203.0.113.1"), 7777)]
    assert s.allowed == [net("10.0.0.1/32")]
    assert s.malformed == 0


def test_wgsd_v02_without_txt() -> None:
    s = record_from_dns(LABEL, 8888, "x.example.com.", [ip("2001:db8::1"), ip("198.51.100.1")], [])
    assert s.candidates == [(ip("2001:db8::1"), 8888), (ip("198.51.100.1"), 8888)]
    assert s.allowed == [] and s.malformed == 0


def test_srv_first_then_cand_without_duplicates() -> None:
    txt = [b"cand1=[2001:db8::9]:9", b"cand=10.1.0.2:51820,203.0.113.7:51820", b"txtvers=1"]
    s = record_from_dns(LABEL, 51820, "t.", ["203.0.113.7"], txt)
    assert s.candidates == [(ip("203.0.113.7"), 51820), (ip("10.1.0.2"), 51820), (ip("2001:db8::9"), 9)]
    assert s.malformed == 0


@pytest.mark.parametrize(
    "label",
    ["", "notakey", LABEL[:-1], LABEL[:-4] + "aaaa", "1" * 56, f"{LABEL}._wireguard._udp.example.com."],
)
def test_label_must_be_a_key(label: str) -> None:
    with pytest.raises(DecodeError):
        record_from_dns(label, 1, "t.", [], [])


def test_non_canonical_label_is_rejected() -> None:
    # The last base32 character before the padding carries 4 unused bits: set one.
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    last = LABEL[51]
    twin = LABEL[:51] + alphabet[alphabet.index(last) ^ 1] + LABEL[52:]
    assert keys.key_from_base32(twin) == PUB  # the same key, spelled differently
    with pytest.raises(DecodeError, match="canonical"):
        record_from_dns(twin, 1, "t.", [], [])


def test_pub_disagreeing_with_label_is_rejected() -> None:
    with pytest.raises(DecodeError, match="different key"):
        record_from_dns(LABEL, 1, "t.", [], [b"pub=" + keys.key_to_base64(OTHER).encode()])


def test_malformed_parts_are_ignored_and_counted() -> None:
    txt = [
        b"txtvers=1",
        b"pub=not-base64",                       # 1
        b"allowed=10.0.0.0/8,bogus,fd00::/8",    # 1 (bogus)
        b"cand=10.0.0.1:1,nonsense,0.0.0.0:5,[ff02::1]:5,10.0.0.1:1",  # 3: nonsense, unspecified, multicast
        b"cand2",                                # 1: a list key without a value
        b"=x",                                   # 1
        b"cand3=\xff",                           # 1: not ASCII
    ]
    s = record_from_dns(LABEL, 0, "t.", ["203.0.113.1", "not-an-ip"], txt)  # SRV port 0: 1, bad ip: 1
    assert s.candidates == [(ip("10.0.0.1"), 1)]
    assert s.allowed == [net("10.0.0.0/8"), net("fd00::/8")]
    assert s.malformed == 10


def test_no_service_target() -> None:
    # RFC 2782: target "." means "no service here": the addresses are not candidates.
    s = record_from_dns(LABEL, 51820, ".", ["203.0.113.1"], [b"cand=10.0.0.1:1"])
    assert s.candidates == [(ip("10.0.0.1"), 1)]


def test_unknown_txtvers_ignores_the_txt() -> None:
    txt = [b"txtvers=2", b"pub=" + keys.key_to_base64(OTHER).encode(), b"cand=10.0.0.1:1", b"allowed=10.0.0.0/8"]
    s = record_from_dns(LABEL, 7, "t.", ["203.0.113.1"], txt)
    assert s.candidates == [(ip("203.0.113.1"), 7)] and s.allowed == [] and s.malformed == 1


def test_candidates_are_capped() -> None:
    addrs = [f"203.0.113.{i}" for i in range(1, 60)]
    s = record_from_dns(LABEL, 7, "t.", addrs, [])
    assert len(s.candidates) == records.MAX_CANDIDATES


@given(
    port=st.one_of(st.none(), st.integers(-5, 70000)),
    target=st.one_of(st.none(), st.text(max_size=10)),
    addrs=st.lists(st.one_of(st.ip_addresses().map(str), st.text(max_size=12)), max_size=5),
    txt=st.lists(st.one_of(st.binary(max_size=60), st.sampled_from(
        [b"cand=", b"cand=1.2.3.4:5", b"cand1=[::1]:1,x", b"allowed=::/0", b"txtvers=1", b"txtvers=0"])), max_size=8),
)
def test_record_from_dns_never_raises_unexpectedly(port, target, addrs, txt) -> None:
    s = record_from_dns(LABEL, port, target, addrs, txt)  # no pub=: nothing to disagree with
    assert s.public_key == PUB
    assert len(s.candidates) <= records.MAX_CANDIDATES
    assert all(0 < p <= 65535 for _, p in s.candidates)


# --- docs ----------------------------------------------------------------------------------------


def test_docs_example_is_what_build_txt_writes() -> None:
    text = DOCS.read_text()
    m = re.search(r"^\S+\s+\d+\s+IN\s+TXT\s+(.+)$", text, re.MULTILINE)
    assert m, "docs/records.md has no TXT line in its zone example"
    strings = [s.encode() for s in re.findall(r'"([^"]*)"', m.group(1))]
    assert strings == build_txt(example())
    assert f"{LABEL}._wireguard._udp.wg.example.net." in text


# --- shards (issue 26) --------------------------------------------------------------------


def test_shard_label_is_two_hex_digits_of_sha256_of_the_lowercase_label() -> None:
    import hashlib

    assert records.shard_label(LABEL) == "_" + hashlib.sha256(LABEL.encode()).hexdigest()[:2]
    assert records.shard_label(LABEL) == "_94"  # the vector docs/records.md shows
    assert records.shard_label(LABEL.upper()) == records.shard_label(f" {LABEL} ") == "_94"
    names = records.shard_names("wg.example.net")
    assert len(names) == records.SHARDS == 256 and len(set(names)) == 256
    assert names[0] == "_00._sub._wireguard._udp.wg.example.net."
    assert names[-1] == "_ff._sub._wireguard._udp.wg.example.net."
    assert {n.split(".")[0] for n in names} == {f"_{i:02x}" for i in range(256)}


def test_shards_spread_keys_even_when_their_labels_share_a_prefix() -> None:
    import base64
    import hashlib

    def label(seed: bytes) -> str:  # keys.key_to_base32 of a random 32-byte key, without its checks
        return base64.b32encode(hashlib.sha256(seed).digest()).decode().lower()

    def spread(labels: list[str]) -> list[int]:
        counts = [0] * records.SHARDS
        for x in labels:
            counts[int(records.shard_label(x)[1:], 16)] += 1
        return counts

    assert label(b"x") == keys.key_to_base32(hashlib.sha256(b"x").digest())
    # 12,800 keys: 50 a shard on average; 6 standard deviations of a binomial are 42.
    plain = spread([label(i.to_bytes(4, "big")) for i in range(12800)])
    assert max(plain) < 50 + 42 and min(plain) > 50 - 42
    # Vanity keys (ground for a common prefix) land everywhere too: the label is hashed.
    vanity = spread(["mesh" + label(i.to_bytes(4, "big"))[4:] for i in range(2560)])
    assert sum(1 for c in vanity if c) > 240
    # At 1,500 members (the lab's browse) the fullest shard still fits one 1232-byte UDP answer.
    assert max(spread([label(b"m" + i.to_bytes(4, "big")) for i in range(1500)])) <= records.PTR_UDP_MAX
