"""``Dialer``: how a node connects to a peer, within one deadline.

``connect`` tries, in order of cost and all by the same deadline: the address it was given (after
an identity probe when only an address is known, and with one alongside the handshake to tell
"wrong peer" from "nobody there"), the keyed relay racing the direct attempt (happy eyeballs), then
the relays in turn (a TURN allocation, then the keyed relay). A bare PeerId is first found through
the :class:`~.finder.PeerFinder`, its addresses tried in turn. The errors say what was tried and
why each path failed. ``dial_forever`` keeps a pinned bootstrap peer connected.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from ..addr import Address, parse_address
from ..config import MeshConfig, PeerAddress, parse_peer_address
from ..endpoint.paths import PathAddress, RelayAddress, RoutedAddress
from ..endpoint.states import PeerState
from ..errors import (
    ConnectionFailed,
    InvalidAddress,
    LocalProtocolError,
    MeshError,
    NatTraversalFailed,
    PeerIdentityMismatch,
    PeerNotFound,
)
from ..identity import PeerId
from ..routing.overlay import MAX_SOURCE_ROUTE
from .connection import Connection, ConnectionEvent, ConnectionState
from .finder import PeerFinder
from .parts import NodeParts
from .registry import ConnectionRegistry, HandshakeTimedOut

log = logging.getLogger("coremesh.node")
T = TypeVar("T")

RACE_HEAD_START = 0.25  # seconds the direct attempt runs alone before the keyed relay joins in
DISCOVERY_POLL = 0.1  # seconds between asking the discovery services again while connecting
MAX_DISCOVERED_TRIES = 8  # addresses of one peer tried when connecting by PeerId alone


class Dialer:
    """Connects this node to peers: direct, identity probe, relay fallback, one deadline."""

    def __init__(
        self, parts: NodeParts, config: MeshConfig, registry: ConnectionRegistry, finder: PeerFinder
    ) -> None:
        self._parts = parts
        self._config = config
        self._registry = registry
        self._finder = finder

    async def connect(
        self,
        peer: PeerId | str,
        addr: str | Address | None = None,
        *,
        timeout: float | None = None,
        path: str = "auto",
        route: Sequence[PeerId] = (),
    ) -> Connection:
        """See :meth:`coremesh.MeshNode.connect`."""
        if path not in ("auto", "direct", "relay", "routed"):
            raise ValueError(f"path must be 'auto', 'direct', 'relay' or 'routed', not {path!r}")
        if route and (path != "routed" or addr is not None):
            raise ValueError("a source route is for path='routed' by PeerId alone")
        timeout = self._config.connect_timeout if timeout is None else timeout
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        runtime, _ = self._parts.require_running()
        deadline = runtime.now() + timeout
        if addr is None and (isinstance(peer, PeerId) or (":" not in peer and "@" not in peer)):
            wanted = peer if isinstance(peer, PeerId) else PeerId.from_text(peer)
            known = self._registry.get(wanted)
            if known is not None:
                return known
            if path == "routed":
                return await self._connect_routed(wanted, deadline, tuple(route))
            if self._finder.has_dht or self._finder.services:
                return await self._connect_discovered(wanted, deadline=deadline, timeout=timeout, path=path)
            _, endpoint = self._parts.require_running()
            if path == "auto" and endpoint.overlay.next_hop(wanted) is not None:
                return await self._connect_routed(wanted, deadline)  # no address to try, but a route
        return await self._connect_to(_resolve_target(peer, addr), deadline, path, timeout)

    async def dial_forever(self, entry: PeerAddress) -> None:
        """Keep a pinned bootstrap peer connected, with exponential backoff between attempts."""
        delay = 0.5
        while not self._parts.stopping:
            assert entry.peer_id is not None
            conn = self._registry.get(entry.peer_id)
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

    async def _connect_to(
        self, target: PeerAddress, deadline: float, path: str, timeout: float, *, race_routed: bool = False
    ) -> Connection:
        """Connect to one address, giving up at ``deadline``: ``timeout`` after the call began.

        ``race_routed``: also race a routed attempt (as ``path="auto"`` does) while this one address
        is tried direct only (a PeerId's earlier candidates)."""
        runtime, endpoint = self._parts.require_running()
        reason = runtime.unreachable_reason(target.address)
        if reason is not None:
            raise ConnectionFailed(reason)
        probed = target.peer_id is None
        if target.peer_id is None:
            target = PeerAddress(target.address, await self._probe(target.address, deadline))
        peer_id = target.peer_id
        assert peer_id is not None
        existing = self._registry.get(peer_id)
        if existing is not None:
            return existing
        relays = self._parts.relays
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
        fut = self._registry.wait_connected(peer_id)
        try:
            endpoint.connect(
                peer_id,
                first,
                runtime.now(),
                timeout=max(deadline - runtime.now(), 0.0),
                pinned=path == "relay",
            )
        except LocalProtocolError as exc:
            self._registry.stop_waiting(peer_id, fut)
            raise ConnectionFailed(str(exc)) from None
        self._registry.notify(ConnectionEvent(peer_id, ConnectionState.CONNECTING, first))
        # Who answers at the address? A node there with another identity drops our initiation
        # unread (mac1), so only an identity probe can tell "wrong peer" from "nobody there".
        # With a relay to fall back on (path="auto"), another identity at the address only means the
        # address is stale: the relays may still reach the peer, so the connect goes on.
        mismatch: list[PeerIdentityMismatch] = []
        present: list[PeerId] = []  # the identity probe found the peer at the address
        check = (
            None
            if probed or path == "relay"
            else self._check_identity(
                target.address,
                peer_id,
                fut,
                mismatch if path == "auto" and has_relay else None,
                present=present,
            )
        )
        runtime.pump()
        relayed = path == "relay"  # whether some relay path carried an initiation
        fell_back = False
        try:
            keyed_relay = relays.keyed_relay() if relays is not None else None
            routed_ok = path == "auto" or race_routed
            if routed_ok and keyed_relay is None and endpoint.overlay.next_hop(peer_id) is not None:
                # Through other peers (the overlay): after the direct attempt's head start, the
                # same initiation also goes routed; NAT traversal then moves a routed connection
                # to a direct path when the NATs allow it (rendezvous through a shared peer).
                await _wait_until(fut, min(runtime.now() + RACE_HEAD_START, deadline))
                if not fut.done() and endpoint.also_try(peer_id, RoutedAddress(peer_id), runtime.now()):
                    relayed = True
                    notes.append("tried through other peers (routed)")
                    runtime.pump()
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
                        self._registry.set_path_note(peer_id, "; ".join(notes))
                    return conn
                if not isinstance(error, HandshakeTimedOut):
                    raise error
            # Nothing answered in time: say what was tried, and why each relay could not help.
            notes[:0] = [str(m) for m in mismatch]
            if mismatch and not relayed:
                raise PeerIdentityMismatch("; ".join(notes))
            if path == "auto" and not has_relay and relays is not None:
                fell_back = True  # relays are configured, but none could even be tried
                notes.extend(why for why in (relays.turn_unusable(), relays.keyed_unusable()) if why)
            raise _timeout_error(
                peer_id,
                target.address,
                timeout,
                path,
                relayed=relayed,
                fell_back=fell_back,
                notes=notes,
                present=bool(present),
            )
        finally:
            if check is not None:
                check.cancel()
            self._registry.stop_waiting(peer_id, fut)
            if not fut.done():
                fut.cancel()  # timed out, or cancelled from outside: stop the attempt too
                self._abandon(peer_id, target.address, "connect timed out")
            elif not fut.cancelled() and fut.exception() is not None:
                self._abandon(peer_id, target.address, "connect failed")

    def _check_identity(
        self,
        address: Address,
        peer_id: PeerId,
        fut: asyncio.Future[Connection],
        mismatch: list[PeerIdentityMismatch] | None = None,
        *,
        present: list[PeerId] | None = None,
    ) -> asyncio.Future[PeerId | None] | None:
        """Ask ``address`` who it is while the handshake runs; if the node there names another
        peer id, fail ``fut`` with :class:`PeerIdentityMismatch` at once, or, given a ``mismatch``
        list (a relay may still reach the peer), add the error there. Returns the probe's future
        (cancel it when the connect ends), or None when no probe could be sent."""
        runtime, endpoint = self._parts.require_running()
        try:
            nonce = endpoint.probe_identity(address)
        except LocalProtocolError:
            return None  # too many probes in flight: the handshake alone decides
        probe = self._registry.wait_identity(nonce)

        def answered(done: asyncio.Future[PeerId | None]) -> None:
            self._registry.stop_waiting_identity(nonce)
            found = None if done.cancelled() else done.result()
            if found == peer_id and present is not None:
                present.append(found)
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

    async def _probe(self, address: Address, deadline: float) -> PeerId:
        """The peer id of the node answering at ``address``: ConnectionFailed if none by ``deadline``."""
        runtime, endpoint = self._parts.require_running()
        nonce = endpoint.probe_identity(address)
        fut = self._registry.wait_identity(nonce)
        endpoint.start_probe(nonce, runtime.now())
        runtime.pump()
        try:
            peer = await asyncio.wait_for(fut, max(deadline - runtime.now(), 0.0))
        except TimeoutError:
            peer = None
        finally:
            self._registry.stop_waiting_identity(nonce)
        if peer is None:
            raise ConnectionFailed(f"no mesh node answered at {address}")
        return peer

    def _abandon(self, peer_id: PeerId, address: Address, reason: str) -> None:
        """Stop a connect attempt of ours that nobody waits for any more (no late connection)."""
        runtime, endpoint = self._parts.runtime, self._parts.endpoint
        if runtime is None or endpoint is None or self._registry.is_awaited(peer_id):
            return  # another connect() still waits for this peer
        snap = endpoint.snapshot(peer_id)
        if snap is None or snap.state is not PeerState.CONNECTING or not snap.initiator:
            return
        endpoint.close(peer_id, runtime.now())
        endpoint.clear_turn_route(address)
        if self._parts.relays is not None:
            self._parts.relays.forget(address)
        runtime.pump()
        self._registry.notify(ConnectionEvent(peer_id, ConnectionState.FAILED, address, reason))

    async def _turn_route(self, address: Address, deadline: float) -> str | None:
        """Route ``address`` through a TURN allocation (channel bound): None once it is, else why
        no TURN server can carry it (one line naming the relay, e.g. its 403 refusal)."""
        runtime, endpoint = self._parts.require_running()
        relays = self._parts.relays
        link = relays.turn_link() if relays is not None else None
        if link is None:
            return (relays.turn_unusable() if relays is not None else None) or "no TURN relay is configured"
        refused = await link.bind(address, min(1.0, max(deadline - runtime.now(), 0.0)))
        if refused is not None:
            return refused
        endpoint.set_turn_route(address, link.server)
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
        runtime, endpoint = self._parts.require_running()
        relays = self._parts.relays
        if relays is None:
            return False
        carried = False  # a TURN allocation carried the initiation (the peer may just be offline)
        if relays.turn and endpoint.turn_route(address) is None and not isinstance(tried, RelayAddress):
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
        endpoint.clear_turn_route(address)
        relays.forget(address)
        if endpoint.redirect(peer_id, RelayAddress(keyed, peer_id), runtime.now(), deadline=deadline):
            log.info("trying through the keyed relay", extra={"peer_id": str(peer_id), "relay": keyed})
            runtime.pump()
            return True
        return carried

    async def _connect_routed(
        self, peer_id: PeerId, deadline: float, route: tuple[PeerId, ...] = ()
    ) -> Connection:
        """Connect through the overlay only: an end-to-end session by PeerId, carried by peers
        along the route table's choice, or along ``route`` (a source route: the hops to take, the
        destination last or left out)."""
        runtime, endpoint = self._parts.require_running()
        if route and route[-1] != peer_id:
            route = (*route, peer_id)
        if len(route) > MAX_SOURCE_ROUTE + 1 or len(set(route)) != len(route) or endpoint.peer_id in route:
            raise ValueError(
                f"a source route names at most {MAX_SOURCE_ROUTE + 1} distinct hops, this node not among them"
            )
        if endpoint.overlay.next_hop(peer_id, route) is None:
            first = f"{route[0]} is not a neighbour" if route else "no route"
            raise ConnectionFailed(f"cannot route to {peer_id} through the mesh's peers: {first}")
        fut = self._registry.wait_connected(peer_id)
        try:
            endpoint.connect(
                peer_id,
                RoutedAddress(peer_id, route),
                runtime.now(),
                timeout=max(deadline - runtime.now(), 0.0),
            )
        except LocalProtocolError as exc:
            self._registry.stop_waiting(peer_id, fut)
            raise ConnectionFailed(str(exc)) from None
        self._registry.notify(ConnectionEvent(peer_id, ConnectionState.CONNECTING, RoutedAddress(peer_id)))
        runtime.pump()
        try:
            await _wait_until(fut, deadline)
            if fut.done():
                error = fut.exception()
                if error is None:
                    return fut.result()
                if not isinstance(error, HandshakeTimedOut):
                    raise error
            raise ConnectionFailed(f"no routed handshake response from {peer_id} in time")
        finally:
            self._registry.stop_waiting(peer_id, fut)
            if not fut.done():
                fut.cancel()
                endpoint.close(peer_id, runtime.now())

    async def _connect_discovered(
        self, peer_id: PeerId, *, deadline: float, timeout: float, path: str
    ) -> Connection:
        """Find ``peer_id``'s addresses, then connect to them in turn, all by ``deadline``.

        The registered discovery services (mDNS: local and quick) are asked first, then the DHT.
        When neither knows the peer but a service is registered, the services are asked again
        until the deadline: an mDNS browse answers within a second or so."""
        runtime, _ = self._parts.require_running()
        finder = self._finder
        candidates = await _within(finder.discovered_addresses(peer_id), deadline, [])
        not_found: PeerNotFound | None = None
        if finder.has_dht:
            try:
                found = await asyncio.wait_for(finder.resolve(peer_id), max(deadline - runtime.now(), 0.0))
            except PeerNotFound as exc:
                not_found = exc
            except TimeoutError:
                not_found = PeerNotFound(f"no record of {peer_id} found within {timeout:.3g}s")
            else:
                candidates += [
                    a for a in found if a not in candidates and runtime.unreachable_reason(a) is None
                ]
        while not candidates and finder.services and runtime.now() + DISCOVERY_POLL < deadline:
            await asyncio.sleep(DISCOVERY_POLL)
            candidates = await _within(finder.discovered_addresses(peer_id), deadline, [])
        endpoint = self._parts.endpoint
        if not candidates and path == "auto" and endpoint is not None and endpoint.overlay.next_hop(peer_id):
            return await self._connect_routed(peer_id, deadline)  # no address, but a route
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
                    race_routed=path == "auto",
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


def _resolve_target(peer: PeerId | str, addr: str | Address | None) -> PeerAddress:
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


def _timeout_error(
    peer_id: PeerId,
    address: Address,
    timeout: float,
    path: str,
    *,
    relayed: bool,
    fell_back: bool,
    notes: list[str],
    present: bool = False,
) -> ConnectionFailed:
    """The error for a connect nothing answered in time: what was tried, and why it failed."""
    where = f"cannot connect to {peer_id}"
    within = f"within {timeout:.3g}s"
    why = f" ({'; '.join(notes)})" if notes else ""
    if path == "relay":
        return ConnectionFailed(f"{where}: no answer through the relay {within}{why}")
    direct = f"no handshake response from {address} {within}"
    if fell_back and not relayed and notes:
        # The direct attempt failed and every relay that could have carried the connection
        # was refused or unusable: no path through the NATs.
        return NatTraversalFailed(f"{where}: {direct}, and no relay could carry traffic: {'; '.join(notes)}")
    if relayed:
        return ConnectionFailed(f"{where}: {direct}, nor through the relay{why}")
    if present:  # the node is there (its identity probe answered), but not its handshake
        return ConnectionFailed(
            f"{where}: {direct}, though {peer_id} answers there: it refuses this node (its access "
            f"lists) or is at its connection limit{why}"
        )
    return ConnectionFailed(f"{where}: {direct} (no mesh node answering there, or blocked on the way){why}")


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
