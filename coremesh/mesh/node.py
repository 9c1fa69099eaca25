"""``MeshNode``: the public face of a mesh node, wiring the endpoint core to asyncio.

The node owns its lifecycle (data dir lock, socket, relays, DHT, background tasks) and the public
API; the work behind that API lives in one room each: :mod:`.dialer` (connecting, with fallback),
:mod:`.registry` (the Connection objects and the core's events), :mod:`.candidates` (our
addresses, NAT type and netcheck) and :mod:`.finder` (discovery services and DHT lookups).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Coroutine, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ..addr import Address
from ..aio.runtime import UdpRuntime, open_udp_socket
from ..config import MeshConfig
from ..datadir import DataDirLock, lock_data_dir
from ..endpoint.endpoint import Endpoint
from ..endpoint.states import PeerState
from ..errors import LocalProtocolError
from ..identity import Identity, PeerId, load_or_create_identity
from ..traversal import TraversalConfig
from .access import PeerAccess
from .candidates import LocalCandidates
from .connection import Connection, ConnectionEvent, PeerInfo, PingResult
from .dialer import Dialer
from .finder import PeerFinder
from .overlay import OverlayApi
from .parts import NodeParts
from .registry import ConnectionRegistry

if TYPE_CHECKING:
    from ..dht.records import PeerRecord
    from ..discovery.base import DiscoveredPeer, DiscoveryService
    from ..netcheck.report import NetcheckReport
    from ..routing.flood import Delivery
    from ..routing.table import Route

log = logging.getLogger("coremesh.node")

STOP_LINGER = 2.0


class MeshNode:
    """A mesh node: one UDP socket, an identity, and authenticated connections to peers.

    Use ``async with MeshNode(config) as node:`` or ``await node.start()`` / ``await node.stop()``.
    """

    def __init__(
        self,
        config: MeshConfig | None = None,
        *,
        identity: Identity | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config if config is not None else MeshConfig()
        # A data dir belongs to one process (and one MeshNode): locked before the identity is read,
        # held until stop(). DataDirLocked if another holds it.
        self._data_dir_lock: DataDirLock | None = None
        self._lock_data_dir()
        if identity is None:
            data_dir = self.config.data_dir
            try:
                identity = load_or_create_identity(data_dir) if data_dir is not None else Identity.generate()
            except BaseException:
                self._unlock_data_dir()
                raise
        self._identity = identity
        # Production randomness comes from the OS; tests may inject a seeded generator.
        self._rng = rng if rng is not None else random.SystemRandom()
        self._parts = NodeParts()
        try:
            # The access lists (docs/access.md): configured, or as last changed at run time.
            self._access = PeerAccess(self._parts, self.config)
        except BaseException:
            self._unlock_data_dir()
            raise
        self._registry = ConnectionRegistry(self._parts)
        self._candidates = LocalCandidates(self._parts, self.config, self._rng)
        self._finder = PeerFinder(self._parts, self.config, identity.peer_id)
        self._dialer = Dialer(self._parts, self.config, self._registry, self._finder)
        self._overlay = OverlayApi(self._parts, self._registry)
        self._background: set[asyncio.Task[None]] = set()
        self._dht_seq = 0  # the last record sequence number, kept across a stop() and start()

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def peer_id(self) -> PeerId:
        return self._identity.peer_id

    @property
    def identity(self) -> Identity:
        return self._identity

    @property
    def is_running(self) -> bool:
        return self._parts.runtime is not None

    @property
    def listen_addresses(self) -> list[Address]:
        """The bound address(es); a wildcard listen also lists its loopback addresses."""
        return self._candidates.listen_addresses()

    @property
    def local_address(self) -> Address:
        if self._parts.runtime is None:
            raise LocalProtocolError("node is not started")
        return self._parts.runtime.local_address

    def _lock_data_dir(self) -> None:
        if self.config.data_dir is not None and self._data_dir_lock is None:
            self._data_dir_lock = lock_data_dir(self.config.data_dir)

    def _unlock_data_dir(self) -> None:
        lock, self._data_dir_lock = self._data_dir_lock, None
        if lock is not None:
            lock.release()

    async def start(self) -> None:
        if self._parts.runtime is not None:
            return
        self._lock_data_dir()  # again after a stop()
        try:
            await self._start()
        except BaseException:
            # A node that failed to start holds nothing: no socket, no relays, no data dir lock.
            with contextlib.suppress(Exception):
                await self.stop()
            raise

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        sock = open_udp_socket(self.config.listen_address, self.config.socket_buffer_size)
        cfg, parts = self.config, self._parts
        traversal = TraversalConfig(
            dead_after=cfg.path_dead_after,
            retry_initial=min(2.0, cfg.traversal_retry_max),
            retry_max=cfg.traversal_retry_max,
        )
        endpoint = Endpoint(
            self._identity,
            cfg,
            rng=self._rng,
            wall_offset=time.time() - loop.time(),
            traversal=traversal,
            acl=self._access.acl,
        )
        parts.endpoint = endpoint
        parts.runtime = runtime = UdpRuntime(endpoint, sock, self._registry.on_event)
        runtime.start()
        if cfg.keyed_relay_urls or cfg.relay_servers:
            from ..aio.relays import RelayManager  # imported lazily: only nodes with relays need it

            parts.relays = RelayManager(
                self._identity,
                runtime,
                cfg.keyed_relay_urls,
                cfg.relay_servers,
                rng=self._rng,
                wall_offset=time.time() - loop.time(),
            )
            await parts.relays.start()
        if cfg.dht:
            from ..aio.dht import DhtService, resolve_seeds  # imported lazily: a node may run without the DHT

            parts.dht = DhtService(
                self._identity,
                cfg,
                runtime,
                addresses=self._candidates.record_addresses,
                connected_peers=self._registry.direct_peers,
                rng=self._rng,
                seq_floor=self._dht_seq,
            )
            parts.dht.start(await resolve_seeds(cfg.bootstrap_addresses, runtime.sock.family))
        self._candidates.start_netcheck()
        await self._finder.start_services(self)
        parts.stopping = False
        self._candidates.refresh()
        self._spawn(self._candidates.keep_current())
        log.info("node started", extra={"peer_id": str(self.peer_id), "address": str(self.local_address)})
        for entry in cfg.bootstrap_addresses:
            if entry.peer_id is not None:
                self._spawn(self._dialer.dial_forever(entry))

    async def stop(self) -> None:
        """Close every connection gracefully (peers see a close), then release the socket and the
        data dir (also for a node that was never started)."""
        parts = self._parts
        runtime, endpoint = parts.runtime, parts.endpoint
        if runtime is None or endpoint is None:
            self._unlock_data_dir()
            return
        parts.stopping = True
        try:
            for task in list(self._background):
                task.cancel()
            await self._finder.stop_services()
            await self._candidates.stop_netcheck()
            endpoint.close_all(runtime.now())
            runtime.pump()
            deadline = runtime.now() + STOP_LINGER
            while (
                any(s.state is PeerState.CLOSING for s in endpoint.snapshots()) and runtime.now() < deadline
            ):
                await asyncio.sleep(0.01)
            if parts.dht is not None:
                self._dht_seq = max(self._dht_seq, parts.dht.last_seq)
                await parts.dht.stop()
                parts.dht = None
            if parts.relays is not None:
                await parts.relays.stop()
                parts.relays = None
        finally:
            # Also when the stop is cancelled or a service fails to stop: the socket and the data
            # dir are released, and nobody is left waiting on a connection.
            runtime.close()
            parts.runtime = None
            self._registry.mark_all_closed("node stopped")
            self._unlock_data_dir()
        log.info("node stopped", extra={"peer_id": str(self.peer_id)})

    async def __aenter__(self) -> MeshNode:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- connections --------------------------------------------------------------------------

    async def connect(
        self,
        peer: PeerId | str,
        addr: str | Address | None = None,
        *,
        timeout: float | None = None,
        path: str = "auto",
        route: Sequence[PeerId | str] = (),
    ) -> Connection:
        """Connect to a peer (or return the existing connection).

        ``peer`` is a PeerId, its text, or ``PEERID@HOST:PORT``; ``addr`` gives the address when
        ``peer`` does not. A PeerId alone is resolved through the DHT (its signed record lists the
        peer's candidates, tried in turn); :class:`PeerNotFound` when the network has no live record.

        ``path``: ``"direct"`` (UDP to the address only), ``"relay"`` (through a relay only),
        ``"routed"`` (by PeerId alone, through other peers: the overlay's route, or ``route``, a
        source route naming the hops, the first one a neighbour), or ``"auto"``: directly first,
        racing a routed attempt when the route table has a route, then through a relay if no
        direct handshake completes within a third of the timeout.

        ``timeout`` (default ``config.connect_timeout``) bounds the whole call: it returns or raises
        by then, whatever it tried (identity probe, DHT lookup, relays). Raises
        :class:`~coremesh.errors.PeerIdentityMismatch` (an :class:`AuthenticationFailed` and a
        :class:`ConnectionFailed`) when the node at the address answers as another peer id,
        :class:`NatTraversalFailed` when the peer did not answer directly and no relay could carry
        the connection (the message says why, relay by relay), else :class:`ConnectionFailed`.
        """
        self._access.check_connect(peer)  # PeerNotAllowed: the access lists refuse it
        hops = tuple(PeerId.from_text(h) if isinstance(h, str) else h for h in route)
        return await self._dialer.connect(peer, addr, timeout=timeout, path=path, route=hops)

    @property
    def access(self) -> PeerAccess:
        """The allow-list and deny-list (docs/access.md): view and change them at run time."""
        return self._access

    def get_connection(self, peer: PeerId) -> Connection | None:
        return self._registry.get(peer)

    def connections(self) -> list[Connection]:
        return self._registry.open_connections()

    def get_peers(self) -> list[PeerInfo]:
        return self._registry.peers()

    async def broadcast(self, data: bytes) -> int:
        """Send ``data`` to every node of the connected mesh, not only the neighbours: each node
        delivers it once (to :meth:`on_delivery` callbacks). Returns how many neighbours it left
        to. At most one packet's worth of data (:class:`MessageTooLarge` above)."""
        return await self._overlay.broadcast(data)

    async def multicast(self, group: str, data: bytes) -> int:
        """Send ``data`` to the members of ``group`` (only they deliver it); returns how many
        neighbours it left to."""
        return await self._overlay.multicast(group, data)

    def join(self, group: str) -> None:
        """Become a member of ``group`` (a signed membership announcement goes mesh-wide)."""
        self._overlay.join(group)

    def leave(self, group: str) -> None:
        self._overlay.leave(group)

    def groups(self) -> list[str]:
        return self._overlay.groups()

    def on_delivery(self, callback: Callable[[Delivery], object]) -> Callable[[], None]:
        """Call ``callback`` with every broadcast and multicast delivered to this node; returns a
        function that unsubscribes."""
        return self._overlay.on_delivery(callback)

    def routes(self) -> list[dict[str, Any]]:
        """The route table: per destination the next hop, metric, hops and backups (JSON-ready)."""
        return self._overlay.routes()

    async def trace(self, peer: PeerId | str, *, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The hops to ``peer`` through the overlay, with each hop's round-trip time."""
        peer_id = PeerId.from_text(peer) if isinstance(peer, str) else peer
        return await self._overlay.trace(peer_id, timeout=timeout)

    def set_router(self, fn: Callable[[PeerId, list[Route]], PeerId | None] | None) -> None:
        """Let ``fn(destination, routes)`` pick the next hop among the table's candidates
        (primary first); None from it, or an invalid choice, keeps the table's own choice."""
        _, endpoint = self._parts.require_running()
        endpoint.overlay.set_router(fn)

    async def ping(self, peer: PeerId | str, *, timeout: float = 5.0) -> PingResult:
        self._parts.require_running()
        peer_id = PeerId.from_text(peer) if isinstance(peer, str) else peer
        return await self._registry.ping(peer_id, timeout=timeout)

    def path_info(self, peer: PeerId) -> tuple[str, str | None]:
        """How packets to ``peer`` travel (``direct``, ``turn`` or ``keyed``) and, when relayed, why."""
        return self._registry.path_info(peer)

    def on_connection(self, callback: Callable[[ConnectionEvent], object]) -> Callable[[], None]:
        """Call ``callback`` on every connection state change; returns a function that unsubscribes."""
        self._registry.subscribe(callback)
        return lambda: self._registry.unsubscribe(callback)

    def stats(self) -> dict[str, int]:
        runtime, endpoint = self._parts.runtime, self._parts.endpoint
        if endpoint is None:
            return {}
        counters = dict(endpoint.counters)
        if runtime is not None:
            counters["datagrams_received"] = runtime.datagrams_received
            counters["datagrams_sent"] = runtime.datagrams_sent
            counters["bytes_received"] = runtime.bytes_received
            counters["bytes_sent"] = runtime.bytes_sent
        counters["connections"] = len(self.connections())
        counters.update(self._overlay.stats())
        return counters

    def resource_usage(self) -> dict[str, int]:
        """What the node's resource scopes hold now (docs/access.md, "Resource limits"): open and
        pending connections, unconfirmed handshakes, inbound connections counted against their
        source hosts, those hosts, and the bytes queued to send to every peer."""
        endpoint = self._parts.endpoint
        return {} if endpoint is None else endpoint.resource_usage()

    # -- the DHT ------------------------------------------------------------------------------

    async def lookup(self, peer: PeerId | str, *, timeout: float | None = None) -> PeerRecord:
        """The live signed record of ``peer``, found through the DHT; :class:`PeerNotFound` if none."""
        return await self._finder.record(peer, timeout)

    async def resolve(self, peer: PeerId | str, *, timeout: float | None = None) -> list[Address]:
        """Addresses to try for ``peer``: its record's candidates, and where the DHT has seen it.

        Loopback candidates come only when this node is on loopback itself or the peer offers
        nothing else: a loopback address names a different host for every node that reads it."""
        return await self._finder.resolve(peer, timeout)

    def dht_status(self) -> dict[str, Any]:
        """Routing table size, records, what this node published, counters (drops by reason)."""
        if self._parts.dht is None:
            return {"enabled": False}
        return self._parts.dht.status()

    # -- our addresses, candidates and NAT ----------------------------------------------------

    def advertised_addresses(self) -> list[Address]:
        """Where peers can reach this node directly: ``advertise_addresses`` if configured, else the
        bound address (a wildcard expanded to the host's addresses, see :mod:`..netcheck.hostaddrs`)."""
        return self._candidates.advertised_addresses()

    def candidates(self) -> list[dict[str, str]]:
        """Addresses peers may reach this node at: host, server-reflexive and relayed candidates."""
        return self._candidates.candidates()

    @property
    def announced_nat_type(self) -> str:
        """The NAT type this node tells its peers with its candidates: netcheck's verdict, taken up
        within ``CANDIDATE_REFRESH`` seconds of a report, or what :meth:`set_nat_type` gave; ""
        until then."""
        return self._candidates.announced_nat_type

    def set_nat_type(self, description: str) -> None:
        """What NAT discovery (netcheck) found about our NAT; peers see it, and ``reason`` cites it."""
        self._candidates.set_nat_type(description)

    def relay_status(self) -> dict[str, Any]:
        return self._parts.relays.status() if self._parts.relays is not None else {}

    # -- netcheck and discovery ------------------------------------------------------------------

    async def netcheck(self, refresh: bool = False) -> NetcheckReport:
        """What this node knows about its network (NAT mapping and filtering, public addresses,
        hairpinning, relay latency, UDP blocked): the last report at once, or a new run with
        ``refresh`` (or when none has finished yet). Raises :class:`~coremesh.aio.netcheck.NetcheckError`
        when no STUN server is configured (``stun_servers``, or ``relays``)."""
        return await self._candidates.netcheck_report(refresh)

    def with_discovery(self, service: DiscoveryService) -> MeshNode:
        """Register a discovery service (started and stopped with the node; asked for addresses when
        connecting to a bare PeerId). Returns the node, for chaining."""
        self._finder.add(service)
        return self

    @property
    def discovery_services(self) -> list[DiscoveryService]:
        return list(self._finder.services)

    async def discovered_peers(self) -> list[DiscoveredPeer]:
        """Every peer the registered discovery services currently know (other than this node)."""
        return await self._finder.discovered_peers()

    # -- helpers ------------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
