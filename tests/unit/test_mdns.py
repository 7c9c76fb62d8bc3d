"""wgdisco.io.mdns in memory: TXT encoding, names, API misuse, interface addresses, socket errors.

Publish/browse between lab hosts and against Avahi: tests/netns/test_mdns_lab.py.
"""

from __future__ import annotations

import gc
import logging
import os
import socket

import pytest

from wgdisco import config
from wgdisco.errors import LocalError
from wgdisco.io import mdns
from wgdisco.proto import keys


def new_key() -> tuple[str, str]:
    """(instance label, base64 public key) for a fresh key."""
    public = keys.public_key(keys.generate_private_key(os.urandom(32)))
    return keys.key_to_base32(public), keys.key_to_base64(public)


# --- in memory ---------------------------------------------------------------------


def test_txt_keeps_order_and_raw_strings() -> None:
    strings = [b"txtvers=1", b"pub=abc", b"allowed=10.0.0.2/32,fd00::2/128", b"flag", b"empty=", b"pub=dup"]
    rdata = mdns.encode_txt(strings)
    assert rdata[:10] == b"\x09txtvers=1"
    assert mdns.decode_txt(rdata) == tuple(strings)


def test_txt_empty_is_one_empty_string() -> None:
    # RFC 6763 §6.1: a TXT record holds at least one (possibly empty) string
    assert mdns.encode_txt([]) == b"\x00"
    assert mdns.decode_txt(b"\x00") == ()
    assert mdns.decode_txt(b"") == ()
    assert mdns.decode_txt(b"\x00\x01a") == (b"", b"a")


@pytest.mark.parametrize(
    "strings,message",
    [
        ([b"x" * 256], "exceeds 255"),
        ([b"k=" + b"v" * 250] * 6, "exceeds 1300"),
        (["txtvers=1"], "bytes, not str"),
    ],
)
def test_txt_limits(strings: list, message: str) -> None:
    with pytest.raises(LocalError, match=message):
        mdns.encode_txt(strings)


def test_txt_truncated_rdata_is_a_hint_not_an_error() -> None:
    assert mdns.decode_txt(b"\x05ab") == (b"ab",)


def test_server_name() -> None:
    label, _ = new_key()
    assert mdns.server_name(label) == f"wg-{label[:16]}.local."
    assert len(label) == 56 and label == label.lower() and label.endswith("====")


@pytest.mark.asyncio
async def test_api_misuse_is_local_error() -> None:
    # nothing here opens a socket: every call fails before reaching zeroconf
    service = mdns.MdnsService(["lo"])
    label, _ = new_key()
    with pytest.raises(LocalError, match="not started"):
        await service.publish(label, 51820, ["10.0.0.1"], [b"txtvers=1"])
    with pytest.raises(LocalError, match="bad instance label"):
        await service.publish("a.b", 51820, ["10.0.0.1"], [b"txtvers=1"])
    with pytest.raises(LocalError, match="bad instance label"):
        await service.publish("x" * 64, 51820, ["10.0.0.1"], [b"txtvers=1"])
    for port, addresses, message in [
        (0, ["10.0.0.1"], "out of range"),
        (51820, [], "at least one address"),
        (51820, ["fe80::1%2"], "cannot carry a scope"),
        (51820, ["host.example"], "not an IP address"),
    ]:
        with pytest.raises(LocalError, match=message):
            await service.publish(label, port, addresses, [b"txtvers=1"])
    with pytest.raises(LocalError, match="not started"):
        await service.browse(lambda event: None)
    await service.close()  # closing a service never started is fine


def test_bind_choice_prefers_ipv4_where_an_interface_has_it() -> None:
    """mDNSFamily = auto (the default): an interface with an IPv4 address speaks mDNS over IPv4
    alone (one copy of every message on a dual-stack link, not two); ``both`` keeps both; an
    interface without IPv4 speaks IPv6 either way."""
    assert mdns.bind_choice(["lo"]) == (["127.0.0.1", socket.if_nametoindex("lo")], mdns.IPVersion.All)
    assert mdns.bind_choice(["lo"], prefer_ipv4=True) == (["127.0.0.1"], mdns.IPVersion.V4Only)
    assert mdns.bind_choice(["lo"], mdns.IPVersion.V6Only, prefer_ipv4=True) == (
        [socket.if_nametoindex("lo")], mdns.IPVersion.V6Only)
    assert mdns.FAMILIES == {"auto": (mdns.IPVersion.All, True), "both": (mdns.IPVersion.All, False),
                             "ipv4": (mdns.IPVersion.V4Only, False), "ipv6": (mdns.IPVersion.V6Only, False)}
    assert set(mdns.FAMILIES) == set(config.MDNS_FAMILIES)
    assert [mdns.family_text(b) for b in (None, ([], mdns.IPVersion.V4Only), ([], mdns.IPVersion.V6Only))] == [
        "IPv4 and IPv6", "IPv4", "IPv6"]


def test_interface_addresses_skip_loopback() -> None:
    assert mdns.interface_addresses(["lo"]) == []
    with pytest.raises(LocalError, match="no network interface"):
        mdns.interface_addresses(["wgd-no-such-if"])


