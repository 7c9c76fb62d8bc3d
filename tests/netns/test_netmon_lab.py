"""wgdisco.io.netmon: rtnetlink notifications debounced into one callback per burst (netns).

The monitor runs inside a lab namespace: an asyncio loop on a thread that entered
the namespace with setns(2) (a per-thread operation; the netlink socket belongs to
the namespace of the thread that opens it), while the test changes links, addresses
and routes with ``ip -n``.  Interfaces are persistent TUN devices (``ip tuntap``):
like the daemon's own TUN, and no module beyond tun is needed.

Parsing, on hand-built messages: tests/unit/test_netmon.py.
"""

from __future__ import annotations

import asyncio
import json
import queue
import socket
import struct
import threading
import time

import pytest

from wgdisco.errors import LocalError
from wgdisco.io.netmon import ALL_KINDS, RTM_NEWADDR, NetworkMonitor
from wgdisco.lab import Host, Lab
from wgdisco.lab.netns import enter_netns as _enter_netns

SLACK = 1.0  # "within a second": a change's callback arrives this soon after the `ip` command returns


def nlmsg(msg_type: int, body: bytes, pid: int = 0) -> bytes:
    raw = struct.pack("=IHHII", 16 + len(body), msg_type, 0, 0, pid) + body
    return raw + bytes(-len(raw) % 4)


def addr_msg(index: int, msg_type: int = RTM_NEWADDR) -> bytes:
    return nlmsg(msg_type, struct.pack("=BBBBI", socket.AF_INET, 24, 0, 0, index))


# --- the monitor in a namespace ----------------------------------------------------------------


