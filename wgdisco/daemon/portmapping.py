"""The gateway port mapping of a running tunnel: the core (proto/portmap.py) wired to its
shells (io/portmap.py: a UDP socket for PCP/NAT-PMP, miniupnpc in one worker thread) and to
the node core, which publishes the mapping as a candidate (``Node.set_mapping``).

Runs on the daemon's event loop: the socket is watched with ``add_reader``, the core's timer
is one ``call_later``; UPnP calls go to a single worker thread, so they never overlap and a
delete always follows the add it undoes. ``close`` deletes the mapping and waits for the
answer (at most CLOSE_WAIT seconds).
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
from typing import Any, Callable

from wgdisco.daemon import clock
from wgdisco.io import netlink
from wgdisco.io import portmap as shell
from wgdisco.io.udp import errno_name, format_hostport
from wgdisco.proto import pcp
from wgdisco.proto.portmap import MappingChanged, PortMapFailed, PortMapper, UpnpWanted, view

log = logging.getLogger("wgdisco")

CLOSE_WAIT = 2.0  # seconds at shutdown for the delete's answer (PCP/NAT-PMP 0.75 s; UPnP SOAP)
NAMES = {"pcp": "PCP", "natpmp": "NAT-PMP", "upnp": "UPnP IGD"}


class PortMapping:
    """One tunnel's port mapping; ``set_mapping(external or None)`` tells the node."""

    def __init__(self, mode: str, *, internal_port: int, set_mapping: Callable[[tuple[str, int] | None], None]) -> None:
        self.core = PortMapper(mode, rng=os.urandom, internal_port=internal_port)
        self._set_mapping = set_mapping
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: Any = None
        self._timer: asyncio.TimerHandle | None = None
        self._upnp = shell.UpnpClient()
        self._worker = _Worker()
        self._pending: set[asyncio.Future[Any]] = set()
        self.gateway: tuple[str, str] | None = None  # (gateway, our source address)
        self.send_errors: dict[str, int] = {}

    @property
    def mode(self) -> str:
        return self.core.mode

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.core.mode == "off":
            return
        self.gateway = await self._find_gateway()
        self._open()
        self.core.start(self._gw_addr(), self._source(), clock.now())
        self._pump()

    async def network_changed(self) -> None:
        if self._loop is None or self.core.mode == "off":
            return
        gateway = await self._find_gateway()
        if gateway != self.gateway:
            self.gateway = gateway
            self._open()
            self._pending.add(self._worker.submit(self._loop, self._upnp.forget))
        self.core.network_changed(self._gw_addr(), self._source(), clock.now())
        self._pump()

    def port_changed(self, port: int) -> None:
        """The tunnel listens on ``port`` now (``wg set listen-port``)."""
        if self._loop is None:
            return
        self.core.set_internal_port(port, clock.now())
        self._pump()

    async def close(self) -> None:
        """Delete the mapping (clean shutdown) and release the socket and the worker."""
        if self._loop is None:
            return
        self.core.stop(clock.now())
        self._pump()
        deadline = clock.now() + CLOSE_WAIT
        while clock.now() < deadline and (not self.core.stopped or self._pending):
            await asyncio.sleep(0.02)
        if self._timer is not None:
            self._timer.cancel()
        self._close_socket()
        self._worker.stop()
        self._loop = None

    # --- I/O -----------------------------------------------------------------------

    async def _find_gateway(self) -> tuple[str, str] | None:
        try:
            return await asyncio.to_thread(netlink.default_gateway)
        except Exception as e:  # netlink trouble: no port mapping, the tunnel runs on
            log.warning("port mapping: cannot read the default route: %s", e)
            return None

    def _gw_addr(self) -> tuple[str, int] | None:
        return None if self.gateway is None or self._sock is None else (self.gateway[0], pcp.PORT)

    def _source(self) -> str | None:
        return None if self.gateway is None else self.gateway[1]

    def _open(self) -> None:
        self._close_socket()
        if self.gateway is None or self._loop is None:
            return
        try:
            self._sock = shell.open_socket(self.gateway[1])
        except OSError as e:
            log.warning("port mapping: cannot open a socket on %s: %s", self.gateway[1], e)
            return
        self._loop.add_reader(self._sock.fileno(), self._readable)

    def _close_socket(self) -> None:
        if self._sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def _readable(self) -> None:
        for _ in range(64):  # a flood cannot hold the loop
            try:
                data, addr = self._sock.recvfrom(1500)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:  # ICMP port unreachable from a gateway without a server, etc.
                self.send_errors[errno_name(e)] = self.send_errors.get(errno_name(e), 0) + 1
                break
            self.core.receive(data, addr[:2], clock.now())
        self._pump()

    def _pump(self) -> None:
        loop = self._loop
        if loop is None:
            return
        for data, addr in self.core.datagrams_to_send():
            if self._sock is None:
                break
            try:
                self._sock.sendto(data, addr)
            except OSError as e:
                self.send_errors[errno_name(e)] = self.send_errors.get(errno_name(e), 0) + 1
        for event in self.core.pop_events():
            self._on_event(event)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        when = self.core.get_timer()
        if when is not None:
            self._timer = loop.call_later(max(0.0, when - clock.now()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.core.handle_timer(clock.now())
        self._pump()

    def _on_event(self, event: Any) -> None:
        """One of the port-mapping core's events, through its table (a test keeps it exhaustive)."""
        self.handlers[type(event)](event)

    @property
    def handlers(self) -> dict[type, Callable[[Any], None]]:
        """{event type: handler}, one per member of proto/portmap.Event."""
        return {MappingChanged: self._on_mapping, PortMapFailed: self._on_failed, UpnpWanted: self._upnp_call}

    def _on_mapping(self, event: MappingChanged) -> None:
        m = event.mapping
        if m is None:
            log.info("port mapping: gone (%s)", event.reason)
            self._set_mapping(None)
            return
        lease = "permanent" if m.lifetime == 0 else f"for {m.lifetime} s"
        log.info("port mapping: %s maps %s to our port %d (%s)", NAMES[m.protocol],
                 format_hostport(*m.external), m.internal_port, lease)
        self._set_mapping(m.external)

    def _on_failed(self, event: PortMapFailed) -> None:
        log.info("port mapping: %s: %s", NAMES[event.protocol], event.reason.replace("-", " "))

    def _upnp_call(self, want: UpnpWanted) -> None:
        assert self._loop is not None
        if want.action == "delete":
            future = self._worker.submit(self._loop, self._upnp.delete, want.external_port)
        else:
            future = self._worker.submit(self._loop, self._upnp.add, want.internal_port, want.external_port,
                                         want.lifetime)
        self._pending.add(future)

        def done(f: asyncio.Future[Any]) -> None:
            self._pending.discard(f)
            if f.cancelled() or self._loop is None:
                return
            if f.exception() is not None:
                log.warning("port mapping: UPnP IGD %s failed: %s", want.action, f.exception())
                if want.action == "add":
                    self.core.upnp_done(want.token, clock.now(), found=False, error="internal error")
                    self._pump()
                return
            if want.action == "delete":
                error = f.result()
                if error:
                    log.info("port mapping: UPnP IGD delete: %s", error)
                return
            answer: shell.UpnpAnswer = f.result()
            self.core.upnp_done(want.token, clock.now(), found=answer.found, external=answer.external,
                                lifetime=answer.lifetime, error=answer.error)
            self._pump()

        future.add_done_callback(done)


    # --- status --------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """``port_mapping`` in ``wgdisco status --json`` (docs/status.schema.json)."""
        v = view(self.core, clock.now())
        return {
            "mode": v.mode,
            "state": v.state,
            "protocol": v.protocol,
            "external": None if v.external is None else format_hostport(*v.external),
            "expires_in": None if v.expires_in is None else int(v.expires_in),
            "gateway": None if self.gateway is None else self.gateway[0],
            "answered": list(v.answered),
            "last_failure": v.last_failure,
            "requests": sum(n for k, n in v.counters.items() if k.endswith("-requests")),
            # answers dropped, error results, send errors (the names in docs/troubleshooting.md)
            "counters": {k: n for k, n in {**v.counters, **self.send_errors}.items() if not k.endswith("-requests")},
        }


class _Worker:
    """One daemon thread running the blocking miniupnpc calls in order. Not a ThreadPoolExecutor:
    the interpreter joins those at exit, and a SOAP call to a dead router must not hold shutdown."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def submit(self, loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = loop.create_future()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="wgdisco-upnp", daemon=True)
            self._thread.start()
        self._jobs.put((loop, future, fn, args))
        return future

    def stop(self) -> None:
        self._jobs.put(None)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, future, fn, args = job
            try:
                result, error = fn(*args), None
            except Exception as e:  # the shell catches miniupnpc's own; anything else ends this call only
                result, error = None, e
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:  # the loop is closed: nobody waits any more
                return


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
