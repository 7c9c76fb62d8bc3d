"""wg-quick(8) with wgdisco as its userspace implementation (``wgdisco-userspace``).

wg-quick itself runs ``$WG_QUICK_USERSPACE_IMPLEMENTATION IFACE`` (the kernel here has no
WireGuard), then configures the interface with ``wg setconf``, ``ip`` and nft; these tests only
run ``wg-quick up|down|save`` and look at the result. Defaults as documented: no side file (so
[Discovery] defaults, mDNS on), unless a test is about the side file. The config is an absolute
path in a temporary directory, the interface names are unique per run (/run/wireguard is shared
by every namespace), and the lab removes what a failed test leaves (its namespaces' processes).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from wgdisco import config
from wgdisco.lab import Host, Lab, require_tool
from wgdisco.lab.wg import SOCKET_DIR, Node, PeerSpec, keypair

pytestmark = pytest.mark.netns

USERSPACE = Path(sys.executable).parent / "wgdisco-userspace"  # the venv's: installed by make bootstrap


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tool("wg-quick")
    require_tool("wg")
    require_tool("wireguard-go")
    if not USERSPACE.exists():
        pytest.fail(f"{USERSPACE} is missing: run `make bootstrap` (pyproject [project.scripts])")


def daemon_pids(iface: str) -> list[int]:
    """The wgdisco-userspace daemons serving ``iface`` (found by their command line)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"wgdisco.userspace" in argv and iface.encode() in argv:
            pids.append(int(entry.name))
    return pids


