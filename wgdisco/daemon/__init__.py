"""The daemon: wires the pure cores (wgdisco.proto) to the shells (wgdisco.io).

Two threads share the Device, under one lock:

- the data plane (``DataPlane``, a plain thread): one ``epoll`` over the TUN fd,
  the UDP socket and a wake-up pipe; it drains each fd until EAGAIN, runs the
  device's timers (the epoll timeout is the device's next deadline) and sends
  what the device queued. A bare epoll loop costs a few microseconds a wakeup,
  where asyncio's costs tens; docs/performance.md has the figures.
- the control plane (asyncio): the UAPI socket (``wg show``/``wg set``),
  signals, and the discovery work to come. It takes the lock to read or change
  the device, then wakes the data plane so a new deadline is seen at once.

Clocks: ``now`` is ``clock.now()`` (CLOCK_BOOTTIME, which counts a suspend, as the kernel
module's clock; see daemon/clock.py) in both threads and in the compiled data path; asyncio's
own clock (monotonic) only times I/O. Wall time for TAI64N and for ``latest handshake`` is
``now + wall_offset``.

Modules: ``tunnel`` (lifecycle: start, SIGHUP reload, network changes, teardown,
hooks, rebind), ``routing`` (AllowedIPs routes, wg-quick's policy routing and nft),
``dataplane`` (the epoll thread and the per-packet code), ``surface`` (status,
metrics, UAPI, log lines, drop counts). Sending goes through ``io/udp.Sender``.
"""

from wgdisco.daemon.tunnel import Tunnel, run_config

__all__ = ["Tunnel", "run_config"]
