"""The receiving half of the ordered byte stream: reassembly by offset and message deframing.

STREAM chunks may arrive in any order, more than once, and cut differently from the first copy
(retransmissions go in new packets, RFC 9000 §13.3). Bytes above the first missing offset are kept in
a sorted, non-overlapping store, so its size never exceeds the flow-control window that admitted
them (the caller checks every chunk against its limit first). Contiguous bytes are split into
``varint length + bytes`` messages; a length above ``max_message_size`` is a protocol violation.
"""

from __future__ import annotations

from bisect import bisect_right

from coremesh.errors import RemoteProtocolError
from coremesh.reliability.codes import ErrorCode

__all__ = ["ReceiveBuffer"]


class ReceiveBuffer:
    """Reassembles the incoming stream and yields whole messages with their end offsets."""

    __slots__ = (
        "_body",
        "_got",
        "_hdr",
        "_keys",
        "_max_message_size",
        "_need",
        "_ooo",
        "contig",
        "ooo_bytes",
    )

    def __init__(self, max_message_size: int) -> None:
        self._max_message_size = max_message_size
        self.contig = 0  # every byte below this offset was received
        self._ooo: dict[int, bytes] = {}  # start offset -> bytes, all above ``contig``
        self._keys: list[int] = []  # sorted keys of ``_ooo``
        self.ooo_bytes = 0
        self._hdr = bytearray()  # bytes of a length prefix split across chunks
        self._need = -1  # bytes still missing from the current message body; -1: reading a prefix
        self._body: list[bytes] = []
        self._got = 0

    @property
    def chunks(self) -> int:
        """Number of out-of-order chunks held."""
        return len(self._keys)

    @property
    def in_progress(self) -> bool:
        """Whether a partial message (or length prefix) is buffered."""
        return self._need >= 0 or bool(self._hdr)

    def insert(self, offset: int, data: bytes, out: list[tuple[bytes, int]]) -> None:
        """Take stream bytes at ``offset``; append each completed ``(message, end_offset)`` to ``out``.

        Raises ``RemoteProtocolError`` (``MESSAGE_TOO_LARGE``) for an oversized length prefix.
        """
        contig = self.contig
        end = offset + len(data)
        if end <= contig:
            return
        if offset > contig:
            self._store(offset, data)
            return
        if offset < contig:
            data = data[contig - offset :]
        self.contig = end
        self._feed(data, contig, out)
        if self._keys:
            self._drain(out)

    def _store(self, start: int, data: bytes) -> None:
        keys = self._keys
        ooo = self._ooo
        end = start + len(data)
        pos = start
        i = bisect_right(keys, start)
        if i > 0:
            k = keys[i - 1]
            e = k + len(ooo[k])
            if e > pos:
                pos = e
        while pos < end:
            if i < len(keys):
                k = keys[i]
                if k <= pos:
                    e = k + len(ooo[k])
                    if e > pos:
                        pos = e
                    i += 1
                    continue
                piece_end = k if k < end else end
            else:
                piece_end = end
            piece = data[pos - start : piece_end - start]
            keys.insert(i, pos)
            ooo[pos] = piece
            self.ooo_bytes += len(piece)
            i += 1
            pos = piece_end

    def _drain(self, out: list[tuple[bytes, int]]) -> None:
        keys = self._keys
        ooo = self._ooo
        while keys and keys[0] <= self.contig:
            k = keys.pop(0)
            chunk = ooo.pop(k)
            self.ooo_bytes -= len(chunk)
            e = k + len(chunk)
            contig = self.contig
            if e > contig:
                self.contig = e
                self._feed(chunk[contig - k :], contig, out)

    def _too_large(self, length: int) -> RemoteProtocolError:
        return RemoteProtocolError(
            f"peer announced a message of {length} bytes (at most {self._max_message_size})",
            ErrorCode.MESSAGE_TOO_LARGE,
        )

    def _feed(self, data: bytes, offset: int, out: list[tuple[bytes, int]]) -> None:
        """Deframe contiguous ``data`` that starts at stream ``offset``."""
        pos = 0
        n = len(data)
        limit = self._max_message_size
        while pos < n:
            need = self._need
            if need >= 0:
                # Inside a message body.
                take = n - pos
                if take >= need:
                    body = self._body
                    body.append(data[pos : pos + need])
                    pos += need
                    out.append((b"".join(body), offset + pos))
                    body.clear()
                    self._need = -1
                else:
                    self._body.append(data[pos:])
                    self._need = need - take
                    return
                continue
            hdr = self._hdr
            if hdr:
                hdr.append(data[pos])
                pos += 1
                size = 1 << (hdr[0] >> 6)
                if len(hdr) < size:
                    continue
                length = int.from_bytes(hdr, "big") & ((1 << (8 * size - 2)) - 1)
                hdr.clear()
            else:
                first = data[pos]
                size = 1 << (first >> 6)
                if pos + size > n:
                    hdr += data[pos:]
                    return
                if size == 1:
                    length = first
                else:
                    length = int.from_bytes(data[pos : pos + size], "big") & ((1 << (8 * size - 2)) - 1)
                pos += size
                if length > limit:
                    raise self._too_large(length)
                if pos + length <= n:
                    # Fast path: the whole message is in this chunk.
                    stop = pos + length
                    out.append((data[pos:stop], offset + stop))
                    pos = stop
                    continue
            if length > limit:
                raise self._too_large(length)
            self._need = length
            if length == 0:
                out.append((b"", offset + pos))
                self._need = -1
