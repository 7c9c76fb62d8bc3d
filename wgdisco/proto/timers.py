"""WireGuard's protocol constants (whitepaper §6.1) as one value object.

The defaults are the spec's. Tests shorten them by passing a different
``Timing`` to the Device constructor; nothing patches globals.
"""

from __future__ import annotations

from dataclasses import dataclass

# whitepaper §6.1 (wireguard-go device/constants.go)
REKEY_AFTER_MESSAGES = 1 << 60
REJECT_AFTER_MESSAGES = (1 << 64) - (1 << 13) - 1
REKEY_AFTER_TIME = 120.0
REJECT_AFTER_TIME = 180.0
REKEY_ATTEMPT_TIME = 90.0
REKEY_TIMEOUT = 5.0
KEEPALIVE_TIMEOUT = 10.0
REKEY_TIMEOUT_JITTER_MAX = 0.334  # wireguard-go RekeyTimeoutJitterMaxMs
UNDER_LOAD_AFTER_TIME = 1.0  # wireguard-go UnderLoadAfterTime
# A peer is *live* while an authenticated packet came within Keepalive-Timeout + Rekey-Timeout
# (15 s): a working session answers within that (whitepaper §6.5). Records never move a live peer.
LIVE_TIME = KEEPALIVE_TIMEOUT + REKEY_TIMEOUT
QUEUE_STAGED_SIZE = 128  # packets waiting for a handshake, per peer


@dataclass(frozen=True)
class Timing:
    rekey_after_messages: int = REKEY_AFTER_MESSAGES
    reject_after_messages: int = REJECT_AFTER_MESSAGES
    rekey_after_time: float = REKEY_AFTER_TIME
    reject_after_time: float = REJECT_AFTER_TIME
    rekey_attempt_time: float = REKEY_ATTEMPT_TIME
    rekey_timeout: float = REKEY_TIMEOUT
    keepalive_timeout: float = KEEPALIVE_TIMEOUT
    rekey_timeout_jitter_max: float = REKEY_TIMEOUT_JITTER_MAX

    @property
    def max_timer_handshakes(self) -> int:
        """Retransmissions before giving up (whitepaper §6.4: 90 s / 5 s = 18)."""
        return int(self.rekey_attempt_time / self.rekey_timeout)
