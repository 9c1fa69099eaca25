"""``MeshNode``: the public face of a mesh node, wiring the endpoint core to asyncio."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import time
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from ..addr import Address, parse_address
from ..aio.runtime import UdpRuntime, open_udp_socket
from ..config import MeshConfig, PeerAddress, parse_peer_address
from ..datadir import DataDirLock, lock_data_dir
from ..endpoint import events as ev
from ..endpoint.endpoint import Endpoint
from ..endpoint.paths import PathAddress, RelayAddress, udp_address
from ..endpoint.peer import PeerSnapshot
from ..endpoint.states import PeerState
from ..errors import (
    ConnectionClosed,
    ConnectionFailed,
    InvalidAddress,
    LocalProtocolError,
    MeshError,
    NatTraversalFailed,
    PeerIdentityMismatch,
    PeerNotFound,
)
from ..identity import Identity, PeerId, load_or_create_identity
from ..netcheck.hostaddrs import host_addresses
from ..traversal import Candidate, CandidateType, TraversalConfig
from .connection import Connection, ConnectionEvent, ConnectionState, PeerInfo, PingResult

if TYPE_CHECKING:
    from ..aio.relays import RelayManager
    from ..dht.events import LookupFinished
    from ..dht.records import PeerRecord
    from ..dht.service import DhtService
    from ..discovery.base import DiscoveredPeer, DiscoveryService
    from ..netcheck.report import NetcheckReport
    from ..netcheck.service import Netchecker

log = logging.getLogger("coremesh.node")
T = TypeVar("T")

_STATE_MAP = {
    PeerState.CONNECTING: ConnectionState.CONNECTING,
    PeerState.CONNECTED: ConnectionState.CONNECTED,
    PeerState.CLOSING: ConnectionState.CLOSED,
    PeerState.DRAINING: ConnectionState.CLOSED,
}
STOP_LINGER = 2.0
RACE_HEAD_START = 0.25  # seconds the direct attempt runs alone before the keyed relay joins in
CANDIDATE_REFRESH = 2.0  # seconds between looks at our candidates (relays re-allocate, interfaces change)
_CANDIDATE_TYPES = {"host": CandidateType.HOST, "srflx": CandidateType.SRFLX, "relay": CandidateType.RELAY}
DISCOVERY_TIMEOUT = 3.0  # per discovery service asked
DISCOVERY_POLL = 0.1  # seconds between asking the discovery services again while connecting
MAX_DISCOVERED_TRIES = 8  # addresses of one peer tried when connecting by PeerId alone


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
        self._endpoint: Endpoint | None = None
        self._runtime: UdpRuntime | None = None
        self._connections: dict[PeerId, Connection] = {}
        self._connect_waiters: dict[PeerId, list[asyncio.Future[Connection]]] = {}
        self._ping_waiters: dict[tuple[PeerId, int], asyncio.Future[float]] = {}
        self._probe_waiters: dict[int, asyncio.Future[PeerId | None]] = {}
        self._callbacks: list[Callable[[ConnectionEvent], object]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._started_at: float | None = None
        self._stopping = False
        self._relays: RelayManager | None = None
        self._dht: DhtService | None = None
        self._dht_seq = 0  # the last record sequence number, kept across a stop() and start()
        self._nat_type = ""
        self._nat_type_set = False
        self._netcheck: Netchecker | None = None
        self._discovery: list[DiscoveryService] = []
        # Why a relayed connection is not on the cheaper relay (e.g. a TURN 403), by peer.
        self._path_notes: dict[PeerId, str] = {}

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def peer_id(self) -> PeerId:
        return self._identity.peer_id

    @property
    def identity(self) -> Identity:
        return self._identity

    @property
    def is_running(self) -> bool:
        return self._runtime is not None

    @property
    def listen_addresses(self) -> list[Address]:
        """The bound address(es); a wildcard listen also lists its loopback addresses."""
        if self._runtime is None:
            return []
        bound = self._runtime.local_address
        if bound.host == "::":
            return [Address("127.0.0.1", bound.port), Address("::1", bound.port), bound]
        if bound.host == "0.0.0.0":
            return [Address("127.0.0.1", bound.port), bound]
        return [bound]

    @property
    def local_address(self) -> Address:
        if self._runtime is None:
            raise LocalProtocolError("node is not started")
        return self._runtime.local_address

    def _lock_data_dir(self) -> None:
        if self.config.data_dir is not None and self._data_dir_lock is None:
            self._data_dir_lock = lock_data_dir(self.config.data_dir)

    def _unlock_data_dir(self) -> None:
        lock, self._data_dir_lock = self._data_dir_lock, None
        if lock is not None:
            lock.release()

    async def start(self) -> None:
        if self._runtime is not None:
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
        cfg = self.config
        traversal = TraversalConfig(
            dead_after=cfg.path_dead_after,
            retry_initial=min(2.0, cfg.traversal_retry_max),
            retry_max=cfg.traversal_retry_max,
        )
        self._endpoint = Endpoint(
            self._identity, cfg, rng=self._rng, wall_offset=time.time() - loop.time(), traversal=traversal
        )
        self._runtime = UdpRuntime(self._endpoint, sock, self._on_event)
        runtime = self._runtime
        self._endpoint.is_routed = lambda address: address in runtime.routes
        self._runtime.start()
        if self.config.keyed_relay_urls or self.config.relay_servers:
            from ..aio.relays import RelayManager  # imported lazily: only nodes with relays need it

            self._relays = RelayManager(
                self._identity,
                self._runtime,
                self.config.keyed_relay_urls,
                self.config.relay_servers,
                rng=self._rng,
                wall_offset=time.time() - loop.time(),
            )
            await self._relays.start()
        if self.config.dht:
            from ..dht.service import DhtService  # imported lazily: a node may run without the DHT

            self._dht = DhtService(
                self._identity,
                self.config,
                self._runtime,
                addresses=self._record_addresses,
                connected_peers=self._direct_peers,
                rng=self._rng,
                seq_floor=self._dht_seq,
            )
            self._dht.start(self.config.bootstrap_addresses)
        await self._start_netcheck_and_discovery()
        self._started_at = time.time()
        self._stopping = False
        self._refresh_candidates()
        self._spawn(self._keep_candidates_current())
        log.info("node started", extra={"peer_id": str(self.peer_id), "address": str(self.local_address)})
        for entry in self.config.bootstrap_addresses:
            if entry.peer_id is not None:
                self._spawn(self._dial_forever(entry))

    async def stop(self) -> None:
        """Close every connection gracefully (peers see a close), then release the socket and the
        data dir (also for a node that was never started)."""
        runtime, endpoint = self._runtime, self._endpoint
        if runtime is None or endpoint is None:
            self._unlock_data_dir()
            return
        self._stopping = True
        try:
            for task in list(self._background):
                task.cancel()
            await self._stop_netcheck_and_discovery()
            endpoint.close_all(runtime.now())
            runtime.pump()
            deadline = runtime.now() + STOP_LINGER
            while (
                any(s.state is PeerState.CLOSING for s in endpoint.snapshots()) and runtime.now() < deadline
            ):
                await asyncio.sleep(0.01)
            if self._dht is not None:
                self._dht_seq = max(self._dht_seq, self._dht.last_seq)
                await self._dht.stop()
                self._dht = None
            if self._relays is not None:
                await self._relays.stop()
                self._relays = None
        finally:
            # Also when the stop is cancelled or a service fails to stop: the socket and the data
            # dir are released, and nobody is left waiting on a connection.
            runtime.close()
            self._runtime = None
            for conn in list(self._connections.values()):
                conn._mark_closed("node stopped")
            self._connections.clear()
            self._fail_waiters(ConnectionFailed("node stopped"))
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
    ) -> Connection:
        """Connect to a peer (or return the existing connection).

        ``peer`` is a PeerId, its text, or ``PEERID@HOST:PORT``; ``addr`` gives the address when
        ``peer`` does not. A PeerId alone is resolved through the DHT (its signed record lists the
        peer's candidates, tried in turn); :class:`PeerNotFound` when the network has no live record.

        ``path``: ``"direct"`` (UDP to the address only), ``"relay"`` (through a relay only), or
        ``"auto"``: directly first, then through a relay if no direct handshake completes within
        a third of the timeout.

        ``timeout`` (default ``config.connect_timeout``) bounds the whole call: it returns or raises
        by then, whatever it tried (identity probe, DHT lookup, relays). Raises
        :class:`~coremesh.errors.PeerIdentityMismatch` (an :class:`AuthenticationFailed` and a
        :class:`ConnectionFailed`) when the node at the address answers as another peer id,
        :class:`NatTraversalFailed` when the peer did not answer directly and no relay could carry
        the connection (the message says why, relay by relay), else :class:`ConnectionFailed`.
        """
        if path not in ("auto", "direct", "relay"):
            raise ValueError(f"path must be 'auto', 'direct' or 'relay', not {path!r}")
        timeout = self.config.connect_timeout if timeout is None else timeout
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        runtime, _ = self._require_running()
        deadline = runtime.now() + timeout
        if addr is None and (isinstance(peer, PeerId) or (":" not in peer and "@" not in peer)):
            wanted = peer if isinstance(peer, PeerId) else PeerId.from_text(peer)
            known = self.get_connection(wanted)
            if known is not None:
                return known
            if self._dht is not None or self._discovery:
                return await self._connect_discovered(wanted, deadline=deadline, timeout=timeout, path=path)
        return await self._connect_to(self._resolve_target(peer, addr), deadline, path, timeout)

    async def _connect_to(
        self, target: PeerAddress, deadline: float, path: str, timeout: float
    ) -> Connection:
        """Connect to one address, giving up at ``deadline``: ``timeout`` after the call began."""
        runtime, endpoint = self._require_running()
        reason = runtime.unreachable_reason(target.address)
        if reason is not None:
            raise ConnectionFailed(reason)
        probed = target.peer_id is None
        if target.peer_id is None:
            target = PeerAddress(target.address, await self._probe(target.address, deadline))
        peer_id = target.peer_id
        assert peer_id is not None
        existing = self._connections.get(peer_id)
        if existing is not None and not existing.is_closed:
            return existing
        relays = self._relays
        has_relay = relays is not None and (
            relays.turn_link() is not None or relays.keyed_relay() is not None
        )
        if path == "relay" and not has_relay:
            unusable = (
                [why for why in (relays.turn_unusable(), relays.keyed_unusable()) if why] if relays else []
            )
            raise ConnectionFailed(
                "no relay is available (configure relays / --relay or keyed_relays)"
                + (f": {'; '.join(unusable)}" if unusable else "")
            )
        first: PathAddress = target.address
        notes: list[str] = []  # why a relay could not carry this connection, one line each
        # With path="relay", prepare the relay path before the first initiation leaves, so that
        # none goes direct.
        if path == "relay" and relays is not None:
            refused = await self._turn_route(target.address, deadline) if relays.turn else "no TURN relay"
            if refused is not None:
                if relays.turn:
                    notes.append(refused)
                keyed = relays.keyed_relay()
                if keyed is None:
                    raise ConnectionFailed(
                        f"no relay could carry traffic to {target.address}: {'; '.join(notes)}"
                    )
                first = RelayAddress(keyed, peer_id)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Connection] = loop.create_future()
        self._connect_waiters.setdefault(peer_id, []).append(fut)
        try:
            endpoint.connect(
                peer_id,
                first,
                runtime.now(),
                timeout=max(deadline - runtime.now(), 0.0),
                pinned=path == "relay",
            )
        except LocalProtocolError as exc:
            self._connect_waiters[peer_id].remove(fut)
            raise ConnectionFailed(str(exc)) from None
        self._notify(ConnectionEvent(peer_id, ConnectionState.CONNECTING, first))
        # Who answers at the address? A node there with another identity drops our initiation
        # unread (mac1), so only an identity probe can tell "wrong peer" from "nobody there".
        # With a relay to fall back on (path="auto"), another identity at the address only means the
        # address is stale: the relays may still reach the peer, so the connect goes on.
        mismatch: list[PeerIdentityMismatch] = []
        check = (
            None
            if probed or path == "relay"
            else self._check_identity(
                target.address, peer_id, fut, mismatch if path == "auto" and has_relay else None
            )
        )
        runtime.pump()
        relayed = path == "relay"  # whether some relay path carried an initiation
        fell_back = False
        try:
            if path != "direct" and has_relay:
                budget = timeout / 3
                keyed = relays.keyed_relay() if relays is not None else None
                if path == "auto" and keyed is not None and budget > RACE_HEAD_START:
                    # Happy eyeballs: the direct attempt gets a head start, then the same initiation
                    # also goes through the keyed relay; whichever answers first carries the
                    # connection, and NAT traversal moves a relayed one to a direct path.
                    await _wait_until(fut, min(runtime.now() + RACE_HEAD_START, deadline))
                    budget -= RACE_HEAD_START
                    if not fut.done() and endpoint.also_try(
                        peer_id, RelayAddress(keyed, peer_id), runtime.now()
                    ):
                        relayed = True
                        runtime.pump()
                await _wait_until(fut, min(runtime.now() + budget, deadline))
                if not fut.done() and runtime.now() < deadline:
                    fell_back = True
                    if await self._fall_back(peer_id, target.address, first, fut, deadline, timeout, notes):
                        relayed = True
            await _wait_until(fut, deadline)
            if fut.done():
                error = fut.exception()
                if error is None:
                    conn = fut.result()
                    notes[:0] = [str(m) for m in mismatch]
                    if notes and conn.path == "relay":
                        self._path_notes[peer_id] = "; ".join(notes)
                    return conn
                if not isinstance(error, _HandshakeTimedOut):
                    raise error
            # Nothing answered in time: say what was tried, and why each relay could not help.
            notes[:0] = [str(m) for m in mismatch]
            if mismatch and not relayed:
                raise PeerIdentityMismatch("; ".join(notes))
            if path == "auto" and not has_relay and relays is not None:
                fell_back = True  # relays are configured, but none could even be tried
                notes.extend(why for why in (relays.turn_unusable(), relays.keyed_unusable()) if why)
            raise self._timeout_error(
                peer_id, target.address, timeout, path, relayed=relayed, fell_back=fell_back, notes=notes
            )
        finally:
            if check is not None:
                check.cancel()
            waiters = self._connect_waiters.get(peer_id)
            if waiters and fut in waiters:
                waiters.remove(fut)
            if not fut.done():
                fut.cancel()  # timed out, or cancelled from outside: stop the attempt too
                self._abandon(peer_id, target.address, "connect timed out")
            elif not fut.cancelled() and fut.exception() is not None:
                self._abandon(peer_id, target.address, "connect failed")

    def _timeout_error(
        self,
        peer_id: PeerId,
        address: Address,
        timeout: float,
        path: str,
        *,
        relayed: bool,
        fell_back: bool,
        notes: list[str],
    ) -> ConnectionFailed:
        where = f"cannot connect to {peer_id}"
        within = f"within {timeout:.3g}s"
        why = f" ({'; '.join(notes)})" if notes else ""
        if path == "relay":
            return ConnectionFailed(f"{where}: no answer through the relay {within}{why}")
        direct = f"no handshake response from {address} {within}"
        if fell_back and not relayed and notes:
            # The direct attempt failed and every relay that could have carried the connection
            # was refused or unusable: no path through the NATs.
            return NatTraversalFailed(
                f"{where}: {direct}, and no relay could carry traffic: {'; '.join(notes)}"
            )
        if relayed:
            return ConnectionFailed(f"{where}: {direct}, nor through the relay{why}")
        return ConnectionFailed(
            f"{where}: {direct} (no mesh node answering there, or blocked on the way){why}"
        )

    def _check_identity(
        self,
        address: Address,
        peer_id: PeerId,
        fut: asyncio.Future[Connection],
        mismatch: list[PeerIdentityMismatch] | None = None,
    ) -> asyncio.Future[PeerId | None] | None:
        """Ask ``address`` who it is while the handshake runs; if the node there names another
        peer id, fail ``fut`` with :class:`PeerIdentityMismatch` at once, or, given a ``mismatch``
        list (a relay may still reach the peer), add the error there. Returns the probe's future
        (cancel it when the connect ends), or None when no probe could be sent."""
        runtime, endpoint = self._require_running()
        try:
            nonce = endpoint.probe_identity(address)
        except LocalProtocolError:
            return None  # too many probes in flight: the handshake alone decides
        probe: asyncio.Future[PeerId | None] = asyncio.get_running_loop().create_future()
        self._probe_waiters[nonce] = probe

        def answered(done: asyncio.Future[PeerId | None]) -> None:
            self._probe_waiters.pop(nonce, None)
            found = None if done.cancelled() else done.result()
            if found is not None and found != peer_id and not fut.done():
                endpoint.counters["connect_identity_mismatch"] += 1
                error = PeerIdentityMismatch(
                    f"authentication failed: the node at {address} is {found}, not {peer_id} "
                    "(a wrong peer id, or another node now listens at that address)"
                )
                if mismatch is None:
                    fut.set_exception(error)
                else:
                    mismatch.append(error)

        probe.add_done_callback(answered)
        endpoint.start_probe(nonce, runtime.now())
        return probe

    def _abandon(self, peer_id: PeerId, address: Address, reason: str) -> None:
        """Stop a connect attempt of ours that nobody waits for any more (no late connection)."""
        runtime, endpoint = self._runtime, self._endpoint
        if runtime is None or endpoint is None or self._connect_waiters.get(peer_id):
            return  # another connect() still waits for this peer
        snap = endpoint.snapshot(peer_id)
        if snap is None or snap.state is not PeerState.CONNECTING or not snap.initiator:
            return
        endpoint.close(peer_id, runtime.now())
        runtime.routes.pop(address, None)
        if self._relays is not None:
            self._relays.forget(address)
        runtime.pump()
        self._notify(ConnectionEvent(peer_id, ConnectionState.FAILED, address, reason))

    async def _connect_discovered(
        self, peer_id: PeerId, *, deadline: float, timeout: float, path: str
    ) -> Connection:
        """Find ``peer_id``'s addresses, then connect to them in turn, all by ``deadline``.

        The registered discovery services (mDNS: local and quick) are asked first, then the DHT.
        When neither knows the peer but a service is registered, the services are asked again
        until the deadline: an mDNS browse answers within a second or so."""
        runtime, _ = self._require_running()
        candidates = await _within(self._discovered_addresses(peer_id), deadline, [])
        not_found: PeerNotFound | None = None
        if self._dht is not None:
            try:
                found = await asyncio.wait_for(self.resolve(peer_id), max(deadline - runtime.now(), 0.0))
            except PeerNotFound as exc:
                not_found = exc
            except TimeoutError:
                not_found = PeerNotFound(f"no record of {peer_id} found within {timeout:.3g}s")
            else:
                candidates += [
                    a for a in found if a not in candidates and runtime.unreachable_reason(a) is None
                ]
        while not candidates and self._discovery and runtime.now() + DISCOVERY_POLL < deadline:
            await asyncio.sleep(DISCOVERY_POLL)
            candidates = await _within(self._discovered_addresses(peer_id), deadline, [])
        if not candidates:
            if not_found is not None:
                raise not_found
            raise PeerNotFound(f"no address known for {peer_id}: no discovery source found it")
        candidates = candidates[:MAX_DISCOVERED_TRIES]
        if path == "relay":
            return await self._connect_to(PeerAddress(candidates[0], peer_id), deadline, "relay", timeout)
        errors: list[str] = []
        failures: list[ConnectionFailed] = []
        for i, address in enumerate(candidates):
            remaining = deadline - runtime.now()
            if remaining <= 0:
                break
            last = i == len(candidates) - 1
            # Earlier candidates get a fair share and direct UDP only; the last one gets what is
            # left and, with path="auto", the relay fallback.
            share = remaining if last else max(remaining / (len(candidates) - i), min(1.0, remaining))
            try:
                return await self._connect_to(
                    PeerAddress(address, peer_id),
                    min(deadline, runtime.now() + share),
                    path if last else "direct",
                    share,
                )
            except ConnectionFailed as exc:
                failures.append(exc)
                errors.append(f"{address}: {exc}")
        message = f"could not connect to {peer_id}: {'; '.join(errors) or 'timed out'}"
        if failures and all(isinstance(e, PeerIdentityMismatch) for e in failures):
            raise PeerIdentityMismatch(message)
        if failures and isinstance(failures[-1], NatTraversalFailed):
            raise NatTraversalFailed(message)
        raise ConnectionFailed(message)

    async def lookup(self, peer: PeerId | str, *, timeout: float | None = None) -> PeerRecord:
        """The live signed record of ``peer``, found through the DHT; :class:`PeerNotFound` if none."""
        result = await self._lookup(peer, timeout)
        if result.record is None:
            raise PeerNotFound(f"no live record of {result.target} in the network")
        return result.record

    async def resolve(self, peer: PeerId | str, *, timeout: float | None = None) -> list[Address]:
        """Addresses to try for ``peer``: its record's candidates, and where the DHT has seen it.

        Loopback candidates come only when this node is on loopback itself or the peer offers
        nothing else: a loopback address names a different host for every node that reads it."""
        result = await self._lookup(peer, timeout)
        found: list[Address] = []
        if result.record is not None:
            for kind, text in result.record.addresses:
                if kind in ("host", "srflx", "relay") and "://" not in text:
                    with contextlib.suppress(InvalidAddress):
                        found.append(parse_address(text, allow_names=False))
        found.extend(addr for pid, addr in result.closest if pid == result.target)
        if not found:
            raise PeerNotFound(f"no live record of {result.target} in the network")
        unique = list(dict.fromkeys(found))
        local = self._runtime is not None and _is_loopback(self._runtime.local_address)
        remote = [a for a in unique if not _is_loopback(a)]
        if local or not remote:
            return unique
        return remote

    async def _lookup(self, peer: PeerId | str, timeout: float | None) -> LookupFinished:
        self._require_running()
        peer_id = PeerId.from_text(peer) if isinstance(peer, str) else peer
        if self._dht is None:
            raise PeerNotFound(f"cannot look {peer_id} up: the DHT is off (MeshConfig.dht)")
        return await self._dht.lookup(peer_id, timeout=timeout)

    def advertised_addresses(self) -> list[Address]:
        """Where peers can reach this node directly: ``advertise_addresses`` if configured, else the
        bound address (a wildcard expanded to the host's addresses, see :mod:`..netcheck.hostaddrs`)."""
        if self.config.advertised:
            return list(self.config.advertised)
        if self._runtime is None:
            return []
        return host_addresses(self._runtime.local_address)

    def _record_addresses(self) -> list[tuple[str, str]]:
        """The candidates this node publishes in its signed record, best first."""
        out = [("host", str(a)) for a in self.advertised_addresses()]
        if self._relays is not None:
            for cand in self._relays.candidates():
                kind = "srflx" if cand["type"] == "srflx" else "relay"
                out.append((kind, cand["address"]))
            out.extend(("keyed", url) for url in self._relays.registered_keyed_urls())
        return out

    def _direct_peers(self) -> list[tuple[PeerId, Address]]:
        """Connected peers with a direct address: who the DHT gossips records to."""
        return [(p.peer_id, p.address) for p in self.get_peers() if isinstance(p.address, Address)]

    def dht_status(self) -> dict[str, Any]:
        """Routing table size, records, what this node published, counters (drops by reason)."""
        if self._dht is None:
            return {"enabled": False}
        return self._dht.status()

    async def _turn_route(self, address: Address, deadline: float) -> str | None:
        """Route ``address`` through a TURN allocation (channel bound): None once it is, else why
        no TURN server can carry it (one line naming the relay, e.g. its 403 refusal)."""
        runtime, _ = self._require_running()
        relays = self._relays
        link = relays.turn_link() if relays is not None else None
        if link is None:
            return (relays.turn_unusable() if relays is not None else None) or "no TURN relay is configured"
        refused = await link.bind(address, min(1.0, max(deadline - runtime.now(), 0.0)))
        if refused is not None:
            return refused
        runtime.routes[address] = link
        link.routed.add(address)
        return None

    async def _fall_back(
        self,
        peer_id: PeerId,
        address: Address,
        tried: PathAddress,
        fut: asyncio.Future[Connection],
        deadline: float,
        timeout: float,
        notes: list[str],
    ) -> bool:
        """Move a pending connect to the next path, in order of cost: a TURN allocation (UDP; the
        peer sees our relayed address), then a keyed relay (by PeerId, over TCP/WebSocket).
        True if a relay now carries the attempt; why each relay could not is added to ``notes``."""
        runtime, endpoint = self._require_running()
        relays = self._relays
        if relays is None:
            return False
        carried = False  # a TURN allocation carried the initiation (the peer may just be offline)
        if relays.turn and address not in runtime.routes and not isinstance(tried, RelayAddress):
            refused = await self._turn_route(address, deadline)
            if refused is not None:
                notes.append(refused)
            elif endpoint.redirect(peer_id, address, runtime.now(), deadline=deadline):
                carried = True
                log.info("no direct answer; trying through TURN", extra={"peer_id": str(peer_id)})
                runtime.pump()
                await _wait_until(fut, min(runtime.now() + timeout / 3, deadline))
                if fut.done():
                    return True
        keyed = relays.keyed_relay()
        if keyed is None:
            unusable = relays.keyed_unusable()
            if unusable is not None:
                notes.append(unusable)
            return carried  # a TURN route keeps carrying the attempt until the deadline
        runtime.routes.pop(address, None)
        relays.forget(address)
        if endpoint.redirect(peer_id, RelayAddress(keyed, peer_id), runtime.now(), deadline=deadline):
            log.info("trying through the keyed relay", extra={"peer_id": str(peer_id), "relay": keyed})
            runtime.pump()
            return True
        return carried

    def candidates(self) -> list[dict[str, str]]:
        """Addresses peers may reach this node at: host, server-reflexive and relayed candidates."""
        out = [{"type": "host", "address": str(a)} for a in self.listen_addresses]
        if self._relays is not None:
            out.extend(self._relays.candidates())
        return out

    @property
    def announced_nat_type(self) -> str:
        """The NAT type this node tells its peers with its candidates: netcheck's verdict, taken up
        within ``CANDIDATE_REFRESH`` seconds of a report, or what :meth:`set_nat_type` gave; ""
        until then."""
        return self._endpoint.nat_type if self._endpoint is not None else ""

    def set_nat_type(self, description: str) -> None:
        """What NAT discovery (netcheck) found about our NAT; peers see it, and ``reason`` cites it."""
        self._nat_type = description[:48]
        self._nat_type_set = True  # given by hand: netcheck results no longer override it
        self._refresh_candidates()

    def _traversal_candidates(self) -> list[Candidate]:
        """Our candidates for NAT traversal: the listen addresses (the interface addresses when
        listening on a wildcard), then what the relays report."""
        if self._runtime is None:
            return []
        bound = self._runtime.local_address
        out = [Candidate(CandidateType.HOST, a) for a in host_addresses(bound, include_loopback=False)]
        if self._relays is not None:
            for entry in self._relays.candidates():
                kind = _CANDIDATE_TYPES.get(entry["type"])
                try:
                    address = parse_address(entry["address"])
                except InvalidAddress:
                    continue
                if kind is not None:
                    out.append(Candidate(kind, address))
        return out

    def _refresh_candidates(self) -> None:
        runtime, endpoint = self._runtime, self._endpoint
        if runtime is None or endpoint is None:
            return
        candidates = self._traversal_candidates()
        if tuple(candidates) != endpoint.local_candidates or self._nat_type != endpoint.nat_type:
            endpoint.set_local_candidates(candidates, self._nat_type, runtime.now())
            runtime.pump()

    async def _keep_candidates_current(self) -> None:
        while not self._stopping:
            await asyncio.sleep(CANDIDATE_REFRESH)
            report = self._netcheck.last if self._netcheck is not None else None
            if report is not None and report.error is None and not self._nat_type_set:
                self._nat_type = report.nat_type[:48]  # what netcheck measured, told to peers
            self._refresh_candidates()

    def relay_status(self) -> dict[str, Any]:
        return self._relays.status() if self._relays is not None else {}

    def _resolve_target(self, peer: PeerId | str, addr: str | Address | None) -> PeerAddress:
        if isinstance(peer, str):
            if "@" in peer or (addr is None and ":" in peer):
                target = parse_peer_address(peer) if "@" in peer else PeerAddress(parse_address(peer))
                if addr is not None:
                    raise InvalidAddress("give the address either in PEERID@HOST:PORT or as addr, not both")
                return target
            peer = PeerId.from_text(peer)
        if addr is None:
            raise PeerNotFound(f"no address known for {peer}: connect with PEERID@HOST:PORT")
        address = addr if isinstance(addr, Address) else parse_address(addr, allow_zero_port=False)
        return PeerAddress(address, peer)

    async def _probe(self, address: Address, deadline: float) -> PeerId:
        runtime, endpoint = self._require_running()
        nonce = endpoint.probe_identity(address)
        fut: asyncio.Future[PeerId | None] = asyncio.get_running_loop().create_future()
        self._probe_waiters[nonce] = fut
        endpoint.start_probe(nonce, runtime.now())
        runtime.pump()
        try:
            peer = await asyncio.wait_for(fut, max(deadline - runtime.now(), 0.0))
        except TimeoutError:
            peer = None
        finally:
            self._probe_waiters.pop(nonce, None)
        if peer is None:
            raise ConnectionFailed(f"no mesh node answered at {address}")
        return peer

    def get_connection(self, peer: PeerId) -> Connection | None:
        conn = self._connections.get(peer)
        return conn if conn is not None and not conn.is_closed else None

    def connections(self) -> list[Connection]:
        return [c for c in self._connections.values() if not c.is_closed]

    def get_peers(self) -> list[PeerInfo]:
        if self._endpoint is None:
            return []
        wall = time.time() - (self._runtime.now() if self._runtime else 0.0)
        peers = []
        for snap in self._endpoint.snapshots():
            if snap.state is not PeerState.CONNECTED:
                continue  # connecting, or closed and only lingering to acknowledge the CLOSE
            peers.append(
                PeerInfo(
                    peer_id=snap.peer_id,
                    address=snap.address,
                    state=_STATE_MAP[snap.state],
                    path="direct" if snap.path == "direct" else "relay",
                    via=snap.path,
                    reason=self._path_reason(snap),
                    rtt=snap.rtt,
                    initiator=snap.initiator,
                    connected_at=(snap.connected_at or 0.0) + wall,
                    datagram_size=snap.datagram_size,
                    bytes_sent=snap.bytes_sent,
                    bytes_received=snap.bytes_received,
                    messages_sent=snap.messages_sent,
                    messages_received=snap.messages_received,
                )
            )
        return peers

    async def broadcast(self, data: bytes) -> int:
        """Send ``data`` to every connected peer; returns how many it was queued for."""
        conns = self.connections()
        results = await asyncio.gather(*(c.send(data) for c in conns), return_exceptions=True)
        return sum(1 for r in results if not isinstance(r, BaseException))

    async def ping(self, peer: PeerId | str, *, timeout: float = 5.0) -> PingResult:
        runtime, endpoint = self._require_running()
        peer_id = PeerId.from_text(peer) if isinstance(peer, str) else peer
        if self.get_connection(peer_id) is None:
            raise PeerNotFound(f"not connected to {peer_id}")
        token = endpoint.ping(peer_id, runtime.now())
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._ping_waiters[(peer_id, token)] = fut
        runtime.schedule_flush()
        try:
            rtt = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise ConnectionFailed(f"no answer to ping from {peer_id} within {timeout:g}s") from None
        finally:
            self._ping_waiters.pop((peer_id, token), None)
        snap = endpoint.snapshot(peer_id)
        if snap is None:
            return PingResult(rtt=rtt, path="direct")
        return PingResult(
            rtt=rtt,
            path="direct" if snap.path == "direct" else "relay",
            reason=self._path_reason(snap),
            via=snap.path,
        )

    def path_info(self, peer: PeerId) -> tuple[str, str | None]:
        """How packets to ``peer`` travel (``direct``, ``turn`` or ``keyed``) and, when relayed, why."""
        snap = self._endpoint.snapshot(peer) if self._endpoint is not None else None
        if snap is None:
            return "direct", None
        return snap.path, self._path_reason(snap)

    def _path_reason(self, snap: PeerSnapshot) -> str | None:
        """Why the connection is relayed; on the keyed relay also why TURN did not carry it."""
        reason = snap.path_reason
        note = self._path_notes.get(snap.peer_id)
        if note is None or snap.path != "keyed":
            return reason
        return f"{reason}; {note}" if reason else note

    def _path_of(self, address: PathAddress, peer: PeerId | None = None) -> str:
        """``relay`` when a relay carries the traffic (keyed relay, or a TURN route), else ``direct``."""
        if peer is not None and self._endpoint is not None:
            snap = self._endpoint.snapshot(peer)
            if snap is not None:
                return "direct" if snap.path == "direct" else "relay"
        if isinstance(address, RelayAddress):
            return "relay"
        if self._runtime is not None and address in self._runtime.routes:
            return "relay"
        return "direct"

    def on_connection(self, callback: Callable[[ConnectionEvent], object]) -> Callable[[], None]:
        """Call ``callback`` on every connection state change; returns a function that unsubscribes."""
        self._callbacks.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return unsubscribe

    def stats(self) -> dict[str, int]:
        if self._endpoint is None:
            return {}
        counters = dict(self._endpoint.counters)
        if self._runtime is not None:
            counters["datagrams_received"] = self._runtime.datagrams_received
            counters["datagrams_sent"] = self._runtime.datagrams_sent
            counters["bytes_received"] = self._runtime.bytes_received
            counters["bytes_sent"] = self._runtime.bytes_sent
        counters["connections"] = len(self.connections())
        return counters

    # -- used by Connection --------------------------------------------------------------------

    def _can_send(self, peer: PeerId) -> bool:
        if self._endpoint is None:
            return True
        try:
            return self._endpoint.can_send(peer)
        except MeshError:
            return True  # send() will raise the precise error

    def _send(self, peer: PeerId, data: bytes) -> None:
        runtime, endpoint = self._require_running()
        try:
            endpoint.send(peer, data, runtime.now())
        except PeerNotFound:
            raise ConnectionClosed(f"connection to {peer} is closed", "closed") from None
        runtime.schedule_flush()

    def _consumed(self, peer: PeerId, nbytes: int) -> None:
        endpoint, runtime = self._endpoint, self._runtime
        if endpoint is not None and runtime is not None and endpoint.consume(peer, nbytes):
            runtime.schedule_flush()

    def _close(self, peer: PeerId) -> None:
        if self._endpoint is None or self._runtime is None:
            return
        self._endpoint.close(peer, self._runtime.now())
        self._runtime.pump()

    # -- events from the core ------------------------------------------------------------------

    def _on_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.MessageReceived):
            conn = self._connections.get(event.peer_id)
            if conn is not None:
                conn._deliver(event.data)
        elif isinstance(event, ev.SendReady):
            conn = self._connections.get(event.peer_id)
            if conn is not None:
                conn._set_writable()
        elif isinstance(event, ev.PongReceived):
            fut = self._ping_waiters.pop((event.peer_id, event.token), None)
            if fut is not None and not fut.done():
                fut.set_result(event.rtt)
        elif isinstance(event, ev.PeerConnected):
            self._on_connected(event)
        elif isinstance(event, ev.PeerDisconnected):
            self._on_disconnected(event)
        elif isinstance(event, ev.ConnectFailed):
            self._fail_waiters(
                _HandshakeTimedOut(f"cannot connect to {event.peer_id}: {event.reason}"), event.peer_id
            )
            self._notify(ConnectionEvent(event.peer_id, ConnectionState.FAILED, event.address, event.reason))
        elif isinstance(event, ev.AddressChanged):
            conn = self._connections.get(event.peer_id)
            if conn is not None:
                conn._set_address(event.new)
                conn.path = self._path_of(event.new, event.peer_id)
            log.info("peer address changed", extra={"peer_id": str(event.peer_id), "address": str(event.new)})
        elif isinstance(event, ev.PathChanged):
            conn = self._connections.get(event.peer_id)
            if conn is not None:
                conn.path = "direct" if event.kind == "direct" else "relay"
            log.info(
                "path changed",
                extra={
                    "peer_id": str(event.peer_id),
                    "path": event.kind,
                    "address": str(event.address),
                    "reason": event.reason,
                },
            )
        elif isinstance(event, ev.IdentityResolved):
            fut2 = self._probe_waiters.pop(event.nonce, None)
            if fut2 is not None and not fut2.done():
                fut2.set_result(event.peer_id)

    def _on_connected(self, event: ev.PeerConnected) -> None:
        old = self._connections.get(event.peer_id)
        if old is not None:
            old._mark_closed("replaced by a new connection")
        conn = Connection(self, event.peer_id, event.address, initiator=event.initiator)
        conn.path = self._path_of(event.address, event.peer_id)
        keyed = self._relays.keyed_relay() if self._relays is not None else None
        if keyed is not None and self._endpoint is not None and conn.path == "direct":
            # A direct connection can still fall back: to the keyed relay, if its path dies.
            self._endpoint.set_relay_path(event.peer_id, RelayAddress(keyed, event.peer_id))
        self._connections[event.peer_id] = conn
        for fut in self._connect_waiters.pop(event.peer_id, []):
            if not fut.done():
                fut.set_result(conn)
        self._notify(ConnectionEvent(event.peer_id, ConnectionState.CONNECTED, event.address))

    def _on_disconnected(self, event: ev.PeerDisconnected) -> None:
        conn = self._connections.pop(event.peer_id, None)
        self._path_notes.pop(event.peer_id, None)
        address = conn.remote_address if conn is not None else None
        udp = udp_address(address) if address is not None else None
        if udp is not None and self._runtime is not None:
            self._runtime.routes.pop(udp, None)
            if self._relays is not None:
                self._relays.forget(udp)
        if conn is not None:
            conn._mark_closed(event.reason)
        for key, fut in list(self._ping_waiters.items()):
            if key[0] == event.peer_id and not fut.done():
                fut.set_exception(ConnectionClosed(f"connection to {event.peer_id} closed", event.reason))
        state = ConnectionState.CLOSED if event.clean else ConnectionState.FAILED
        self._notify(ConnectionEvent(event.peer_id, state, address, event.reason))

    def _fail_waiters(self, error: MeshError, peer: PeerId | None = None) -> None:
        for key in list(self._connect_waiters):
            if peer is None or key == peer:
                for fut in self._connect_waiters.pop(key):
                    if not fut.done():
                        fut.set_exception(error)

    def _notify(self, event: ConnectionEvent) -> None:
        for callback in list(self._callbacks):
            try:
                callback(event)
            except Exception:
                log.exception("on_connection callback failed")

    # -- netcheck and discovery ------------------------------------------------------------------

    async def netcheck(self, refresh: bool = False) -> NetcheckReport:
        """What this node knows about its network (NAT mapping and filtering, public addresses,
        hairpinning, relay latency, UDP blocked): the last report at once, or a new run with
        ``refresh`` (or when none has finished yet). Raises :class:`~coremesh.netcheck.service.NetcheckError`
        when no STUN server is configured (``stun_servers``, or ``relays``)."""
        from ..errors import NetcheckError

        self._require_running()
        if self._netcheck is None:
            raise NetcheckError(
                "netcheck needs a STUN server: configure stun_servers or relays (--stun-server / --relay)"
            )
        return await self._netcheck.report(refresh)

    def with_discovery(self, service: DiscoveryService) -> MeshNode:
        """Register a discovery service (started and stopped with the node; asked for addresses when
        connecting to a bare PeerId). Returns the node, for chaining."""
        if service not in self._discovery:
            self._discovery.append(service)
        return self

    @property
    def discovery_services(self) -> list[DiscoveryService]:
        return list(self._discovery)

    async def discovered_peers(self) -> list[DiscoveredPeer]:
        """Every peer the registered discovery services currently know (other than this node)."""
        found: list[DiscoveredPeer] = []
        for service in list(self._discovery):
            try:
                peers = await asyncio.wait_for(service.discover_peers(), DISCOVERY_TIMEOUT)
            except (MeshError, OSError, TimeoutError) as exc:
                log.warning("discovery failed", extra={"service": service.name, "error": str(exc)})
                continue
            found.extend(p for p in peers if p.peer_id != self.peer_id)
        return found

    async def _discovered_addresses(self, peer_id: PeerId) -> list[Address]:
        """Addresses the discovery sources give for ``peer_id``, best first, those this socket can
        reach only. The hook other sources (the DHT) plug into."""
        runtime, _ = self._require_running()
        out: list[Address] = []
        for peer in await self.discovered_peers():
            if peer.peer_id != peer_id:
                continue
            for address in peer.addresses:
                if address not in out and runtime.unreachable_reason(address) is None:
                    out.append(address)
        return out

    async def _start_netcheck_and_discovery(self) -> None:
        runtime, _ = self._require_running()
        servers = self.config.stun_addresses
        if servers:
            from ..netcheck.service import Netchecker

            relays = self._relays
            interval = self.config.netcheck_interval
            self._netcheck = Netchecker(
                runtime,
                servers,
                keyed_urls=self.config.keyed_relay_urls,
                keyed_registered=lambda: relays is not None and relays.keyed_relay() is not None,
                interval=interval or 300.0,
                # between runs, a cheap check for a changed address every quarter interval (<= 30 s)
                watch_interval=max(0.5, min(30.0, interval / 4)) if interval else 30.0,
                rng=self._rng,
            )
            self._netcheck.start(periodic=bool(interval))
        if self.config.mdns and not any(s.name == "mdns" for s in self._discovery):
            from ..discovery.mdns import MdnsDiscovery

            self._discovery.append(MdnsDiscovery(interfaces=self.config.mdns_interfaces))
        for service in list(self._discovery):
            try:
                await service.start(self)
            except (MeshError, OSError) as exc:
                log.warning(
                    "discovery service did not start", extra={"service": service.name, "error": str(exc)}
                )

    async def _stop_netcheck_and_discovery(self) -> None:
        for service in list(self._discovery):
            try:
                await service.stop()
            except Exception:
                log.exception("discovery service %s failed to stop", service.name)
        if self._netcheck is not None:
            await self._netcheck.stop()
            self._netcheck = None

    # -- helpers ------------------------------------------------------------------------------

    def _require_running(self) -> tuple[UdpRuntime, Endpoint]:
        if self._runtime is None or self._endpoint is None:
            raise LocalProtocolError("node is not started (use 'async with MeshNode(...)' or await start())")
        return self._runtime, self._endpoint

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _dial_forever(self, entry: PeerAddress) -> None:
        """Keep a pinned bootstrap peer connected, with exponential backoff between attempts."""
        delay = 0.5
        while not self._stopping:
            assert entry.peer_id is not None
            conn = self.get_connection(entry.peer_id)
            if conn is None:
                try:
                    conn = await self.connect(entry.peer_id, entry.address)
                    delay = 0.5
                except MeshError as exc:
                    log.warning("bootstrap peer unreachable", extra={"peer": str(entry), "error": str(exc)})
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)
                    continue
            await conn.wait_closed()
            await asyncio.sleep(delay)


def _is_loopback(address: Address) -> bool:
    try:
        return ipaddress.ip_address(address.host).is_loopback
    except ValueError:
        return False


class _HandshakeTimedOut(ConnectionFailed):
    """The endpoint gave a connect up at its deadline; ``connect`` says what it tried instead."""


async def _wait_until(fut: asyncio.Future[Any], deadline: float) -> None:
    """Wait for ``fut`` until the loop's clock reads ``deadline`` (at once if past)."""
    remaining = deadline - asyncio.get_running_loop().time()
    if remaining > 0 and not fut.done():
        await asyncio.wait({fut}, timeout=remaining)


async def _within(aw: Coroutine[Any, Any, T], deadline: float, default: T) -> T:
    """``aw``'s result, or ``default`` if it does not finish by ``deadline``."""
    try:
        return await asyncio.wait_for(aw, max(deadline - asyncio.get_running_loop().time(), 0.0))
    except TimeoutError:
        return default
