"""The sending half of the ordered byte stream.

Messages are framed as ``varint length + bytes`` and appended to one byte stream. The buffer keeps
every byte from the lowest unacknowledged offset on, hands out chunks to send (lost ranges first,
then new bytes up to the peer's flow-control limit) and forgets bytes once they are acknowledged.
Lost ranges are re-sent in new packets (RFC 9000 §13.3).
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque

from coremesh.reliability.varint import VARINT_FORMS

__all__ = ["SendBuffer"]

_SMALL = 4096  # messages below this share blocks
_OPEN_BLOCK = 1 << 16  # an open block takes small messages until it is this large
_COMPACT_BLOCKS = 256


def _start(entry: list[int]) -> int:
    return entry[0]


class SendBuffer:
    """Unsent and unacknowledged bytes of the outgoing stream.

    The bytes live in a list of blocks that are never resized once closed: a large message is one
    block (prefix + data), small messages are appended to an open block of up to ``_OPEN_BLOCK``
    bytes. Whole blocks are dropped once acknowledged, so nothing is ever moved.
    """

    __slots__ = (
        "_acked_ooo",
        "_blocks",
        "_head",
        "_lost",
        "_open",
        "_starts",
        "acked",
        "next_offset",
        "write_offset",
    )

    def __init__(self) -> None:
        self._blocks: list[bytes | bytearray] = []
        self._starts: list[int] = []  # stream offset of each block
        self._head = 0  # index of the first block still needed
        self._open: bytearray | None = None  # last block, if it still takes small messages
        self.acked = 0  # every byte below this offset is acknowledged
        self._acked_ooo: list[list[int]] = []  # ascending disjoint [start, end) above ``acked``
        self.next_offset = 0  # first byte never sent
        self.write_offset = 0  # end of the queued bytes
        self._lost: deque[tuple[int, int]] = deque()  # [start, end) ranges to send again

    @property
    def buffered(self) -> int:
        """Bytes queued and not yet acknowledged."""
        return self.write_offset - self.acked

    @property
    def has_unacked(self) -> bool:
        return self.write_offset > self.acked

    def write_message(self, data: bytes) -> None:
        """Append one framed message."""
        n = len(data)
        tag, size = VARINT_FORMS[n.bit_length()]  # the shortest varint, without a call
        prefix = (n | tag).to_bytes(size, "big")
        block = self._open
        if n < _SMALL:
            if block is None or len(block) >= _OPEN_BLOCK:
                block = self._open = bytearray()
                self._starts.append(self.write_offset)
                self._blocks.append(block)
            block += prefix
            block += data
        else:
            self._open = None
            self._starts.append(self.write_offset)
            self._blocks.append(prefix + bytes(data))
        self.write_offset += len(prefix) + n

    @property
    def has_lost(self) -> bool:
        """Whether lost ranges wait to be sent again."""
        return bool(self._lost)

    def has_pending(self, flow_limit: int) -> bool:
        """Whether ``take`` would return data under ``flow_limit``."""
        return bool(self._lost) or self.next_offset < min(self.write_offset, flow_limit)

    def take(self, max_len: int, flow_limit: int) -> tuple[int, bytes | bytearray] | None:
        """The next chunk to send, at most ``max_len`` bytes: a lost range first, else new bytes below
        ``flow_limit``. Returns ``(offset, data)`` or None."""
        lost = self._lost
        while lost:
            start, end = lost.popleft()
            start = self._trim(start)
            if start >= end:
                continue
            if end - start > max_len:
                lost.appendleft((start + max_len, end))
                end = start + max_len
            return start, self._read(start, end)
        start = self.next_offset
        end = self.write_offset
        if flow_limit < end:
            end = flow_limit
        if start >= end:
            return None
        if end - start > max_len:
            end = start + max_len
        self.next_offset = end
        return start, self._read(start, end)

    def _read(self, start: int, end: int) -> bytes | bytearray:
        starts = self._starts
        blocks = self._blocks
        i = bisect_right(starts, start, self._head) - 1
        block = blocks[i]
        offset = start - starts[i]
        if offset + (end - start) <= len(block):
            return block[offset : offset + end - start]
        pieces = [block[offset:]]
        pos = starts[i] + len(block)
        while pos < end:
            i += 1
            block = blocks[i]
            if pos + len(block) > end:
                pieces.append(block[: end - pos])
            else:
                pieces.append(block)
            pos += len(block)
        return b"".join(pieces)

    def _trim(self, start: int) -> int:
        """Move ``start`` past bytes already acknowledged."""
        if start < self.acked:
            return self.acked
        ooo = self._acked_ooo
        if ooo:
            i = bisect_right(ooo, start, key=_start)
            if i > 0 and start < ooo[i - 1][1]:
                return ooo[i - 1][1]
        return start

    def on_acked(self, start: int, end: int) -> None:
        """Bytes ``[start, end)`` reached the peer."""
        acked = self.acked
        if end <= acked:
            return
        ooo = self._acked_ooo
        if start <= acked:
            acked = end
            while ooo and ooo[0][0] <= acked:
                if ooo[0][1] > acked:
                    acked = ooo[0][1]
                del ooo[0]
            self.acked = acked
            self._release(acked)
            return
        # Out of order: merge into the ascending disjoint list.
        i = bisect_right(ooo, start, key=_start)
        if i > 0 and ooo[i - 1][1] >= start:
            i -= 1
            entry = ooo[i]
            if end > entry[1]:
                entry[1] = end
        else:
            entry = [start, end]
            ooo.insert(i, entry)
        j = i + 1
        while j < len(ooo) and ooo[j][0] <= entry[1]:
            if ooo[j][1] > entry[1]:
                entry[1] = ooo[j][1]
            del ooo[j]

    def _release(self, acked: int) -> None:
        """Drop the blocks wholly below ``acked``."""
        starts = self._starts
        blocks = self._blocks
        head = self._head
        last = len(blocks) - 1
        while head < last and starts[head + 1] <= acked:
            blocks[head] = b""
            head += 1
        if head == last and starts[head] + len(blocks[head]) <= acked and blocks[head] is not self._open:
            blocks[head] = b""
            head += 1
        if head > _COMPACT_BLOCKS and head * 2 > len(blocks):
            del blocks[:head]
            del starts[:head]
            head = 0
        self._head = head

    def on_lost(self, start: int, end: int) -> None:
        """Bytes ``[start, end)`` were in a lost packet: send them again."""
        if end > self.acked:
            self._lost.append((start, end))

    def discard(self) -> None:
        """Drop everything unsent or unacknowledged (the connection closes)."""
        self._blocks.clear()
        self._starts.clear()
        self._head = 0
        self._open = None
        self._lost.clear()
        self._acked_ooo.clear()
        self.acked = self.next_offset = self.write_offset