def test_zeroconf_socket_errors_are_logged_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """A send on a socket whose interface lost its address: one warning line, no traceback."""
    try:
        raise OSError(101, "Network is unreachable")
    except OSError as e:
        err = e
    with caplog.at_level(logging.WARNING, logger="zeroconf"):
        logging.getLogger("zeroconf").warning("Error with socket 14 (('10.1.0.1', 5353))): %s", err, exc_info=err)
        logging.getLogger("zeroconf").warning("not a socket error", exc_info=ValueError("kept"))
    socket_error, other = caplog.records
    assert socket_error.exc_info is None and "Network is unreachable" in socket_error.getMessage()
    assert other.exc_info is not None  # only OSErrors lose their traceback


@pytest.mark.asyncio
async def test_names_that_cannot_be_wgsd_records_cost_nothing(caplog: pytest.LogCaptureFixture) -> None:
    # zeroconf's browser calls this handler for every instance it hears of; a stranger on the LAN
    # can invent any name, including ones zeroconf itself refuses (a '\r' in the label)
    service = mdns.MdnsService(["lo"])
    label, _ = new_key()
    for name in ("evil\r", "Kitchen printer", label[:-1], label.upper() + "x", "a" * 56):
        service._on_state_change(zeroconf=None, service_type=mdns.SERVICE_TYPE,  # type: ignore[arg-type]
                                 name=f"{name}.{mdns.SERVICE_TYPE}", state_change=mdns.ServiceStateChange.Added)
    assert service.ignored_names == 5
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_wgsd_label_is_the_base32_of_a_key() -> None:
    label, _ = new_key()
    assert mdns.WGSD_LABEL.fullmatch(label)
    assert not mdns.WGSD_LABEL.fullmatch(label.replace("====", "===a"))


def zeroconf_objects() -> int:
    return sum(1 for o in gc.get_objects() if type(o).__name__ == "Zeroconf")


@pytest.mark.asyncio
async def test_a_closed_service_leaves_no_zeroconf_behind() -> None:
    """Issue 17: each mDNS rebind (a network change) closed one zeroconf instance and started
    another; the closed ones, reference cycles the daemon's collector hardly ever visits, piled
    up (the soak's RSS slope). With the automatic collector off, as it nearly is in the daemon,
    ten start/browse/close cycles on loopback leave no Zeroconf object behind."""
    gc.collect()
    before = zeroconf_objects()
    gc.disable()
    try:
        for _ in range(10):
            service = mdns.MdnsService(["lo"])
            await service.start()
            await service.browse(lambda event: None)
            await service.close()
            del service
        left = zeroconf_objects() - before
    finally:
        gc.enable()
    assert left == 0, f"{left} closed zeroconf instances still in memory after 10 rebinds"


@pytest.mark.asyncio
async def test_a_service_binds_to_what_the_caller_computed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon computes ``bind_choice`` off the event loop (with its mDNSFamily) and compares it
    with ``bound`` at each network change: the service binds to exactly that, without listing the
    interfaces again on the loop."""
    given = mdns.bind_choice(["lo"], prefer_ipv4=True)

    def listed_again(*args: object, **kw: object) -> None:
        raise AssertionError("bind_choice called again")

    monkeypatch.setattr(mdns, "bind_choice", listed_again)
    service = mdns.MdnsService(["lo"], bound=given)
    await service.start()
    try:
        assert service.bound is given and given == (["127.0.0.1"], mdns.IPVersion.V4Only)
    finally:
        await service.close()


def test_zeroconf_sockets_hear_only_their_own_groups() -> None:
    """IP_MULTICAST_ALL (on by default) would hand zeroconf's wildcard socket the mDNS of every
    interface where anything joined the group, the tunnel with Avahi on it included (issue 28)."""
    import socket
    from types import SimpleNamespace

    v4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    v6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        assert v4.getsockopt(socket.IPPROTO_IP, mdns.IP_MULTICAST_ALL) == 1  # the kernel's default
        zc = SimpleNamespace(engine=SimpleNamespace(readers=[SimpleNamespace(sock=v4), SimpleNamespace(sock=v6)]))
        mdns.only_own_groups(zc)  # type: ignore[arg-type]
        assert v4.getsockopt(socket.IPPROTO_IP, mdns.IP_MULTICAST_ALL) == 0
        assert v6.getsockopt(socket.IPPROTO_IP, mdns.IP_MULTICAST_ALL) == 0  # IPv4 on a dual-stack socket
        assert v6.getsockopt(socket.IPPROTO_IPV6, mdns.IPV6_MULTICAST_ALL) == 0
    finally:
        v4.close()
        v6.close()


def test_zeroconf_listening_sockets_get_room_for_a_burst() -> None:
    """1 MiB of receive buffer (SO_RCVBUFFORCE as root; as an ordinary user what rmem_max allows),
    not the 208 KiB default that held ~90 datagrams when 40 members started together."""
    import socket
    from pathlib import Path
    from types import SimpleNamespace

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        before = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        mdns.roomy_receive_buffers(SimpleNamespace(engine=SimpleNamespace(readers=[SimpleNamespace(sock=sock)])))  # type: ignore[arg-type]
        got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)  # the kernel reports twice what was set
        rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
        assert got >= 2 * (mdns.RECEIVE_BUFFER if os.geteuid() == 0 else min(mdns.RECEIVE_BUFFER, rmem_max))
        assert got > before or rmem_max <= before // 2
    finally:
        sock.close()
