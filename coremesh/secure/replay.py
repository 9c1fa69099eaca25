"""Sliding-window anti-replay for 64-bit packet counters, in the style of RFC 6479.

Datagrams arrive lost, late and reordered, so a receiver cannot insist on the next counter; it
accepts any counter it has not seen that is newer than ``highest - size``. The seen-set is a ring
of bits in a ``bytearray`` of 8-bit blocks with one spare block, as RFC 6479 does with words: moving
the window forward only clears the blocks it enters (usually none or one), so each packet costs O(1)
whatever the jump, and the exact window edge is one integer comparison.

Use: ``check`` before decrypting (cheap rejection), ``update`` only after the packet authenticated
(a forged packet must not move the window), or ``check_and_update`` when both happen at once.
"""

from __future__ import annotations

from typing import Final

from ..errors import LocalProtocolError

__all__ = ["COUNTER_LIMIT", "ReplayWindow"]

# Noise reserves nonce 2^64-1, so no valid packet carries it; counters must be below this.
COUNTER_LIMIT: Final = (1 << 64) - 1


class ReplayWindow:
    """Counters seen in the last ``size`` positions below the highest one accepted."""

    __slots__ = ("_bits", "_highest", "_nblocks", "_size", "_zeros")

    def __init__(self, size: int = 8192) -> None:
        if size < 1:
            raise ValueError("replay window size must be at least 1")
        self._size = size
        # Counters within the window span at most ceil(size/8) + 1 blocks, so that many blocks
        # suffice; the spare one is what lets whole blocks be cleared without losing live bits.
        self._nblocks = -(-size // 8) + 1
        self._bits = bytearray(self._nblocks)
        self._zeros = memoryview(bytes(self._nblocks))
        self._highest = -1  # nothing seen yet

    @property
    def size(self) -> int:
        return self._size

    @property
    def highest(self) -> int | None:
        """The highest counter accepted so far, or None before the first one."""
        return None if self._highest < 0 else self._highest

    def check(self, counter: int) -> bool:
        """Would ``counter`` be accepted: in range, not older than the window, not seen?"""
        highest = self._highest
        if counter > highest:
            return counter < COUNTER_LIMIT
        if highest - counter >= self._size or counter < 0:
            return False
        return not (self._bits[(counter >> 3) % self._nblocks] >> (counter & 7)) & 1

    def update(self, counter: int) -> None:
        """Mark ``counter`` seen, sliding the window if it is the newest. Call after authentication.

        A counter that is already seen or older than the window is left alone (the window only ever
        moves forward); one outside 0..2^64-2 is a caller bug and raises LocalProtocolError.
        """
        highest = self._highest
        bits = self._bits
        nblocks = self._nblocks
        block = counter >> 3
        if counter > highest:
            if counter >= COUNTER_LIMIT:
                raise LocalProtocolError("counter out of range (2^64-1 is reserved)")
            # Clear the blocks the window enters: (old block, new block], at most all of them.
            # Before the first counter the old block is -1, which is harmless: all bits are zero.
            entered = block - (highest >> 3)
            if entered == 1:
                bits[block % nblocks] = 0
            elif entered >= nblocks:
                bits[:] = self._zeros
            elif entered > 1:
                start = (block - entered + 1) % nblocks
                end = start + entered
                if end <= nblocks:
                    bits[start:end] = self._zeros[:entered]
                else:
                    bits[start:] = self._zeros[: nblocks - start]
                    bits[: end - nblocks] = self._zeros[: end - nblocks]
            self._highest = counter
        elif counter < 0:
            raise LocalProtocolError("counter out of range (negative)")
        elif highest - counter >= self._size:
            return  # older than the window: nothing to record
        bits[block % nblocks] |= 1 << (counter & 7)

    def check_and_update(self, counter: int) -> bool:
        """Accept and record ``counter`` in one step; False (and no change) if it is a replay."""
        if not self.check(counter):
            return False
        self.update(counter)
        return True
