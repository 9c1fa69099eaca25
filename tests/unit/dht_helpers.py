"""Shared builders for the DHT tests: identities, records and small simulated networks."""

from __future__ import annotations

import hashlib
import itertools
import random

from coremesh.addr import Address
from coremesh.dht import DhtConfig, DhtNode, PeerRecord
from coremesh.dht import messages as m
from coremesh.dht import secure as sec
from coremesh.identity import Identity, PeerId
from coremesh.sim.network import LinkProfile, SimNetwork

WALL = 1_700_000_000.0


def identity(rng: random.Random) -> Identity:
    return Identity.generate(rng.randbytes)


def record(ident: Identity, seq: int = 1, ttl: float = 3600.0, addr: str = "192.0.2.1:4000") -> PeerRecord:
    return PeerRecord.create(ident, seq, WALL + ttl, [("host", addr)])


_EPHEMERAL = itertools.count(1)


def sealed(
    signer: Identity, to: PeerId, body: m.Body, *, txid: int = 1, now: float = 0.0, pad_to: int = 0
) -> tuple[bytes, bytes]:
    """A request signed by ``signer`` and sealed to ``to`` as a node at ``now`` sends it (a fresh
    ephemeral key each call): the datagram and the key its reply opens with."""
    return seal_message(m.encode_message(signer.sign, signer.peer_id, txid, body, pad_to=pad_to), to, now)


def seal_message(message: bytes, to: PeerId, now: float = 0.0) -> tuple[bytes, bytes]:
    """Any bytes sealed to ``to`` (a fresh ephemeral key each call), sent at ``now``."""
    ephemeral = hashlib.blake2s(next(_EPHEMERAL).to_bytes(8, "big")).digest()
    return sec.seal(to, message, WALL + now, ephemeral)


def node(seed: int, config: DhtConfig | None = None) -> DhtNode:
    rng = random.Random(seed)
    return DhtNode(identity(rng), config or DhtConfig(), rng=rng, wall_offset=WALL)


def address(i: int) -> Address:
    """A distinct /24 per node, so the per-prefix limit never bites by accident."""
    return Address(f"10.{(i >> 8) & 255}.{i & 255}.1", 4000)


def build_network(
    count: int,
    *,
    seed: int = 1,
    config: DhtConfig | None = None,
    profile: LinkProfile | None = None,
) -> tuple[SimNetwork, list[tuple[DhtNode, Address]]]:
    """``count`` nodes joining one after the other through two random earlier nodes, each
    publishing its own record. Returns once the network has settled."""
    rng = random.Random(seed)
    net = SimNetwork(seed=seed, default=profile or LinkProfile(latency=0.02, jitter=0.01))
    nodes: list[tuple[DhtNode, Address]] = []
    for i in range(count):
        n = node(seed * 100_000 + i, config)
        addr = address(i)
        net.attach(addr, n)
        now = net.clock.now
        if nodes:
            n.bootstrap([nodes[j][1] for j in rng.sample(range(len(nodes)), min(2, len(nodes)))], now)
        n.publish(PeerRecord.create(n.identity, 1, WALL + now + 3600, [("host", str(addr))]), now)
        nodes.append((n, addr))
        net.run_for(0.2)
    net.run_for(20)
    for n, _ in nodes:
        drain(n)
    return net, nodes


def drain(n: DhtNode) -> list[object]:
    out = []
    while (e := n.next_event()) is not None:
        out.append(e)
    return out
