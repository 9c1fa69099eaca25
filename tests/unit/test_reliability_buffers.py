"""The send and receive halves of the byte stream, and the path MTU search, in isolation."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coremesh.errors import RemoteProtocolError
from coremesh.reliability.codes import ErrorCode
from coremesh.reliability.pmtu import GRANULARITY, MAX_PROBES, RAISE_TIMER, PmtuSearch, PmtuState
from coremesh.reliability.recvbuf import ReceiveBuffer
from coremesh.reliability.sendbuf import SendBuffer
from coremesh.reliability.varint import encode_varint


def framed(messages: list[bytes]) -> bytes:
    return b"".join(encode_varint(len(m)) + m for m in messages)


# ------------------------------------------------------------------------------------ receive buffer


def deliver(buf: ReceiveBuffer, chunks: list[tuple[int, bytes]]) -> list[tuple[bytes, int]]:
    out: list[tuple[bytes, int]] = []
    for offset, data in chunks:
        buf.insert(offset, data, out)
    return out


MESSAGES = [b"", b"a", b"x" * 63, b"y" * 64, b"z" * 20000, b"", b"tail"]


def test_whole_stream_at_once() -> None:
    stream = framed(MESSAGES)
    out = deliver(ReceiveBuffer(1 << 20), [(0, stream)])
    assert [m for m, _ in out] == MESSAGES
    assert out[-1][1] == len(stream)


def test_byte_by_byte() -> None:
    stream = framed(MESSAGES)
    buf = ReceiveBuffer(1 << 20)
    out = deliver(buf, [(i, stream[i : i + 1]) for i in range(len(stream))])
    assert [m for m, _ in out] == MESSAGES
    assert buf.contig == len(stream) and not buf.in_progress


def test_end_offsets() -> None:
    out = deliver(ReceiveBuffer(100), [(0, framed([b"ab", b"", b"cde"]))])
    assert out == [(b"ab", 3), (b"", 4), (b"cde", 8)]


def test_non_minimal_length_prefix() -> None:
    stream = b"\xc0\x00\x00\x00\x00\x00\x00\x03abc" + b"\x40\x01z"
    for cut in range(len(stream)):
        out = deliver(ReceiveBuffer(100), [(0, stream[:cut]), (cut, stream[cut:])])
        assert [m for m, _ in out] == [b"abc", b"z"]


@given(st.data())
def test_any_order_any_cuts_any_duplicates(data: st.DataObject) -> None:
    messages = data.draw(st.lists(st.binary(max_size=300), max_size=12))
    stream = framed(messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    bounds = [0, *cuts, len(stream)]
    chunks = [(a, stream[a:b]) for a, b in itertools.pairwise(bounds) if b > a]
    # Extra overlapping copies, as retransmissions cut differently would make.
    for _ in range(data.draw(st.integers(0, 5))):
        if stream:
            a = data.draw(st.integers(0, len(stream) - 1))
            b = data.draw(st.integers(a + 1, len(stream)))
            chunks.append((a, stream[a:b]))
    order = data.draw(st.permutations(chunks))
    buf = ReceiveBuffer(1 << 20)
    out = deliver(buf, list(order))
    assert [m for m, _ in out] == messages
    assert buf.ooo_bytes == 0 and buf.contig == len(stream)


def test_out_of_order_store_never_holds_a_byte_twice() -> None:
    stream = framed([bytes(range(256)) * 8])
    buf = ReceiveBuffer(1 << 20)
    rng = random.Random(7)
    out: list[tuple[bytes, int]] = []
    for _ in range(300):
        a = rng.randrange(1, len(stream) - 1)
        b = rng.randrange(a + 1, len(stream) + 1)
        buf.insert(a, stream[a:b], out)
        assert buf.ooo_bytes <= len(stream) - 1
    buf.insert(0, stream[:1], out)
    assert [m for m, _ in out] == [bytes(range(256)) * 8]


def test_oversized_length_prefix() -> None:
    buf = ReceiveBuffer(1000)
    with pytest.raises(RemoteProtocolError) as info:
        deliver(buf, [(0, encode_varint(1001) + b"x")])
    assert info.value.code == ErrorCode.MESSAGE_TOO_LARGE
    with pytest.raises(RemoteProtocolError):  # prefix split across chunks
        deliver(ReceiveBuffer(1000), [(0, b"\x80"), (1, b"\x00\x10\x00")])


# ------------------------------------------------------------------------------------ send buffer


def drain(buf: SendBuffer, max_len: int, limit: int = 1 << 40) -> list[tuple[int, bytes]]:
    chunks = []
    while (chunk := buf.take(max_len, limit)) is not None:
        chunks.append((chunk[0], bytes(chunk[1])))
    return chunks


def test_send_buffer_chunks_and_acks() -> None:
    buf = SendBuffer()
    messages = [b"a" * 10, b"b" * 5000, b"c" * 3]
    for m in messages:
        buf.write_message(m)
    stream = framed(messages)
    assert buf.write_offset == len(stream) == buf.buffered
    chunks = drain(buf, 1000)
    assert b"".join(c for _, c in chunks) == stream
    assert [o for o, _ in chunks] == list(range(0, len(stream), 1000))
    for offset, data in reversed(chunks[1:]):  # out of order
        buf.on_acked(offset, offset + len(data))
    assert buf.acked == 0 and buf.has_unacked
    buf.on_acked(0, 1000)
    assert buf.acked == len(stream) and not buf.has_unacked and buf.buffered == 0


def test_send_buffer_flow_limit() -> None:
    buf = SendBuffer()
    buf.write_message(b"x" * 100)
    assert buf.take(1000, 40) == (0, bytearray(framed([b"x" * 100])[:40]))
    assert buf.take(1000, 40) is None
    assert not buf.has_pending(40) and buf.has_pending(41)


def test_send_buffer_retransmits_lost_ranges_first_skipping_acked_bytes() -> None:
    buf = SendBuffer()
    for _ in range(10):
        buf.write_message(b"m" * 98)  # 100 framed bytes each
    stream = framed([b"m" * 98] * 10)
    first = drain(buf, 300, limit=600)
    assert [o for o, _ in first] == [0, 300]
    buf.on_lost(0, 300)
    buf.on_lost(300, 600)
    buf.on_acked(0, 100)  # acknowledged after all (a late ACK)
    buf.on_acked(350, 400)
    chunks = drain(buf, 120, limit=1000)
    assert chunks[0] == (100, stream[100:220])
    assert chunks[1] == (220, stream[220:300])
    assert chunks[2] == (300, stream[300:420])
    assert [o for o, _ in chunks[3:]] == [420, 540, 600, 720, 840, 960]


def test_send_buffer_releases_memory_and_discard() -> None:
    buf = SendBuffer()
    for _ in range(2000):
        buf.write_message(b"q" * 5000)
    for offset, data in drain(buf, 1200):
        buf.on_acked(offset, offset + len(data))
    assert buf.buffered == 0
    assert sum(len(b) for b in buf._blocks) == 0
    buf.write_message(b"after")
    buf.discard()
    assert not buf.has_unacked and buf.take(100, 1 << 40) is None


# ------------------------------------------------------------------------------------ path MTU search


def run_search(path_mtu: int, base: int = 1200, maximum: int = 1500) -> tuple[PmtuSearch, list[int]]:
    search = PmtuSearch(base, maximum, enabled=True)
    assert search.state is PmtuState.BASE and search.next_probe() is None
    search.on_path_confirmed(0.0)
    probes = []
    while (size := search.next_probe()) is not None:
        probes.append(size)
        if size <= path_mtu:
            search.on_probe_acked(size, 1.0)
        else:
            search.on_probe_lost(size, 1.0)
    return search, probes


@pytest.mark.parametrize("path_mtu", [1200, 1201, 1280, 1350, 1420, 1472, 1499, 1500, 9000])
def test_search_converges(path_mtu: int) -> None:
    search, probes = run_search(path_mtu)
    best = min(path_mtu, 1500)
    assert best - GRANULARITY < search.current <= best
    assert search.state is PmtuState.SEARCH_COMPLETE
    assert len(probes) <= 40
    if path_mtu >= 1500:
        assert probes == [1500]


def test_search_needs_max_probes_losses() -> None:
    search = PmtuSearch(1200, 1500, enabled=True)
    search.on_path_confirmed(0.0)
    for _ in range(MAX_PROBES):
        assert search.next_probe() == 1500
        assert search.next_probe() is None  # one probe at a time
        search.on_probe_lost(1500, 1.0)
    assert search.next_probe() == 1350


def test_search_raise_timer() -> None:
    search, _ = run_search(1400)
    assert search.timer == 1.0 + RAISE_TIMER
    search.on_timer(1.0 + RAISE_TIMER)
    assert search.state is PmtuState.SEARCHING
    assert search.next_probe() == 1500


def test_disabled_and_nothing_to_search() -> None:
    assert PmtuSearch(1200, 1500, enabled=False).state is PmtuState.DISABLED
    assert PmtuSearch(1200, 1200, enabled=True).state is PmtuState.DISABLED


def test_too_big_and_black_hole() -> None:
    search, _ = run_search(1500)
    assert search.current == 1500
    assert search.on_too_big(1400, 2.0)  # current no longer fits: back to base, search below 1400
    assert search.current == 1200 and search.state is PmtuState.SEARCHING
    assert not search.on_too_big(1450, 2.0)  # above the new bound: nothing learnt
    while (size := search.next_probe()) is not None:
        assert size <= 1399
        search.on_probe_acked(size, 3.0)
    assert 1399 - GRANULARITY < search.current <= 1399
    assert search.on_black_hole(4.0)
    assert search.current == 1200
    assert not search.on_black_hole(4.0)
    assert not search.on_too_big(1100, 5.0)  # below base: base is assumed to work
