"""The interface deleted under a running daemon (``ip link del``, what ``wg-quick down`` does).

The daemon must notice, remove its sockets and exit 0, and its teardown must never delete
a different link that took the same name in the meantime. Daemons run as ``wgdisco up
CONFIG`` with the documented defaults (no [Discovery] section, no tuned timers).
"""

from __future__ import annotations

import json
import re
import select
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from wgdisco.lab import Host, Lab, require_tool
from wgdisco.lab.netns import enter_netns
from wgdisco.lab.wg import PACKAGE_ROOT, SOCKET_DIR, Node, keypair

pytestmark = pytest.mark.netns

GONE_LINE = r"interface {} was deleted; shutting down"


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tool("wg")


def start_daemon(lab: Lab, hooks: dict[str, str] | None = None) -> Node:
    """``wgdisco up`` on a host with one LAN link and one (absent) peer; waits for "up".

    ``hooks``: e.g. ``{"PostUp": "touch /x"}``, added to [Interface]."""
    host, other = lab.host("a"), lab.host("b")
    lab.link(host, other, "198.51.100.1/24", "198.51.100.2/24")
    tag = lab.prefix[3:9]  # interface names unique per run: /run/wireguard is shared
    node = Node(host, "wgdisco", f"wl{tag}", *keypair(), ["10.9.0.1/24"], discovery={})
    node.peers = [Node(other, "wgdisco", "unused", *keypair(), ["10.9.0.2/24"]).peer_spec("198.51.100.2:51820")]
    conf = lab.logdir / f"{node.iface}.conf"
    head, rest = node.config_text().split("\n", 1)
    conf.write_text("\n".join([head, *(f"{k} = {v}" for k, v in (hooks or {}).items()), rest]))
    conf.chmod(0o600)
    node.proc = host.popen([sys.executable, "-m", "wgdisco", "up", str(conf)], name=f"wgdisco-{node.iface}",
                           env={"PYTHONPATH": str(PACKAGE_ROOT)})
    node.proc.wait_for(r"interface \S+ up:", timeout=20, stream="stderr")
    assert (SOCKET_DIR / f"{node.iface}.sock").exists()
    return node


def link_index(host: Host, name: str) -> int | None:
    out = host.ip("-j", "link", "show", "dev", name, check=False)
    return json.loads(out.stdout)[0]["ifindex"] if out.returncode == 0 else None


def test_link_deleted_under_the_daemon_exits_cleanly(lab: Lab) -> None:
    marks = {hook: lab.logdir / f"{hook}.ran" for hook in ("PostUp", "PreDown", "PostDown")}
    node = start_daemon(lab, {hook: f"touch {path}" for hook, path in marks.items()})
    assert node.proc is not None
    assert marks["PostUp"].exists()
    node.host.ip("link", "del", node.iface)
    rc = node.proc.wait(timeout=5)
    log = node.proc.stderr()
    assert rc == 0, log
    assert len(re.findall(GONE_LINE.format(node.iface), log)) == 1, log
    assert "Traceback" not in log and "Errno" not in log, log
    assert not (SOCKET_DIR / f"{node.iface}.sock").exists()
    assert node.host.run(["wg", "show", node.iface], check=False).returncode != 0
    assert link_index(node.host, node.iface) is None
    # whoever deleted the link owns the down hooks (wg-quick down runs them itself)
    assert not marks["PreDown"].exists() and not marks["PostDown"].exists()


def test_teardown_leaves_a_new_link_with_the_same_name(lab: Lab) -> None:
    node = start_daemon(lab)
    assert node.proc is not None
    old = link_index(node.host, node.iface)
    node.host.ip("link", "del", node.iface)
    # an unrelated link takes the name at once (the dummy module may be missing: a veth)
    node.host.ip("link", "add", node.iface, "type", "veth", "peer", "name", f"p{node.iface[1:]}")
    new = link_index(node.host, node.iface)
    assert new is not None and new != old
    if node.proc.alive():
        node.proc.stop(grace=5.0)
    node.proc.wait(timeout=10)
    assert link_index(node.host, node.iface) == new, node.proc.stderr()


# --- io/netlink.py: delete by ifindex, and only if the name still matches ---------------


def in_netns(host: Host, fn, *args):  # noqa: ANN001, ANN201
    with ThreadPoolExecutor(1, initializer=enter_netns, initargs=(host.ns,)) as pool:
        return pool.submit(fn, *args).result(timeout=60)


def test_delete_link_index_only_deletes_that_link(lab: Lab) -> None:
    from wgdisco.io import netlink

    host = lab.host("n")
    host.ip("link", "add", "lk0", "type", "veth", "peer", "name", "lk0p")
    first = link_index(host, "lk0")
    assert first is not None
    host.ip("link", "del", "lk0")
    host.ip("link", "add", "lk0", "type", "veth", "peer", "name", "lk0p")
    second = link_index(host, "lk0")
    assert second is not None and second != first
    assert in_netns(host, netlink.delete_link_index, first, "lk0") is False  # gone: the new lk0 stays
    assert link_index(host, "lk0") == second
    host.ip("link", "set", "lk0", "name", "lk1")
    assert in_netns(host, netlink.delete_link_index, second, "lk0") is False  # renamed: not ours any more
    assert link_index(host, "lk1") == second
    host.ip("link", "set", "lk1", "name", "lk0")
    assert in_netns(host, netlink.delete_link_index, second, "lk0") is True
    assert link_index(host, "lk0") is None
    assert in_netns(host, netlink.delete_link_index, second, "lk0") is False  # already gone: fine


def test_tun_fd_after_the_link_is_deleted(lab: Lab) -> None:
    """What the data plane relies on: EPOLLERR, then EBADFD on read and write (EIO is only "down")."""
    from wgdisco.io.tun import Tun, link_gone

    host = lab.host("t")

    def body() -> tuple[int, int, list[bool]]:
        with Tun("lt0") as tun:
            index = tun.ifindex
            ep = select.epoll()
            ep.register(tun.fileno(), select.EPOLLIN)
            host.ip("link", "del", "lt0")
            [(_, mask)] = ep.poll(2)
            gone = []
            for op in (lambda: tun.read(), lambda: tun.write(bytes(20))):
                try:
                    op()
                    gone.append(False)
                except OSError as e:
                    gone.append(link_gone(e))
            ep.close()
            return index, mask, gone

    host.ip("link", "add", "lt1", "type", "veth", "peer", "name", "lt1p")  # so the index is not trivially 2
    index, mask, gone = in_netns(host, body)
    assert index > 1
    assert mask & select.EPOLLERR
    assert gone == [True, True]
