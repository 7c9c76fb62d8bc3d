"""``make install`` into a DESTDIR, the installed program run as systemd would run it, ``make uninstall``.

The installed ``bin/wgdisco`` (not the checkout's: its launcher runs the venv's python with -I,
so PYTHONPATH cannot bring the checkout in, and ``--version`` names where it runs from) brings
up a tunnel in a namespace with ``$NOTIFY_SOCKET`` pointing at a datagram socket of this test:
READY=1 arrives only once the UAPI socket answers; SIGHUP gives RELOADING=1 then READY=1, SIGTERM
STOPPING=1. A second node runs with ``$JOURNAL_STREAM`` naming its stderr, as systemd sets it: its
lines carry ``<N>`` priorities and no time. Installing again upgrades in place; uninstalling
leaves the DESTDIR as it was before (every path compared), mesh identities and /etc/wireguard kept.

Time: one install is ≈20 s here with pip's cache warm (docs/install.md).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wgdisco.lab import Lab
from wgdisco.lab.wg import Node, keypair

pytestmark = pytest.mark.netns
CHECKOUT = Path(__file__).resolve().parents[2]
PREFIX = "/usr/local"


def make(target: str, destdir: Path, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    proc = subprocess.run(["make", "-C", str(CHECKOUT), "--no-print-directory", target, f"DESTDIR={destdir}",
                           f"PREFIX={PREFIX}"], capture_output=True, text=True, timeout=600,
                          # as a user runs it: CI's WGDISCO_BUILD_FASTPATH=1 (a failed build is an error in
                          # the checkout's venv) is not the install's default ("auto": the pure path then)
                          env={**{k: v for k, v in os.environ.items() if k != "WGDISCO_BUILD_FASTPATH"},
                               **(env or {})})
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc, elapsed


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root``: its kind, and the content of regular files."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            out[rel] = "link" if p.is_symlink() else "dir" if p.is_dir() else p.read_text(errors="replace")
    return out


class NotifyListener:
    """The service manager's end: a datagram socket at a path (reachable from any namespace)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))

    def next(self, timeout: float = 20.0) -> dict[str, str]:
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.splitlines())

    def close(self) -> None:
        self.sock.close()