class Watch:
    """A NetworkMonitor on an asyncio loop running on a thread inside ``host``'s namespace.

    Callbacks land in a queue as ``(time.monotonic(), kinds)``.
    """

    def __init__(self, host: Host) -> None:
        self.host = host
        self.calls: queue.Queue[tuple[float, set[str]]] = queue.Queue()
        self.monitor: NetworkMonitor | None = None
        self.loop = asyncio.new_event_loop()
        started: queue.Queue[BaseException | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, args=(started,), name=f"netmon-{host.ns}", daemon=True)
        self.thread.start()
        if (error := started.get(timeout=10)) is not None:
            raise error

    def _run(self, started: queue.Queue) -> None:
        try:
            _enter_netns(self.host.ns)
        except BaseException as e:
            started.put(e)
            return
        started.put(None)
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro_or_fn, timeout: float = 10.0):
        """Await a coroutine, or call a plain function, on the loop thread."""
        if not asyncio.iscoroutine(coro_or_fn):
            fn = coro_or_fn

            async def call():
                return fn()

            coro_or_fn = call()
        return asyncio.run_coroutine_threadsafe(coro_or_fn, self.loop).result(timeout)

    def start(self, **kwargs) -> NetworkMonitor:
        self.monitor = NetworkMonitor(lambda kinds: self.calls.put((time.monotonic(), kinds)), **kwargs)
        self.run(self.monitor.start())
        return self.monitor

    def next_call(self, since: float, timeout: float = SLACK) -> set[str]:
        """The next callback's kinds; it must come within ``timeout`` of ``since``."""
        try:
            at, kinds = self.calls.get(timeout=max(0.0, since + timeout - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no callback within {timeout} s") from None
        assert at - since < timeout
        return kinds

    def collect(self, quiet: float) -> list[set[str]]:
        """Callbacks until none came for ``quiet`` seconds."""
        got = []
        while True:
            try:
                got.append(self.calls.get(timeout=quiet)[1])
            except queue.Empty:
                return got

    def close(self) -> None:
        if self.monitor is not None and self.loop.is_running():
            self.run(self.monitor.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def host(lab: Lab) -> Host:
    """A namespace with one TUN device ``t0``, up (persistent, no carrier: no IPv6 link-local noise)."""
    host = lab.host("mon")
    host.ip("tuntap", "add", "mode", "tun", "name", "t0")
    host.ip("link", "set", "t0", "up")
    return host


@pytest.fixture
def watch(host: Host):
    w = Watch(host)
    try:
        yield w
    finally:
        w.close()


def ifindex(host: Host, name: str) -> int:
    return json.loads(host.ip("-j", "link", "show", "dev", name).stdout)[0]["ifindex"]


def ip_batch(host: Host, lines: list[str]) -> None:
    host.run(["ip", "-batch", "-"], input="\n".join(lines) + "\n")


@pytest.mark.netns
def test_each_change_gives_one_callback_with_its_kinds(host, watch):
    monitor = watch.start()
    steps = [
        # (ip arguments, kinds that must be reported, kinds that may be reported)
        (["addr", "add", "10.9.0.1/24", "dev", "t0"], {"addr"}, {"addr", "route"}),
        (["-6", "addr", "add", "fd00:9::1/64", "dev", "t0", "nodad"], {"addr"}, {"addr", "route"}),
        (["route", "add", "10.8.0.0/24", "dev", "t0"], {"route"}, {"route"}),
        (["-6", "route", "add", "fd00:8::/64", "dev", "t0"], {"route"}, {"route"}),
        (["addr", "del", "10.9.0.1/24", "dev", "t0"], {"addr"}, {"addr", "route"}),
        (["link", "set", "t0", "down"], {"link"}, set(ALL_KINDS)),
        (["link", "set", "t0", "up"], {"link"}, set(ALL_KINDS)),
    ]
    for args, must, may in steps:
        host.ip(*args)
        kinds = watch.next_call(since=time.monotonic())
        later = watch.collect(quiet=0.3)
        assert must <= kinds <= may, (args, kinds)
        assert later == [], (args, kinds, later)  # one command, one burst, one callback
    assert monitor.callbacks == len(steps)
    assert monitor.malformed == monitor.foreign == monitor.overruns == monitor.errors == 0


@pytest.mark.netns
def test_burst_of_twenty_address_changes_gives_one_or_two_callbacks(host, watch):
    monitor = watch.start()
    t0 = time.monotonic()
    ip_batch(host, [f"addr add 10.20.0.{i}/32 dev t0" for i in range(1, 11)]
             + [f"addr del 10.20.0.{i}/32 dev t0" for i in range(1, 11)])
    first = watch.next_call(since=t0)
    calls = [first, *watch.collect(quiet=0.5)]
    assert 1 <= len(calls) <= 2, calls
    assert "addr" in set().union(*calls)
    assert monitor.changes >= 20


@pytest.mark.netns
def test_a_steady_stream_still_gets_callbacks_every_max_delay(host, watch):
    # Changes every 50 ms never leave 150 ms of quiet; max_delay bounds the wait anyway.
    watch.start(debounce=0.15, max_delay=0.4)
    t0 = time.monotonic()
    for i in range(20):
        host.ip("addr", "add", f"10.21.0.{i + 1}/32", "dev", "t0")
        time.sleep(0.05)
    during = []
    while not watch.calls.empty():
        during.append(watch.calls.get_nowait())
    assert len(during) >= 2, f"{len(during)} callbacks in a {time.monotonic() - t0:.2f} s stream"
    assert during[0][0] - t0 < 0.4 + 0.3


@pytest.mark.netns
@pytest.mark.parametrize("how", ["name-created-after-start", "index", "predicate"])
def test_changes_on_an_ignored_interface_give_no_callback(host, watch, how):
    if how == "name-created-after-start":
        monitor = watch.start(ignore_ifnames={"wgdisco0"})
        host.ip("tuntap", "add", "mode", "tun", "name", "wgdisco0")
    else:
        host.ip("tuntap", "add", "mode", "tun", "name", "wgdisco0")
        index = ifindex(host, "wgdisco0")
        ignore = {index} if how == "index" else (lambda i: i == index)
        monitor = watch.start(ignore_ifindexes=ignore)
    # What the daemon does to its TUN coming up, and taking it down again.
    ip_batch(host, [
        "link set wgdisco0 mtu 1420",
        "link set wgdisco0 up",
        "addr add 10.77.0.1/24 dev wgdisco0",
        "addr add fd00:77::1/64 dev wgdisco0 nodad",
        "route add 10.66.0.0/16 dev wgdisco0",
        "route add fd00:66::/48 dev wgdisco0",
        "link set wgdisco0 down",
        "link set wgdisco0 up",
        "addr del 10.77.0.1/24 dev wgdisco0",
        "link del wgdisco0",
    ])
    assert watch.collect(quiet=0.5) == []
    assert monitor.ignored >= 10 and monitor.changes == 0
    # Still listening: a change elsewhere is reported, and nothing of the ignored burst leaked into it.
    host.ip("addr", "add", "10.9.0.1/24", "dev", "t0")
    assert watch.next_call(since=time.monotonic()) <= {"addr", "route"}


def netlink_ports(watch: Watch) -> set[int]:
    """Port ids of the NETLINK_ROUTE sockets in the namespace (read on the namespace's thread)."""

    def read():
        with open("/proc/thread-self/net/netlink") as f:
            rows = [line.split() for line in f.readlines()[1:]]
        return {int(row[2]) for row in rows if row[1] == "0"}

    return watch.run(read)


@pytest.mark.netns
def test_close_stops_callbacks_and_releases_the_socket(host, watch):
    monitor = watch.start()
    port = monitor.port_id
    assert monitor.running and port in netlink_ports(watch)
    host.ip("addr", "add", "10.9.0.1/24", "dev", "t0")
    watch.next_call(since=time.monotonic())
    host.ip("addr", "add", "10.9.1.1/24", "dev", "t0")  # pending when close() comes
    watch.run(monitor.close())
    host.ip("addr", "add", "10.9.2.1/24", "dev", "t0")
    assert watch.collect(quiet=0.5) == []
    assert not monitor.running and monitor.port_id is None
    assert port not in netlink_ports(watch)
    watch.run(monitor.close())  # idempotent
    with pytest.raises(LocalError):
        watch.run(monitor.start())


@pytest.mark.netns
def test_garbage_is_counted_and_dropped(host, watch):
    monitor = watch.start()
    for garbage in (b"\x01\x02\x03", struct.pack("=IHHII", 400, RTM_NEWADDR, 0, 0, 0), nlmsg(RTM_NEWADDR, b"")):
        watch.run(lambda g=garbage: monitor.datagram_received(g, 0))

    def send_from_userspace():  # root may send to a netlink port; the monitor takes only the kernel's word
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as s:
            s.sendto(addr_msg(1), (monitor.port_id, 0))
            s.sendto(b"junk", (monitor.port_id, 0))

    watch.run(send_from_userspace)
    assert watch.collect(quiet=0.4) == []
    assert monitor.malformed == 3
    assert monitor.foreign == 2
    host.ip("addr", "add", "10.9.0.1/24", "dev", "t0")
    assert "addr" in watch.next_call(since=time.monotonic())


@pytest.mark.netns
def test_receive_buffer_overrun_reports_every_kind(host, watch):
    monitor = watch.start(rcvbuf=4096)
    blocked = threading.Event()

    def block_loop():  # a busy loop: notifications pile up in the socket until the kernel drops some
        blocked.set()
        time.sleep(0.5)

    watch.loop.call_soon_threadsafe(block_loop)
    assert blocked.wait(5)
    t0 = time.monotonic()
    ip_batch(host, [f"addr add 10.30.0.{i}/32 dev t0" for i in range(1, 101)])
    assert watch.next_call(since=t0, timeout=2.0) == set(ALL_KINDS)
    assert monitor.overruns >= 1
