"""The daemon's one clock: ``now()``, the ``now`` every core is driven with.

It reads ``CLOCK_BOOTTIME``, as the kernel module does (its timers, keypair ages and handshake
times are ``ktime_get_coarse_boottime_ns``): a clock that keeps counting while the machine is
suspended. ``CLOCK_MONOTONIC`` (``time.monotonic``, asyncio's clock, and what Go's runtime,
hence wireguard-go, reads on Linux) stops during suspend, so after a resume every protocol age
would leave the sleep out: a keypair older than REJECT_AFTER_TIME (whitepaper §6.1) in real time
would still be used, and the peer, whose clock went on, drops what it carries
(``expired-keypair``) until a keepalive timeout forces a new handshake; a stale endpoint, probe
or lookup would wait out its whole schedule. With boottime the first wake-up after a resume
sees the jump: keys older than 3 × REJECT_AFTER_TIME are zeroed, the next packet starts a
handshake, and each timer that came due fires once (never once per interval missed).

Everything that is compared with a core's deadline reads this function: the data plane's loop,
the UAPI and control surface, lifecycle, port mapping, and the compiled data path
(``io/_fastpath.c`` reads ``CLOCK_BOOTTIME`` too: a keypair's ``expires`` is in this clock).
Wall time (TAI64N, ``latest handshake``) is ``now() + wall_offset``, which a suspend leaves
right since both clocks go on. Plain I/O timeouts (a DNS reply, a netlink debounce) keep
asyncio's monotonic clock: sleeping through one is no protocol event.
"""

from __future__ import annotations

import time

CLOCK = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)  # Linux has it since 2.6.39


def now() -> float:
    """Seconds on the protocol clock (CLOCK_BOOTTIME)."""
    return time.clock_gettime(CLOCK)