def test_install_run_as_a_service_then_uninstall_leaves_nothing(lab: Lab, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    # what a machine already has: the installer must keep it, the uninstaller must not take it
    for kept, text in (("var/lib/wgdisco/mesh0.key", "not-a-real-key\n"), ("etc/wireguard/wg0.conf", "[Interface]\n")):
        (dest / kept).parent.mkdir(parents=True, exist_ok=True)
        (dest / kept).write_text(text)
    before = snapshot(dest)

    out, seconds = make("install", dest)
    print(f"make install DESTDIR: {seconds:.1f} s")
    assert "compiled data path built" in out.stdout, out.stdout
    bindir = dest / PREFIX.lstrip("/") / "bin"
    wgdisco = str(bindir / "wgdisco")
    venv = dest / PREFIX.lstrip("/") / "lib" / "wgdisco"
    version = subprocess.run([wgdisco, "--version"], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONPATH": str(CHECKOUT)}).stdout
    assert f"({venv}/lib/python3" in version.splitlines()[0], version  # the installed one, PYTHONPATH or not
    assert "data path: compiled" in version and "Python 3." in version
    unit = (dest / "etc/systemd/system/wgdisco@.service").read_text()
    assert f"ExecStart={PREFIX}/bin/wgdisco up /etc/wireguard/%i.conf" in unit and "Type=notify" in unit
    assert (dest / PREFIX.lstrip("/") / "share/man/man8/wgdisco.8").read_text().startswith(".TH WGDISCO 8")
    dropin = (dest / PREFIX.lstrip("/") / "share/wgdisco/systemd/wg-quick-userspace.conf").read_text()
    assert f"WG_QUICK_USERSPACE_IMPLEMENTATION={PREFIX}/bin/wgdisco-userspace" in dropin

    # --- two nodes on one link, run by the installed program -------------------------------
    ha, hb = lab.host("a"), lab.host("b")
    lab.link(ha, hb, "198.51.100.1/24", "198.51.100.2/24")
    tag = lab.prefix[3:9]
    a = Node(ha, "wgdisco", f"wa{tag}", *keypair(), ["10.9.0.1/24"])
    b = Node(hb, "wgdisco", f"wb{tag}", *keypair(), ["10.9.0.2/24"])
    a.peers = [b.peer_spec("198.51.100.2:51820")]
    b.peers = [a.peer_spec()]
    confs = {}
    for node in (a, b):
        confs[node.iface] = lab.logdir / f"{node.iface}.conf"
        confs[node.iface].write_text(node.config_text())
        confs[node.iface].chmod(0o600)
    notify = NotifyListener(tmp_path / "notify")
    try:
        a.proc = ha.popen([wgdisco, "up", str(confs[a.iface])], name="installed-a", env={"NOTIFY_SOCKET": str(notify.path)})
        ready = notify.next()
        # the moment READY=1 arrives the interface is up and `wg show` (the UAPI) answers
        assert ready.get("READY") == "1", ready
        assert ha.run(["wg", "show", a.iface, "public-key"], check=False).stdout.strip() == a.public
        assert "UP" in ha.run(["ip", "link", "show", a.iface]).stdout.split(">")[0]
        assert ready["STATUS"] == f"{a.iface} up: UDP port 51820, 1 configured peer(s)"
        # b as under journald: JOURNAL_STREAM names its stderr (device:inode, as systemd sets it)
        b.proc = hb.popen(["sh", "-c", f'JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) exec "$0" up "$1"',
                           wgdisco, str(confs[b.iface])], name="installed-b")
        b.proc.wait_for(r"interface \S+ up:", timeout=20, stream="stderr")
        start = time.monotonic()
        while ha.run(["ping", "-c1", "-W1", b.inner4], check=False).returncode != 0:
            assert time.monotonic() - start < 10, b.proc.stderr()
        status = ha.run([wgdisco, "status", a.iface]).stdout
        assert f"interface: {a.iface}" in status and f"peer: {b.public}" in status
        lines = [x for x in b.proc.stderr().splitlines() if x]
        assert lines and all(re.match(r"<[2-7]>[A-Z]+ ", x) for x in lines), lines[:5]
        assert any(x.startswith(f"<6>INFO interface {b.iface} up:") for x in lines), lines
        assert not any(re.search(r"\d\d:\d\d:\d\d", x) for x in lines), lines[:5]  # the journal stamps the time

        os.kill(a.proc.pid, signal.SIGHUP)
        reloading = notify.next()
        assert reloading.get("RELOADING") == "1", reloading
        assert abs(int(reloading["MONOTONIC_USEC"]) - time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000) < 10_000_000
        assert notify.next().get("READY") == "1"
        os.kill(a.proc.pid, signal.SIGTERM)
        assert notify.next().get("STOPPING") == "1"
        assert a.proc.wait(15) == 0, a.proc.stderr()
        assert b.stop() == 0
    finally:
        notify.close()

    # --- again: an upgrade in place ----------------------------------------------------------
    python_inode = (venv / "bin" / "python").lstat().st_ino
    stale = dest / PREFIX.lstrip("/") / "share/man/man8/renamed-away.8"  # installed by an "older version"
    stale.write_text("old\n")
    with open(venv / "install-manifest.txt", "a") as f:
        f.write(f"file {PREFIX}/share/man/man8/renamed-away.8\n")
    out, seconds = make("install", dest)
    print(f"make install again (upgrade in place): {seconds:.1f} s")
    assert "upgrading the venv in place" in out.stdout
    assert (venv / "bin" / "python").lstat().st_ino == python_inode
    assert not stale.exists()
    assert (dest / "var/lib/wgdisco/mesh0.key").read_text() == "not-a-real-key\n"

    out, _ = make("uninstall", dest)
    after = snapshot(dest)
    assert after == before, (sorted(set(after) - set(before)), sorted(set(before) - set(after)))
    assert "left as they are" in out.stdout


def test_install_without_a_compiler_succeeds_on_the_pure_path(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    out, seconds = make("install", dest, env={"CC": "/bin/false"})  # setuptools compiles with $CC
    print(f"make install DESTDIR, no compiler: {seconds:.1f} s")
    assert "compiled data path NOT built: wgdisco will use the pure-Python data path" in out.stdout, out.stdout
    version = subprocess.run([str(dest / PREFIX.lstrip("/") / "bin/wgdisco"), "--version"], capture_output=True,
                             text=True, check=True).stdout
    assert "data path: pure Python (the compiled one is not built" in version, version
    make("uninstall", dest)
    assert not any(dest.iterdir())


def test_mesh_names_are_written_when_only_the_hosts_file_is_writable(tmp_path: Path) -> None:
    """The unit's sandbox (ProtectSystem=strict, ReadWritePaths=/etc/hosts): the directory is
    read-only, the file alone a writable bind mount. Rebuilt here with a private mount namespace;
    the block must still be written (in place) and removed again."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "hosts").write_text("127.0.0.1\tlocalhost\n")
    script = (
        "from wgdisco.io.hosts import HostsFile\n"
        f"h = HostsFile('wgt0', {str(etc / 'hosts')!r})\n"
        "h.write([('10.70.0.9', ['alice'])])\n"
        f"print(open({str(etc / 'hosts')!r}).read(), end='')\n"
        "h.remove()\n"
    )
    sandbox = (f'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && '
               f'mount --bind "$0/hosts" "$0/hosts" && mount -o remount,bind,rw "$0/hosts" && '
               f'! touch "$0/other" 2>/dev/null && exec "$1" -c "$2"')
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", sandbox, str(etc),
                           sys.executable, script], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PYTHONPATH": str(CHECKOUT)})
    assert proc.returncode == 0, proc.stderr
    assert "10.70.0.9\talice" in proc.stdout and proc.stdout.startswith("127.0.0.1\tlocalhost\n")
    assert (etc / "hosts").read_text() == "127.0.0.1\tlocalhost\n"  # the block removed at the end
    assert sorted(p.name for p in etc.iterdir()) == ["hosts"]  # no temporary file left behind
