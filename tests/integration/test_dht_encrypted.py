"""No peer list in clear on the wire: a real ``coremesh-bootstrap`` and real ``coremesh-node``
processes on loopback, every DHT datagram between them captured with a packet socket on ``lo``.

The nodes know the bootstrap by address only (so they start with a HELLO), join, publish and look
each other up; every lookup must succeed. Then every captured DHT datagram is read: no PeerId (nor
its X25519 key) and no address (packed as in contacts, or as text as in records) of any of the
processes appears in clear, except what a HELLO_REPLY is for (its sender's PeerId, and the
receiver's own address as seen). Needs root for the packet socket (the test command runs as root);
without it the test fails, loudly.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from coremesh.addr import parse_address
from coremesh.dht import messages as m
from coremesh.dht import secure as sec
from coremesh.identity import PeerId

from .daemons import Node, Nodes, http_get, wait_for

pytestmark = pytest.mark.integration

NODES = 5
ETH_P_IP = 0x0800


class LoopbackCapture:
    """UDP datagrams on ``lo`` between the given ports, read by a thread from an AF_PACKET socket
    (IPv4, link header stripped). Each datagram may be seen twice (out and in): harmless here."""

    def __init__(self) -> None:
        if os.geteuid() != 0:
            pytest.fail("this test needs root (a packet socket on lo)")
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
        self.sock.bind(("lo", 0))
        self.sock.settimeout(0.2)
        self.datagrams: list[tuple[int, int, bytes]] = []  # (source port, destination port, payload)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                packet = self.sock.recv(65536)
            except TimeoutError:
                continue
            if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != socket.IPPROTO_UDP:
                continue
            ihl = (packet[0] & 0x0F) * 4
            src, dst, length = struct.unpack_from("!HHH", packet, ihl)
            self.datagrams.append((src, dst, bytes(packet[ihl + 8 : ihl + length])))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def capture() -> Iterator[LoopbackCapture]:
    cap = LoopbackCapture()
    try:
        yield cap
    finally:
        cap.close()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Nodes]:
    manager = Nodes(tmp_path)
    try:
        yield manager
    finally:
        manager.stop_all()


def marks(node: Node) -> list[bytes]:
    """How a process would show in clear: its PeerId, the X25519 key derived from it, its address
    packed as a DHT contact carries it, and as text as a record carries it."""
    peer = PeerId.from_text(node.peer_id)
    address = parse_address(node.listen)
    return [peer.key, peer.x25519_public(), m.encode_address(address)[1:], node.listen.encode()]


def lookup_ok(source: Node, target: Node) -> bool:
    status, body = http_get(source.admin, f"/v1/lookup?peer={target.peer_id}&timeout=5", timeout=10)
    return status == 200 and any(a["address"] == target.listen for a in body["addresses"])


def test_dht_datagrams_carry_no_third_peer_in_clear(procs: Nodes, capture: LoopbackCapture) -> None:
    boot = procs.start("boot", module="coremesh_bootstrap")
    nodes = [procs.launch(f"n{i}", "--bootstrap", boot.listen) for i in range(NODES)]
    for node in nodes:
        procs.wait_ready(node, timeout=60)
    for source in nodes:
        for target in nodes:
            if source is not target:
                wait_for(
                    lambda s=source, t=target: lookup_ok(s, t), 30, f"{source.name} to find {target.name}"
                )
    everyone = [boot, *nodes]
    ports = {parse_address(n.listen).port: n for n in everyone}
    dht = [(s, d, p) for s, d, p in list(capture.datagrams) if s in ports and d in ports and p[:1] == b"\xe7"]

    kinds: dict[type, int] = {}
    for src, dst, payload in dht:
        packet = sec.parse_packet(payload)  # every one is a version 2 outer packet
        kinds[type(packet)] = kinds.get(type(packet), 0) + 1
        for port, node in ports.items():
            if isinstance(packet, sec.HelloReply) and port in (src, dst):
                continue  # a HELLO_REPLY names its sender and tells the receiver its own address
            for mark in marks(node):
                assert mark not in payload, (type(packet).__name__, src, dst, node.name)
    # Every kind of packet was on the wire: HELLOs to the bootstrap, sealed requests and replies.
    assert set(kinds) == {sec.Hello, sec.HelloReply, sec.Sealed, sec.SealedReply}, kinds
    assert kinds[sec.Hello] >= NODES and kinds[sec.Sealed] >= 4 * NODES, kinds
    # The check can fail: what the lookups returned (the records, in each lookup's answer from the
    # admin API) holds the very marks searched for, so they would be found were they sent in clear.
    status, body = http_get(nodes[0].admin, f"/v1/lookup?peer={nodes[1].peer_id}", timeout=10)
    assert status == 200 and body["peer_id"] == nodes[1].peer_id
    assert {"kind": "host", "address": nodes[1].listen} in body["addresses"]
