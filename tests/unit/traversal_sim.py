"""Two endpoints behind simulated NATs, connected through a simulated keyed relay."""

from __future__ import annotations

import random
from dataclasses import dataclass

from coremesh.addr import Address
from coremesh.config import MeshConfig
from coremesh.endpoint import events as ev
from coremesh.endpoint.endpoint import Endpoint
from coremesh.identity import Identity
from coremesh.sim.nat import Behaviour, Nat
from coremesh.sim.network import LinkProfile, SimNetwork
from coremesh.sim.relay import SimNode, SimRelay
from coremesh.traversal import Candidate, CandidateType, TraversalConfig

RELAY = Address("198.51.100.1", 3478)
A_PRIV = Address("10.0.1.2", 4000)
B_PRIV = Address("10.0.2.2", 4000)
A_PUB = "192.0.2.10"
B_PUB = "192.0.2.20"
NAT_TYPE = {"direct": ""}


@dataclass
class World:
    net: SimNetwork
    a: SimNode
    b: SimNode
    relay: SimRelay
    nat_a: Nat | None
    nat_b: Nat | None


def _node(seed: int, ident: int, relay: Address, config: TraversalConfig | None) -> SimNode:
    cfg = MeshConfig(heartbeat_interval=1.0, idle_timeout=20.0, connect_timeout=5.0)
    identity = Identity(random.Random(ident).randbytes(32))
    endpoint = Endpoint(identity, cfg, rng=random.Random(seed), wall_offset=1.7e9, traversal=config)
    return SimNode(endpoint, relay)


def world(
    nat_a: Behaviour | None,
    nat_b: Behaviour | None,
    *,
    seed: int = 1,
    latency: float = 0.01,
    config: TraversalConfig | None = None,
    tell_nat_types: bool = True,
) -> World:
    net = SimNetwork(seed, LinkProfile(latency=latency))
    relay = SimRelay()
    net.attach(RELAY, relay)
    rng = random.Random(seed)
    a, b = _node(seed * 10 + 1, 1, RELAY, config), _node(seed * 10 + 2, 2, RELAY, config)
    nats: list[Nat | None] = []
    for node, priv, pub, behaviour in ((a, A_PRIV, A_PUB, nat_a), (b, B_PRIV, B_PUB, nat_b)):
        net.attach(priv, node)
        node.use_probe_sockets(net, priv)  # the birthday approach may open more sockets
        nat = Nat(pub, behaviour, rng) if behaviour is not None else None
        nats.append(nat)
        if nat is not None:
            net.add_nat(nat, [priv.host])
    net.run_for(0.1)  # registrations reach the relay: mappings towards it exist
    for node, priv, nat, behaviour in ((a, A_PRIV, nats[0], nat_a), (b, B_PRIV, nats[1], nat_b)):
        cands = [Candidate(CandidateType.HOST, priv)]
        # What a STUN server beside the relay reports: the mapping towards the relay.
        if nat is not None:
            cands.append(Candidate(CandidateType.SRFLX, nat.outbound(priv, RELAY, net.clock.now)))
        nat_type = behaviour.name if (behaviour is not None and tell_nat_types) else ""
        node.endpoint.set_local_candidates(cands, nat_type, net.clock.now)
    return World(net, a, b, relay, nats[0], nats[1])


def connect_via_relay(w: World, timeout: float = 10.0) -> None:
    w.a.endpoint.connect(w.b.peer_id, w.a.relay_address(w.b.peer_id), w.net.clock.now)
    w.net.flush()
    assert w.net.run_until(
        lambda: bool(w.a.of(ev.PeerConnected)) and bool(w.b.of(ev.PeerConnected)), timeout=timeout
    )


def path(node: SimNode, other: SimNode) -> str:
    snap = node.endpoint.snapshot(other.peer_id)
    assert snap is not None
    return snap.path


def both_direct(w: World) -> bool:
    return path(w.a, w.b) == "direct" and path(w.b, w.a) == "direct"
