"""The port-mapping shell (io/portmap.py): UpnpClient against a fake miniupnpc module (the real
one only talks to a real IGD: tests/netns/test_portmap_lab.py), and the PCP/NAT-PMP socket."""

from __future__ import annotations

import socket
import sys
import types

import pytest

from wgdisco.io import portmap


class FakeIGD:
    """miniupnpc.UPnP's surface as the shell uses it; ``script`` says what each call does."""

    def __init__(self, script: dict[str, object]) -> None:
        self.script = script
        self.discoverdelay = 0
        self.lanaddr = "10.1.0.2"
        self.calls: list[tuple] = []

    def _do(self, name: str, *args: object) -> object:
        self.calls.append((name, *args))
        what = self.script.get(name)
        if isinstance(what, BaseException):
            raise what
        return what

    def discover(self) -> object:
        return self._do("discover")

    def selectigd(self) -> object:
        return self._do("selectigd")

    def externalipaddress(self) -> object:
        return self._do("externalipaddress")

    def addportmapping(self, *args: object) -> object:
        return self._do("addportmapping", *args)

    def addanyportmapping(self, *args: object) -> object:
        return self._do("addanyportmapping", *args)

    def deleteportmapping(self, *args: object) -> object:
        return self._do("deleteportmapping", *args)


def fake_module(monkeypatch: pytest.MonkeyPatch, igd: FakeIGD) -> None:
    mod = types.ModuleType("miniupnpc")
    mod.UPnP = lambda: igd  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "miniupnpc", mod)


OK = {"discover": 1, "selectigd": "http://10.1.0.1:5000/ctl/IPConn", "externalipaddress": "203.0.113.1",
      "addportmapping": True, "deleteportmapping": True}


def test_add_and_delete(monkeypatch: pytest.MonkeyPatch) -> None:
    igd = FakeIGD(dict(OK))
    fake_module(monkeypatch, igd)
    client = portmap.UpnpClient(discover_ms=500)
    assert client.add(51820, 51820, 7200) == portmap.UpnpAnswer(True, ("203.0.113.1", 51820), 7200)
    assert ("addportmapping", 51820, "UDP", "10.1.0.2", 51820, "wgdisco", "", 7200) in igd.calls
    assert igd.discoverdelay == 500
    assert client.delete(51820) is None and igd.calls[-1] == ("deleteportmapping", 51820, "UDP")
    assert sum(c[0] == "discover" for c in igd.calls) == 1  # the IGD found is kept


def test_conflict_lets_the_igd_choose(monkeypatch: pytest.MonkeyPatch) -> None:
    igd = FakeIGD({**OK, "addportmapping": Exception("ConflictInMappingEntry"), "addanyportmapping": 40001})
    fake_module(monkeypatch, igd)
    assert portmap.UpnpClient().add(51820, 51820, 7200) == portmap.UpnpAnswer(True, ("203.0.113.1", 40001), 0)


def test_nothing_answers_ssdp(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_module(monkeypatch, FakeIGD({**OK, "discover": Exception("Success")}))  # miniupnpc 2.3: nothing found
    client = portmap.UpnpClient()
    assert client.add(51820, 51820, 7200) == portmap.UpnpAnswer(False, error="no IGD answered SSDP")
    assert client.delete(51820) == "no IGD"  # nothing was added: nothing is looked for
    assert client.probe() == (None, "no IGD answered SSDP")


def test_a_refusal_is_an_answer_with_its_text(monkeypatch: pytest.MonkeyPatch) -> None:
    igd = FakeIGD({**OK, "addportmapping": Exception("NotAuthorized")})
    fake_module(monkeypatch, igd)
    client = portmap.UpnpClient()
    assert client.add(51820, 51820, 7200) == portmap.UpnpAnswer(True, error="NotAuthorized")
    client.add(51820, 51820, 7200)
    assert sum(c[0] == "discover" for c in igd.calls) == 2  # after an error the IGD is looked for again


def test_a_binding_without_the_lease_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    igd = FakeIGD(dict(OK))

    def six_args(*args: object) -> object:
        if len(args) == 7:
            raise TypeError("function takes exactly 6 arguments (7 given)")
        return True

    igd.addportmapping = six_args  # type: ignore[method-assign]
    fake_module(monkeypatch, igd)
    assert portmap.UpnpClient().add(51820, 51820, 7200) == portmap.UpnpAnswer(True, ("203.0.113.1", 51820), 0)


def test_socket_is_nonblocking_on_an_ephemeral_port() -> None:
    sock = portmap.open_socket("127.0.0.1")
    try:
        assert sock.getsockname()[0] == "127.0.0.1" and sock.getsockname()[1] != 0
        with pytest.raises(BlockingIOError):
            sock.recvfrom(100)
    finally:
        sock.close()
    with pytest.raises(OSError):
        portmap.open_socket("192.0.2.200")  # not ours: cannot bind
    assert socket.AF_INET == sock.family
