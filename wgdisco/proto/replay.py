"""Anti-replay sliding window (whitepaper §5.4.6, RFC 6479), as wireguard-go replay/replay.go.

Theory of operation. wireguard-go keeps a ring of 128 blocks of 64 bits: the block holding the
newest counter (``last``) and the 127 before it, so any counter up to WINDOW_SIZE = 127 * 64 = 8128
behind ``last`` is remembered exactly. Moving forward into a new block clears the blocks skipped
over (RFC 6479 §3: no shifting of the bitmap). Reset is lazy: only block 0 is cleared, since every
forward move clears the blocks it enters.

We keep exactly that geometry, and so exactly the same accept/reject answers, but store one *byte*
per counter in a bytearray(8192) rather than one bit: reading and writing a byte is a single
bytearray subscript in CPython, whereas a bit needs shift/or/compare on (often multi-digit) ints.

Measured, CPython 3.11, ns per call including the call (200k counters, best of 7):
  in order       reordered by 8   50% loss
    ~125            ~140            ~155      bytearray(8192), byte per counter, blocks of 64 (this)
    ~200            ~210            ~210      bytearray(1024), bit per counter, blocks of 8
    ~320-530        ~250            ~400      list of 128 64-bit ints (literal replay.go port)
    ~410-450        ~300            ~440      one big-int bitmap shifted on every advance
The cost is 8 KiB per filter (one per keypair) instead of 1 KiB.
"""

from __future__ import annotations

__all__ = ["ReplayFilter", "WINDOW_SIZE"]

_BLOCK_LOG = 6  # 64 counters per block, as replay.go blockBitLog
_BLOCK = 1 << _BLOCK_LOG
_RING_BLOCKS = 128  # replay.go ringBlocks
_RING = _RING_BLOCKS * _BLOCK  # 8192 counters held
_RING_MASK = _RING - 1
_BLOCK_MASK = _RING_BLOCKS - 1

WINDOW_SIZE = (_RING_BLOCKS - 1) * _BLOCK  # 8128, replay.go windowSize

_ZERO = memoryview(bytes(_RING))  # slices of it clear the ring without allocating bytes


class ReplayFilter:
    """Rejects replayed or too-old counters; the empty filter accepts counter 0 first.

    Not thread-safe (neither is replay.go's Filter).
    """

    __slots__ = ("_last", "_ring")

    def __init__(self) -> None:
        self._last = 0
        self._ring = bytearray(_RING)

    def reset(self) -> None:
        """Back to the empty state (lazily, like replay.go Reset)."""
        self._last = 0
        self._ring[0:_BLOCK] = _ZERO[0:_BLOCK]

    def state(self) -> tuple[int, bytes]:
        """``(last counter, ring)``: the whole window, for a compiled data path to take over
        (wgdisco/io/_fastpath.c keeps the same geometry, a byte per counter)."""
        return self._last, bytes(self._ring)

    def load(self, last: int, ring: bytes) -> None:
        """Take back a window given out by ``state`` (and advanced elsewhere)."""
        if len(ring) != _RING:
            raise ValueError(f"a replay ring is {_RING} bytes, got {len(ring)}")
        self._last = last
        self._ring[:] = ring

    def validate_counter(self, counter: int, limit: int) -> bool:
        """True if ``counter`` is fresh (and mark it seen); False if replayed, too old or >= limit.

        ``limit`` is REJECT_AFTER_MESSAGES (whitepaper §6.4). ``counter`` is the 64-bit nonce of a
        transport message that already passed AEAD: call this only after decryption succeeds.
        """
        if counter >= limit:
            return False
        last = self._last
        if counter > last:
            # Move the window forward (RFC 6479 §3): clear the blocks entered, keep the rest.
            ring = self._ring
            i = counter & _RING_MASK
            if counter - last == 1:
                if not i & (_BLOCK - 1):  # first counter of a new block
                    ring[i : i + _BLOCK] = _ZERO[0:_BLOCK]
            else:
                blk = counter >> _BLOCK_LOG
                cur = last >> _BLOCK_LOG
                if blk != cur:
                    if blk - cur >= _RING_BLOCKS:
                        ring[:] = _ZERO
                    else:
                        a = ((cur + 1) & _BLOCK_MASK) << _BLOCK_LOG
                        b = ((blk & _BLOCK_MASK) + 1) << _BLOCK_LOG
                        if a < b:
                            ring[a:b] = _ZERO[a:b]
                        else:  # the cleared run wraps around the ring
                            ring[a:] = _ZERO[a:]
                            ring[:b] = _ZERO[:b]
            ring[i] = 1
            self._last = counter
            return True
        if last - counter > WINDOW_SIZE:  # behind the window
            return False
        ring = self._ring
        i = counter & _RING_MASK
        if ring[i]:
            return False
        ring[i] = 1
        return True
