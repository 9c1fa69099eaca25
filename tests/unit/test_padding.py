"""Padding to size buckets and constant-rate cover traffic (coremesh/reliability/padding.py): the
core alone, then two endpoints on the virtual-time network, looking at every datagram on the wire."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coremesh.addr import Address
from coremesh.config import MeshConfig
from coremesh.endpoint import events as ev
from coremesh.errors import ConfigError, DecodeError
from coremesh.reliability.config import ReliabilityConfig
from coremesh.reliability.frames import Frame, PaddingFrame, decode_payload, encode_payload
from coremesh.reliability.padding import (
    ENVELOPE_HEADER_LEN,
    ENVELOPE_PREFIX,
    CoverSchedule,
    Padder,
    bucket_sizes,
    open_envelope,
)
from coremesh.routing.overlay import OVERLAY_PREFIX
from coremesh.secure import wire
from coremesh.sim import LinkProfile, SimNetwork
from coremesh.traversal.frames import PATH_PREFIX

from .test_endpoint import A_ADDR, ADVERSE, B_ADDR, Node, connect, make
from .test_reliability_codec import frames_strategy

OVERHEAD = wire.TRANSPORT_OVERHEAD
BUCKETS = (128, 256, 512, 1024)
SIZES = (*BUCKETS, 1200)

# ------------------------------------------------------------------------------------- the core


def test_bucket_sizes_end_at_the_datagram_size() -> None:
    assert bucket_sizes(BUCKETS, 1200) == SIZES
    assert bucket_sizes((1024, 128, 1200, 2000), 1200) == (128, 1024, 1200)
    assert bucket_sizes((), 1200) == (1200,)
    assert bucket_sizes(BUCKETS, 1000) == (128, 256, 512, 1000)  # a routed connection's smaller top


def test_stream_payloads_are_padded_with_padding_frames() -> None:
    padder = Padder(BUCKETS, 1200, OVERHEAD)
    payload = b"\x05\x01" + (7).to_bytes(8, "big")  # packet number 5, PING 7
    padded = padder.pad_stream(payload)
    assert len(padded) + OVERHEAD == 128
    pn, frames = decode_payload(padded)
    assert pn == 5
    assert frames[-1] == PaddingFrame(128 - OVERHEAD - len(payload))
    assert decode_payload(payload)[1] == frames[:-1]
    # Each size goes to the next bucket; the top bucket is never exceeded.
    for size in range(OVERHEAD + 2, 1201):
        out = padder.pad_stream(b"\x01" + b"\x00" * (size - OVERHEAD - 1))
        assert len(out) + OVERHEAD == min(s for s in SIZES if s >= size)


@given(st.integers(0, 2**40), st.lists(frames_strategy, min_size=1, max_size=6))
def test_padded_stream_payloads_decode_to_the_same_frames(pn: int, frames: list[Frame]) -> None:
    payload = encode_payload(pn, frames)
    padder = Padder(BUCKETS, 1200, OVERHEAD)
    padded = padder.pad_stream(payload)
    size = len(payload) + OVERHEAD
    if size > 1200:
        assert padded == payload  # nothing fits above the top bucket: the stream never builds it
        return
    assert len(padded) + OVERHEAD == min(s for s in SIZES if s >= size)
    decoded_pn, decoded = decode_payload(padded)
    extra = len(padded) - len(payload)
    original = decode_payload(payload)[1]
    assert decoded_pn == pn
    if extra and not isinstance(original[-1], PaddingFrame):
        assert decoded == [*original, PaddingFrame(extra)]
    elif extra:  # a trailing PADDING frame grows
        assert decoded == [*original[:-1], PaddingFrame(original[-1].length + extra)]
    else:
        assert decoded == original


def test_off_stream_packets_travel_in_an_envelope() -> None:
    padder = Padder(BUCKETS, 1200, OVERHEAD)
    path = PATH_PREFIX + b"\x07" + bytes(8)
    wrapped = padder.pad(path)
    assert wrapped.startswith(ENVELOPE_PREFIX) and len(wrapped) + OVERHEAD == 128
    assert open_envelope(wrapped) == path
    overlay = OVERLAY_PREFIX + b"\x10" + bytes(600)
    assert len(padder.pad(overlay)) + OVERHEAD == 1024
    assert open_envelope(padder.pad(overlay)) == overlay
    # Already a bucket size: as it is.
    exact = OVERLAY_PREFIX + bytes(256 - OVERHEAD - 8)
    assert padder.pad(exact) is exact
    # Too large for an envelope within the top bucket: unpadded, counted.
    big = OVERLAY_PREFIX + bytes(1200 - OVERHEAD - 8 - 1)
    assert padder.pad(big) is big and padder.oversize == 1
    assert padder.sent == 5
    cover = padder.cover()
    assert len(cover) + OVERHEAD == 128 and open_envelope(cover) == b""


@given(st.binary(max_size=1100))
def test_envelopes_round_trip(inner: bytes) -> None:
    padder = Padder(BUCKETS, 1200, OVERHEAD)
    if inner.startswith(ENVELOPE_PREFIX):
        inner = b"x" + inner
    wrapped = padder.envelope(inner)
    if len(inner) + ENVELOPE_HEADER_LEN + OVERHEAD > 1200:
        assert wrapped is inner
    else:
        assert len(wrapped) + OVERHEAD in SIZES
        assert open_envelope(wrapped) == inner


@given(st.binary(max_size=64).map(lambda tail: ENVELOPE_PREFIX + tail) | st.binary(max_size=64))
def test_open_envelope_raises_only_decode_error(data: bytes) -> None:
    try:
        inner = open_envelope(data)
    except DecodeError:
        return
    assert data.startswith(ENVELOPE_PREFIX) and not inner.startswith(ENVELOPE_PREFIX)
    assert set(data[ENVELOPE_HEADER_LEN + len(inner) :]) <= {0}


@pytest.mark.parametrize(
    "data",
    [
        b"",
        ENVELOPE_PREFIX,
        ENVELOPE_PREFIX + b"\x00",
        ENVELOPE_PREFIX + b"\x00\x05abc",  # longer than the packet
        ENVELOPE_PREFIX + b"\x00\x01a\x00\x01",  # padding not zero
        ENVELOPE_PREFIX + b"\x00\x0a" + ENVELOPE_PREFIX + b"\x00\x00",  # nested
        PATH_PREFIX + b"\x00\x00",
    ],
)
def test_malformed_envelopes_are_decode_errors(data: bytes) -> None:
    with pytest.raises(DecodeError):
        open_envelope(data)


def test_cover_fills_only_the_slots_with_nothing_sent() -> None:
    cover = CoverSchedule(10.0, 0.0, now=0.0)
    assert cover.deadline() == pytest.approx(0.1)
    assert not cover.on_slot(0.05, 0, 0)  # not due yet
    assert not cover.on_slot(cover.deadline() or 0, 3, 0)  # the first slot only learns the count
    assert cover.on_slot(cover.deadline() or 0, 3, 0)  # nothing sent in the slot: cover (counted)
    assert not cover.on_slot(cover.deadline() or 0, 5, 0)  # a real packet took the slot
    assert cover.on_slot(cover.deadline() or 0, 5, 0)
    assert cover.covers == 2
    # Behind by a second (a process that slept): one slot, then from now on, no burst.
    assert cover.on_slot(1.45, 6, 0)
    assert cover.deadline() == pytest.approx(1.55)


def test_cover_idles_and_wakes_with_messages() -> None:
    cover = CoverSchedule(10.0, 1.0, now=0.0)
    sent = 0
    t = 0.1
    while cover.deadline() is not None and t < 5:
        if cover.on_slot(t, sent, 0):
            sent += 1
        t = round(t + 0.1, 6)
    assert cover.deadline() is None and t == pytest.approx(1.1)
    cover.wake(2.0, 0)  # no new message: stays idle
    assert cover.deadline() is None
    cover.wake(2.0, 1)
    assert cover.deadline() == pytest.approx(2.1)


def test_cover_schedule_refuses_bad_parameters() -> None:
    with pytest.raises(ValueError):
        CoverSchedule(0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        CoverSchedule(10.0, -1.0, 0.0)


@pytest.mark.parametrize(
    "config",
    [
        {"padding_buckets": (128, 128)},
        {"padding_buckets": (256, 128)},
        {"padding_buckets": (32,)},
        {"padding_buckets": (1300,)},
        {"padding_buckets": "128"},
        {"padding_buckets": (128.0,)},
        {"cover_rate": 10},  # cover without buckets
        {"padding_buckets": (128,), "cover_rate": -1},
        {"padding_buckets": (128,), "cover_rate": 5000},
        {"padding_buckets": (128,), "cover_rate": True},
        {"padding_buckets": (128,), "cover_rate": 10, "cover_idle": -1},
        {"padding_buckets": (128,), "cover_rate": 10, "cover_idle": "forever"},
    ],
)
def test_config_refuses_bad_padding_settings(config: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        MeshConfig(**config)  # type: ignore[arg-type]


def test_config_accepts_padding_from_a_file() -> None:
    cfg = MeshConfig.from_dict({"padding_buckets": [128, 512], "cover_rate": 20, "cover_idle": "30s"})
    assert cfg.padding_buckets == (128, 512) and cfg.cover_rate == 20.0 and cfg.cover_idle == 30.0
    default = MeshConfig()
    assert default.padding_buckets == () and default.cover_rate == 0.0
    with pytest.raises(ConfigError):
        ReliabilityConfig(padding_buckets=(128, 64))


# ------------------------------------------------------------------------- two endpoints, on the wire


@dataclass
class Wire(Node):
    """A Node that records when each datagram it sends leaves, and how large it is."""

    log: list[tuple[float, bytes]] = field(default_factory=list)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        out = super().datagrams_to_send(now)
        self.log.extend((now, data) for data, _ in out)
        return out

    def transport(self, since: float = 0.0) -> list[tuple[float, int]]:
        return [(t, len(d)) for t, d in self.log if d[0] == wire.PacketType.TRANSPORT and t >= since]


def wired(seed: int = 1, **config: object) -> tuple[SimNetwork, Wire, Wire]:
    net = SimNetwork(seed, LinkProfile(latency=0.01))
    a, b = (Wire(make(seed * 2 + i, i, **config).endpoint) for i in (1, 2))
    net.attach(A_ADDR, a)
    net.attach(B_ADDR, b)
    connect(net, a, b)
    return net, a, b


def messages(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.choice([0, 1, 40, 200, 700, 1100, 5000, 30000])) for _ in range(count)]


def exchange(net: SimNetwork, a: Wire, b: Wire, to_b: list[bytes], to_a: list[bytes]) -> None:
    for data in to_b:
        a.endpoint.send(b.endpoint.peer_id, data, net.clock.now)
    for data in to_a:
        b.endpoint.send(a.endpoint.peer_id, data, net.clock.now)
    net.flush()
    assert net.run_until(
        lambda: len(b.messages()) == len(to_b) and len(a.messages()) == len(to_a), timeout=60
    )
    assert b.messages() == to_b and a.messages() == to_a


def test_padding_gives_every_transport_datagram_a_bucket_size() -> None:
    net, a, b = wired(padding_buckets=BUCKETS)
    exchange(net, a, b, messages(1, 60), messages(2, 40))
    net.run_for(3.0)  # heartbeats and overlay traffic too
    for node in (a, b):
        sizes = Counter(size for _, size in node.transport())
        assert set(sizes) <= set(SIZES), sizes
        assert len(sizes) >= 3, sizes  # small control packets and full data packets both
        assert node.endpoint.counters["cover_packets_sent"] == 0


def test_without_padding_sizes_vary_as_before() -> None:
    net, a, b = wired()
    exchange(net, a, b, messages(1, 60), messages(2, 40))
    sizes = {size for _, size in a.transport()} | {size for _, size in b.transport()}
    assert len(sizes - set(SIZES)) >= 5, sizes
    assert a.endpoint.connections()[b.endpoint.peer_id].stream.padder is None


def test_a_padded_node_talks_to_an_unpadded_one() -> None:
    net = SimNetwork(3, LinkProfile(latency=0.01))
    a = Wire(make(7, 1, padding_buckets=BUCKETS, cover_rate=10).endpoint)
    b = Wire(make(8, 2).endpoint)
    net.attach(A_ADDR, a)
    net.attach(B_ADDR, b)
    connect(net, a, b)
    exchange(net, a, b, messages(3, 40), messages(4, 40))
    net.run_for(2.0)
    assert {size for _, size in a.transport()} <= set(SIZES)
    assert len({size for _, size in b.transport()} - set(SIZES)) >= 5
    assert b.endpoint.counters["cover_packets_received"] > 0
    assert a.endpoint.counters["cover_packets_received"] == 0


@pytest.mark.parametrize("seed", range(3))
def test_padded_messages_arrive_once_in_order_on_a_hostile_network(seed: int) -> None:
    net = SimNetwork(seed, ADVERSE)
    a, b = (Wire(make(seed * 2 + i, i, padding_buckets=BUCKETS, cover_rate=20).endpoint) for i in (1, 2))
    net.attach(A_ADDR, a)
    net.attach(B_ADDR, b)
    connect(net, a, b, timeout=60)
    exchange(net, a, b, messages(seed, 50), messages(seed + 100, 30))
    for node in (a, b):
        assert {size for _, size in node.transport()} <= set(SIZES)
    # Corrupted copies fail the AEAD; none reaches the envelope decoder.
    assert a.endpoint.counters["drop_malformed_envelope"] == 0


def per_second(log: list[tuple[float, int]], start: float, seconds: int) -> list[int]:
    counts = [0] * seconds
    for t, _ in log:
        i = int((t - start) // 1.0)
        if 0 <= i < seconds:
            counts[i] += 1
    return counts


@pytest.mark.parametrize("rate", [10, 25])
def test_cover_traffic_keeps_a_constant_rate_whether_the_app_sends_or_not(rate: int) -> None:
    net, a, b = wired(padding_buckets=BUCKETS, cover_rate=rate, heartbeat_interval=1.0)
    net.run_for(1.0)  # settle after the handshake
    start = net.clock.now
    # 4 s idle, then 4 s with a small message a -> b every 0.3 s, then 4 s idle again.
    net.run_for(4.0)
    sent: list[bytes] = []
    for i in range(13):
        data = f"message {i}".encode() * (i + 1)
        sent.append(data)
        a.endpoint.send(b.endpoint.peer_id, data, net.clock.now)
        net.flush()
        net.run_for(0.3)
    net.run_for(4.1 - 13 * 0.3 + 4.0)
    assert b.messages() == sent
    for node in (a, b):
        log = node.transport(start)
        assert {size for _, size in log} <= set(SIZES)
        counts = per_second(log, start, 12)
        # One packet per slot: cover in the empty ones, real packets in the others.
        assert all(rate - 1 <= c <= rate + 1 for c in counts), (rate, counts)
        assert node.endpoint.counters["cover_packets_sent"] > 0
        assert node.endpoint.counters["cover_packets_received"] > 0
    # Cover packets are never acknowledged: the peer's packets stay at the rate (no ACK storm).
    conn = a.endpoint.connections()[b.endpoint.peer_id]
    assert conn.stream.packets_lost == 0


def test_cover_is_not_counted_by_recovery_and_stops_when_the_connection_closes() -> None:
    net, a, b = wired(padding_buckets=BUCKETS, cover_rate=20)
    conn = a.endpoint.connections()[b.endpoint.peer_id]
    before = conn.stream.packets_sent
    net.run_for(5.0)
    covers = a.endpoint.counters["cover_packets_sent"]
    assert covers >= 90
    # Cover packets are not stream packets: no packet numbers, nothing in flight.
    assert conn.stream.packets_sent - before < 10 and conn.stream.bytes_in_flight == 0
    a.endpoint.close(b.endpoint.peer_id, net.clock.now)
    net.flush()
    assert net.run_until(lambda: bool(b.of(ev.PeerDisconnected)), timeout=5)
    net.run_for(2.0)
    stopped = net.clock.now
    net.run_for(3.0)
    assert not a.transport(stopped) and not b.transport(stopped)


def test_cover_idles_after_cover_idle_and_resumes_with_a_message() -> None:
    net, a, b = wired(padding_buckets=BUCKETS, cover_rate=20, cover_idle=2.0)
    net.run_for(4.0)
    quiet = net.clock.now
    net.run_for(0.9)  # heartbeats only (1 s apart in these tests)
    assert len(a.transport(quiet)) <= 2
    a.endpoint.send(b.endpoint.peer_id, b"wake up", net.clock.now)
    net.flush()
    resumed = net.clock.now
    net.run_for(1.0)
    assert b.messages() == [b"wake up"]
    assert len(a.transport(resumed)) >= 18


def test_the_node_reads_padding_from_its_config_file(tmp_path: Path) -> None:
    from coremesh_node.settings import resolve

    good = tmp_path / "node.toml"
    good.write_text('[node]\npadding_buckets = [128, 512]\ncover_rate = 10\ncover_idle = "1m"\n')
    mesh = resolve(["--config", str(good)], env={}).mesh
    assert (mesh.padding_buckets, mesh.cover_rate, mesh.cover_idle) == ((128, 512), 10.0, 60.0)
    for text, expected in (
        ('padding_buckets = ["128"]', "expected a list of integers"),
        ("padding_buckets = [512, 128]", "increasing"),
        ("cover_rate = 10", "needs padding_buckets"),
    ):
        bad = tmp_path / "bad.toml"
        bad.write_text(f"[node]\n{text}\n")
        with pytest.raises(ConfigError, match=expected):
            resolve(["--config", str(bad)], env={})