def wait_until(predicate, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s: {what}")
        time.sleep(0.05)


class WgQuick:
    """One wg-quick interface on a lab host: its config file, its side-file directory, its log."""

    def __init__(self, host: Host, iface: str, directory: Path, private: str) -> None:
        self.host, self.iface, self.private = host, iface, private
        self.conf = directory / f"{iface}.conf"  # wg-quick: an absolute path ending in <iface>.conf
        self.side_dir = directory / "wgdisco"  # WGDISCO_CONFIG_DIR: empty unless a test writes a side file
        self.side_dir.mkdir(exist_ok=True)
        self.log = directory / f"{iface}.log"  # wg-quick's output and (LOG_LEVEL=verbose) the daemon's

    def env(self) -> dict[str, str]:
        return {"WG_QUICK_USERSPACE_IMPLEMENTATION": str(USERSPACE), "WGDISCO_CONFIG_DIR": str(self.side_dir),
                "LOG_LEVEL": "verbose"}

    def write(self, text: str) -> None:
        self.conf.write_text(text)
        self.conf.chmod(0o600)

    def run(self, action: str, *, check: bool = True) -> int:
        # into a file, not a pipe: the daemon inherits wg-quick's stdout/stderr (LOG_LEVEL is set)
        # and would keep a pipe open after wg-quick returns
        command = f"wg-quick {action} {shlex.quote(str(self.conf))} >>{shlex.quote(str(self.log))} 2>&1"
        rc = self.host.run(["bash", "-c", command], env=self.env(), check=False, timeout=60).returncode
        if check:
            assert rc == 0, f"wg-quick {action} exited with {rc}:\n{self.output()}"
        return rc

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def wg(self, *args: str) -> str:
        return self.host.run(["wg", *args]).stdout

    def sock(self) -> Path:
        return SOCKET_DIR / f"{self.iface}.sock"

    def assert_down(self) -> None:
        """After `wg-quick down`: the daemon exits by itself, its socket and the link are gone."""
        wait_until(lambda: not daemon_pids(self.iface), 10, f"the daemon of {self.iface} to exit\n{self.output()}")
        assert not self.sock().exists()
        assert self.host.ip("link", "show", self.iface, check=False).returncode != 0
        assert "Traceback" not in self.output(), self.output()

    def cleanup(self) -> None:
        for pid in daemon_pids(self.iface):
            os.kill(pid, signal.SIGTERM)
        if daemon_pids(self.iface):
            time.sleep(1)
        for pid in daemon_pids(self.iface):
            os.kill(pid, signal.SIGKILL)
        self.sock().unlink(missing_ok=True)


@pytest.fixture
def quick(lab: Lab, tmp_path: Path) -> Iterator[list[WgQuick]]:
    made: list[WgQuick] = []
    yield made
    for q in made:
        q.cleanup()


def setup(lab: Lab, tmp_path: Path, quick: list[WgQuick], kind_b: str, *, full: bool = False,
          extra: str = "") -> tuple[WgQuick, Node]:
    """Host a runs wg-quick (its peer's endpoint known: it initiates); host b runs ``kind_b``.

    ``full``: AllowedIPs = 0.0.0.0/0, ::/0, and b sits behind a router, so that a reaches b's
    endpoint by its default route (an on-link endpoint would take the main table anyway, through
    wg-quick's `suppress_prefixlength 0` rule, and hide whether the fwmark works)."""
    ha, hb = lab.host("a"), lab.host("b")
    endpoint = "198.51.100.2:51820"
    if full:
        r = lab.router("r")
        lab.link(ha, r, "198.51.100.1/24", "198.51.100.254/24", "2001:db8:1::1/64", "2001:db8:1::fe/64")
        lab.link(r, hb, "203.0.113.254/24", "203.0.113.2/24", "2001:db8:2::fe/64", "2001:db8:2::2/64")
        ha.add_route("default", via="198.51.100.254")
        ha.add_route("default", via="2001:db8:1::fe", v6=True)
        hb.add_route("default", via="203.0.113.254")
        hb.add_route("default", via="2001:db8:2::fe", v6=True)
        endpoint = "203.0.113.2:51820"
    else:
        lab.link(ha, hb, "198.51.100.1/24", "198.51.100.2/24", "2001:db8:1::1/64", "2001:db8:1::2/64")
    tag = lab.prefix[3:9]
    private, public = keypair()
    a = WgQuick(ha, f"wq{tag}", tmp_path, private)
    quick.append(a)
    b = Node(hb, kind_b, f"wr{tag}", *keypair(), ["10.9.0.2/24", "fd00:9::2/64"])
    b.peers = [PeerSpec(public, ["10.9.0.1/32", "fd00:9::1/128"])]
    b.start()
    allowed = "0.0.0.0/0, ::/0" if full else "10.9.0.2/32, fd00:9::2/128"
    a.write(f"[Interface]\nPrivateKey = {private}\nListenPort = 51820\nAddress = 10.9.0.1/24, fd00:9::1/64\n{extra}"
            f"\n[Peer]\nPublicKey = {b.public}\nAllowedIPs = {allowed}\nEndpoint = {endpoint}\n")
    return a, b


# --- up, ping, wg show, down, up again --------------------------------------------------


@pytest.mark.parametrize("kind_b", ["wireguard-go", "wgdisco"])
def test_up_ping_show_down_and_up_again(lab: Lab, tmp_path: Path, quick: list[WgQuick], kind_b: str) -> None:
    a, b = setup(lab, tmp_path, quick, kind_b)
    for round_ in (1, 2):
        a.run("up")
        assert f"[#] {USERSPACE} {a.iface}" in a.output()  # wg-quick ran us, as it runs wireguard-go
        assert len(daemon_pids(a.iface)) == 1 and a.sock().exists()
        a.host.ping(b.inner4, count=3, wait=3)
        a.host.ping(b.inner6, count=3, wait=3)
        b.host.ping("10.9.0.1", count=2, wait=2)
        b.host.ping("fd00:9::1", count=2, wait=2)
        show = a.wg("show", a.iface)
        assert f"peer: {b.public}" in show and "latest handshake:" in show, show
        assert "endpoint: 198.51.100.2:51820" in show and "listening port: 51820" in show, show
        assert a.wg("show", a.iface, "private-key").strip() == a.private
        assert a.host.operstate(a.iface) in ("UP", "UNKNOWN")
        assert "10.9.0.1/24" in a.host.addresses(a.iface) and "fd00:9::1/64" in a.host.addresses(a.iface)
        a.run("down")
        a.assert_down()
        assert a.output().count("was deleted; shutting down") == round_, a.output()


# --- before wg setconf: no key, nothing sent ---------------------------------------------


def test_no_key_until_one_is_set(lab: Lab, tmp_path: Path, quick: list[WgQuick]) -> None:
    """Started bare (as wg-quick starts it): no private key shown, no handshake with the throwaway
    key the device runs on, even with a peer and traffic for it; then `wg set private-key`."""
    a, b = setup(lab, tmp_path, quick, "wireguard-go")
    env = a.env()
    cp = a.host.run([str(USERSPACE), a.iface], env={**env, "LOG_LEVEL": ""}, timeout=30)  # the parent returns
    assert (cp.returncode, cp.stdout, cp.stderr) == (0, "", "")
    assert a.sock().exists() and len(daemon_pids(a.iface)) == 1
    assert a.host.operstate(a.iface) == "DOWN"  # as wireguard-go leaves it: wg-quick brings it up
    assert a.wg("show", a.iface, "private-key").strip() == "(none)"
    assert a.wg("show", a.iface, "public-key").strip() == "(none)"
    assert "private_key=" not in a.host.run(["bash", "-c", f"printf 'get=1\\n\\n' | nc -NU {a.sock()}"],
                                            check=False).stdout
    status = json.loads(a.host.run([sys.executable, "-m", "wgdisco", "status", a.iface, "--json"]).stdout)
    assert status["public_key"] == "(none)"
    # a second one for the same interface: refused by the parent, with the reason
    again = a.host.run([str(USERSPACE), a.iface], env=env, check=False, timeout=30)
    assert again.returncode == 1 and again.stderr == f"wgdisco-userspace: interface {a.iface} already exists\n"
    # a peer, an address, traffic: still no handshake (the throwaway key must not be used)
    a.wg("set", a.iface, "peer", b.public, "allowed-ips", "10.9.0.2/32", "endpoint", "198.51.100.2:51820")
    a.host.ip("addr", "add", "10.9.0.1/24", "dev", a.iface)
    a.host.ip("link", "set", a.iface, "up")
    assert a.host.run(["ping", "-c", "2", "-W", "1", b.inner4], check=False).returncode != 0
    assert b.dump()[a_public(a)]["latest_handshake"] == 0
    status = json.loads(a.host.run([sys.executable, "-m", "wgdisco", "status", a.iface, "--json"]).stdout)
    assert status["dropped"].get("no-private-key", 0) >= 1, status["dropped"]
    keyfile = tmp_path / "a.key"
    keyfile.write_text(a.private + "\n")
    keyfile.chmod(0o600)
    a.wg("set", a.iface, "private-key", str(keyfile))
    assert a.wg("show", a.iface, "private-key").strip() == a.private
    a.host.ping(b.inner4, count=3, wait=3)
    assert b.dump()[a_public(a)]["latest_handshake"] > 0
    a.host.ip("link", "del", a.iface)
    a.assert_down()


def a_public(a: WgQuick) -> str:
    from wgdisco.proto import keys

    return keys.key_to_base64(keys.public_key(keys.key_from_base64(a.private)))


# --- wg-quick save, SaveConfig = true, and the side file ---------------------------------


def test_save_and_saveconfig(lab: Lab, tmp_path: Path, quick: list[WgQuick]) -> None:
    a, b = setup(lab, tmp_path, quick, "wgdisco", extra="SaveConfig = true\n")
    # the side file: mDNS off, metrics on (which shows that it was read)
    (a.side_dir / f"{a.iface}.conf").write_text("[Discovery]\nmDNS = off\nMetrics = 127.0.0.1:9586\n")
    a.run("up")
    a.host.ping(b.inner4, count=2, wait=3)
    metrics = a.host.run([sys.executable, "-c", "import urllib.request; print(urllib.request.urlopen("
                          "'http://127.0.0.1:9586/metrics', timeout=5).read().decode())"]).stdout
    assert f'wgdisco_handshakes_total{{interface="{a.iface}",peer="{b.public}"}} 1' in metrics, metrics
    extra_private, extra_public = keypair()
    a.wg("set", a.iface, "peer", extra_public, "allowed-ips", "10.9.0.3/32")
    a.run("save")
    saved = config.load(a.conf)  # wg-quick's file parses back
    assert [keys_b64(p.public_key) for p in saved.peers] == [b.public, extra_public]
    assert saved.interface.save_config and saved.interface.listen_port == 51820
    assert {"10.9.0.1/24", "fd00:9::1/64"} <= {str(x) for x in saved.interface.addresses}
    assert keys_b64(saved.interface.private_key) == a.private
    # SaveConfig = true: `down` writes what the interface holds then
    a.wg("set", a.iface, "peer", extra_public, "remove")
    a.wg("set", a.iface, "listen-port", "51821")
    a.run("down")
    a.assert_down()
    saved = config.load(a.conf)
    assert [keys_b64(p.public_key) for p in saved.peers] == [b.public]
    assert saved.interface.listen_port == 51821
    # and wg-quick takes its own file back
    a.run("up")
    assert "listening port: 51821" in a.wg("show", a.iface)
    a.host.ping(b.inner4, count=2, wait=3)
    a.run("down")
    a.assert_down()


def keys_b64(key: bytes | None) -> str:
    from wgdisco.proto import keys

    assert key is not None
    return keys.key_to_base64(key)


# --- a full tunnel: AllowedIPs = 0.0.0.0/0, ::/0 -------------------------------------


def test_full_tunnel(lab: Lab, tmp_path: Path, quick: list[WgQuick]) -> None:
    """wg-quick's policy routing (`wg set fwmark`, rules, nft): the tunnel's own datagrams carry
    the mark, so they take the main table and never loop into the tunnel."""
    require_tool("nft")
    a, b = setup(lab, tmp_path, quick, "wireguard-go", full=True)
    a.run("up")
    assert f"wg set {a.iface} fwmark 51820" in a.output(), a.output()
    fwmark = a.wg("show", a.iface, "fwmark").strip()
    pinged = a.host.run(["ping", "-c", "3", "-W", "2", b.inner4], check=False).returncode == 0
    assert fwmark == "0xca6c", fwmark  # 51820
    assert pinged, a.output()
    a.host.ping(b.inner6, count=3, wait=3)
    a.run("down")
    a.assert_down()
    assert "51820" not in a.host.run(["ip", "rule"]).stdout
