"""The endpoint's side of overlay routing: neighbours, forwarding, routed connections, probes.

The route table (:mod:`coremesh.routing.table`) and broadcast/multicast (:mod:`coremesh.routing.flood`)
are cores of their own; this module is where the endpoint meets them:

* **Neighbours** are the peers with an established connection that does not itself go through the
  overlay. :meth:`Overlay.reconcile` keeps the table's links in step with the connections (at once
  when one comes up or ends, so a dead link is withdrawn without waiting), and a sample timer feeds
  each link's measured RTT and loss to the table.
* **Sending** to a :class:`~coremesh.endpoint.paths.RoutedAddress` (an end-to-end connection through
  other peers: its own Noise session and reliable stream) wraps the packet in a ROUTED packet and
  seals it into the next hop's session (:meth:`Overlay.wrap`).
* **Receiving** an overlay packet from a neighbour: a ROUTED packet for us is fed back to the
  endpoint as if it arrived from ``RoutedAddress(source)``; one for another peer is forwarded with its
  hop limit decremented (or along its source route); route updates go to the table, broadcast,
  multicast and membership messages to the flood core.
* **Route probes** (traceroute): a probe whose hop limit runs out is answered by the peer where it
  ran out, a probe that arrives by its destination; answers travel back routed.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from ..access.acl import PeerAcl
from ..errors import DecodeError
from ..identity import PeerId, verify_signature
from ..routing import overlay as ov
from ..routing.flood import Delivery, Flood
from ..routing.table import Route, RoutingConfig, RoutingTable
from . import events as ev
from .paths import PathAddress, RoutedAddress
from .states import ConnState

if TYPE_CHECKING:
    from .endpoint import Endpoint
    from .peer import PeerConnection

SAMPLE_INTERVAL: Final = 1.0  # seconds between link measurements fed to the table
LIVENESS_CHECKS: Final = 4  # silent links are looked for this many times per hello interval
# Neighbour liveness (Babel's hellos, on the hop connection's own PINGs): a neighbour we heard
# nothing from for ``config.hello_interval`` (1 s) is pinged; after DEAD_AFTER_HELLOS times that of
# silence (three missed hellos) its link is withdrawn from the table, long before the connection's
# idle timeout ends it, and it comes back as soon as the neighbour is heard again. A node with many
# neighbours (a bootstrap) hellos each less often, so as to send at most HELLO_RATE_MAX a second.
DEAD_AFTER_HELLOS: Final = 3.5
HELLO_RATE_MAX: Final = 200.0
MAX_PROBES: Final = 256

# A route probe's inner packet: kind | nonce:8 | sent hop limit
PROBE_REQUEST: Final = 0
PROBE_EXPIRED: Final = 1  # the hop limit ran out at the answering peer
PROBE_REACHED: Final = 2  # the answering peer is the destination
_PROBE = struct.Struct("!BQB")


class Overlay:
    """Neighbours, forwarding and probes of one endpoint (see the module docstring)."""

    def __init__(self, endpoint: Endpoint, now: float) -> None:
        self.endpoint = endpoint
        ep = endpoint
        self.forwarding = ep.config.forwarding
        self.configured_hello = ep.config.hello_interval
        self.hello_interval = self.configured_hello
        self.link_dead_after = DEAD_AFTER_HELLOS * self.hello_interval
        self.table = RoutingTable(
            ep.peer_id,
            ep.identity.sign,
            RoutingConfig(),
            verify=verify_signature,
            rng=ep.rng,
            now=now,
            wall_offset=ep.wall_offset,
        )
        self.flood = Flood(
            ep.peer_id,
            ep.identity.sign,
            self.table,
            verify=verify_signature,
            now=now,
            wall_offset=ep.wall_offset,
        )
        self.neighbours: set[PeerId] = set()
        # The table or the flood core may have something to send (set whenever they were fed, by
        # touch()), so that a pump with nothing for the overlay never calls into them; and their
        # next deadline, re-read only after they were fed or drained.
        self.pending = True
        self._cores_timer: float | None = None
        self._cores_timer_stale = True
        self.check_at = now + self.hello_interval / LIVENESS_CHECKS
        self.sample_at = now + min(SAMPLE_INTERVAL, self.hello_interval)
        # The next hop each routed destination's packets last took (None: there was no route).
        self.route_changes_seen = 0
        self.hops_in_use: dict[PeerId, PeerId | None] = {}
        # Route probes in flight: nonce -> (destination, hop limit sent, when sent).
        self.probes: dict[int, tuple[PeerId, int, float]] = {}

    # -- neighbours ---------------------------------------------------------------------------

    def reconcile(self, now: float) -> None:
        """Bring the table's links in step with the established, non-routed connections."""
        current = {
            peer
            for peer, conn in self.endpoint.connections().items()
            if conn.state is ConnState.CONNECTED
            and not isinstance(conn.address, RoutedAddress)
            and now - conn.last_received <= self.link_dead_after
            and self.endpoint.acl.permits(peer)
        }
        if current == self.neighbours:
            return
        self.touch()
        for peer in self.neighbours - current:
            self.table.link_down(peer, now)
        for peer in current - self.neighbours:
            self.table.link_up(peer, now)
            self.flood.link_up(peer, now)
        self.neighbours = current
        self.hello_interval = max(self.configured_hello, len(current) / HELLO_RATE_MAX)
        self.link_dead_after = DEAD_AFTER_HELLOS * self.hello_interval

    def _sample(self, now: float) -> None:
        """Hellos to quiet neighbours, and each link's RTT and loss to the table."""
        for peer in self.neighbours:
            conn = self.endpoint.connections().get(peer)
            if conn is None:
                continue
            if now - max(conn.last_received, conn.last_ping_at) >= self.hello_interval:
                conn.last_ping_at = now
                conn.send_ping(now)
            s = conn.stream
            rtt = s.smoothed_rtt if s.min_rtt > 0 else None
            loss = s.packets_lost / s.packets_sent if s.packets_sent else 0.0
            self.table.link_sample(peer, rtt, min(loss, 1.0), now)

    # -- timers -------------------------------------------------------------------------------

    def touch(self) -> None:
        """The table or the flood core was fed: flush them at the next pump, re-read their timers."""
        self.pending = True
        self._cores_timer_stale = True

    def get_timer(self) -> float | None:
        best = min(self.sample_at, self.check_at)
        if self._cores_timer_stale:
            self._cores_timer_stale = False
            times = [t for t in (self.table.get_timer(), self.flood.get_timer()) if t is not None]
            self._cores_timer = min(times) if times else None
        if self._cores_timer is not None and self._cores_timer < best:
            best = self._cores_timer
        return best

    def handle_timer(self, now: float) -> None:
        self.touch()
        if now >= self.check_at:
            self.check_at = now + self.hello_interval / LIVENESS_CHECKS
            self.reconcile(now)
        if now >= self.sample_at:
            self.sample_at = now + min(SAMPLE_INTERVAL, self.hello_interval)
            self._sample(now)
        self.table.handle_timer(now)
        self.flood.handle_timer(now)
        self._expire_probes(now)

    # -- sending ------------------------------------------------------------------------------

    def next_hop(self, destination: PeerId, route: tuple[PeerId, ...] = ()) -> PeerId | None:
        if route:
            return route[0] if route[0] in self.neighbours else None
        try:
            hop = self.table.next_hop(destination)  # may ask the application's set_router function
        except Exception:
            # A router function that raises is an invalid choice: counted, the table's own is used.
            self.endpoint.counters["router_failed"] += 1
            routes = self.table.routes(destination)
            hop = routes[0].next_hop if routes else None
        return hop if hop in self.neighbours else None

    def wrap(self, inner: bytes, address: RoutedAddress, *, probe: bool = False, hop_limit: int = 0) -> bool:
        """Send ``inner`` to ``address.peer`` through the overlay; False (counted) when no route."""
        ep = self.endpoint
        route = address.route
        hop = self.next_hop(address.peer, route)
        if not route and address.peer in ep.connections():
            self.hops_in_use[address.peer] = hop  # (None: unroutable now; see flush_control)
        if hop is None:
            ep.counters["drop_no_route"] += 1
            return False
        packet = ov.Routed(
            destination=address.peer,
            source=ep.peer_id,
            hop_limit=hop_limit or ov.DEFAULT_HOP_LIMIT,
            inner=inner,
            source_route=route[1:] if route else (),
            probe=probe,
        )
        try:
            plaintext = ov.encode_routed(packet)
        except ValueError:  # a source route longer than the header carries
            ep.counters["drop_unencodable_route"] += 1
            return False
        if not self._send_to_neighbour(hop, plaintext):
            ep.counters["drop_no_route"] += 1
            return False
        ep.counters["routed_packets_sent"] += 1
        return True

    def _send_to_neighbour(self, neighbour: PeerId, plaintext: bytes) -> bool:
        conn = self.endpoint.connections().get(neighbour)
        if conn is None or conn.state is not ConnState.CONNECTED or conn.current is None:
            return False
        if isinstance(conn.address, RoutedAddress):
            return False  # never routed over a routed connection
        packet = conn.seal(conn.current, plaintext)
        if packet is None:
            return False
        self.endpoint.out.append((packet, conn.address))
        return True

    def flush_control(self, now: float) -> None:
        """Seal what the table and the flood core have for neighbours into their sessions."""
        self.pending = False
        self._cores_timer_stale = True
        changes = self.table.counters["route_changes"]
        if changes != self.route_changes_seen:
            self.route_changes_seen = changes
            self._follow_route_changes(now)
        for neighbour, plaintext in self.table.messages_to_send(now):
            if self._send_to_neighbour(neighbour, plaintext):
                self.endpoint.counters["route_update_bytes_sent"] += len(plaintext)
        for neighbour, plaintext in self.flood.messages_to_send(now):
            self._send_to_neighbour(neighbour, plaintext)
        while (delivery := self.flood.next_delivery()) is not None:
            self.endpoint.emit(ev.OverlayDelivered(delivery=delivery))

    def _follow_route_changes(self, now: float) -> None:
        """A routed connection whose next hop changed (a repair, a better route, a route back)
        is on a new path: its stream forgets the old path's RTT and backoff and resends what was in
        flight at once (RFC 9000 §9.4), instead of waiting out a probe timeout doubled during the
        outage."""
        for peer, conn in self.endpoint.connections().items():
            address = conn.address
            if not isinstance(address, RoutedAddress) or address.route or conn.current is None:
                continue
            if peer not in self.hops_in_use:
                continue  # nothing sent on it yet
            hop = self.table.next_hop(peer)
            last = self.hops_in_use[peer]
            self.hops_in_use[peer] = hop
            if hop is not None and hop != last and conn.state is ConnState.CONNECTED:
                conn.stream.on_path_changed(now)
                self.endpoint.mark_dirty(conn)
                self.endpoint.counters["routed_path_changes"] += 1
        for peer in [p for p in self.hops_in_use if p not in self.endpoint.connections()]:
            del self.hops_in_use[peer]

    # -- receiving ----------------------------------------------------------------------------

    def on_packet(self, conn: PeerConnection, plaintext: bytes, now: float) -> None:
        """An overlay packet from the peer of ``conn`` (authenticated by its session)."""
        ep = self.endpoint
        neighbour = conn.peer_id
        if isinstance(conn.address, RoutedAddress):  # inside an end-to-end session: not a neighbour
            ep.counters["drop_overlay_not_neighbour"] += 1
            return
        self.touch()
        if neighbour not in self.neighbours:
            self.reconcile(now)
            if neighbour not in self.neighbours:
                ep.counters["drop_overlay_not_neighbour"] += 1
                return
        try:
            kind = ov.overlay_type(plaintext)
            if kind == ov.OverlayType.ROUTED:
                self._on_routed(neighbour, ov.decode_routed(plaintext), len(plaintext), now)
            elif kind == ov.OverlayType.ROUTE_UPDATE:
                self.table.receive(neighbour, plaintext[9:], now)
            elif kind in (ov.OverlayType.BROADCAST, ov.OverlayType.MULTICAST) and not acl_permits_origin(
                ep.acl, plaintext
            ):
                ep.counters["drop_acl_flood"] += 1  # neither delivered nor passed on
            elif kind in (ov.OverlayType.BROADCAST, ov.OverlayType.MULTICAST, ov.OverlayType.MEMBERSHIP):
                self.flood.receive(neighbour, kind, plaintext[9:], now)
            else:
                ep.counters["drop_overlay_unknown_type"] += 1
        except DecodeError:
            ep.counters["drop_overlay_malformed"] += 1

    def _on_routed(self, neighbour: PeerId, packet: ov.Routed, size: int, now: float) -> None:
        ep = self.endpoint
        acl = ep.acl
        if acl.restricts and not acl.permits(packet.source):
            # A closed mesh is closed through the overlay too: nothing from a refused source is
            # delivered or forwarded, nothing is forwarded to a refused destination.
            ep.counters["drop_acl_routed" if packet.destination == ep.peer_id else "drop_acl_forward"] += 1
            return
        if packet.destination == ep.peer_id and not packet.source_route:
            if packet.source == ep.peer_id:
                ep.counters["drop_routed_from_self"] += 1
                return
            ep.counters["routed_packets_received"] += 1
            if packet.probe:
                self._on_probe(packet, now)
            else:
                ep.receive_datagram(packet.inner, RoutedAddress(packet.source), now)
            return
        if packet.hop_limit <= 1:
            ep.counters["drop_hop_limit"] += 1
            if packet.probe:
                self._answer_probe(packet, PROBE_EXPIRED)
            return
        if not self.forwarding:
            ep.counters["drop_not_forwarding"] += 1
            return
        if acl.restricts and not acl.permits(packet.destination):
            ep.counters["drop_acl_forward"] += 1
            return
        route = packet.source_route
        if route and route[0] == ep.peer_id:
            route = route[1:]
        if route and (len(set(route)) != len(route) or ep.peer_id in route):
            ep.counters["drop_bad_source_route"] += 1  # a route that revisits a node: a loop
            return
        refusal = ep.scopes.admit_forward(neighbour, packet.source, size, now)
        if refusal is not None:  # the neighbour or the source sends more than its share
            ep.counters[refusal] += 1
            return
        hop = self.next_hop(packet.destination, route)
        if hop is None:
            ep.counters["drop_no_route"] += 1
            return
        forwarded = ov.Routed(
            destination=packet.destination,
            source=packet.source,
            hop_limit=min(packet.hop_limit, ov.DEFAULT_HOP_LIMIT) - 1,
            inner=packet.inner,
            source_route=route[1:] if route else (),
            probe=packet.probe,
        )
        if self._send_to_neighbour(hop, ov.encode_routed(forwarded)):
            ep.counters["forwarded_packets"] += 1
            ep.counters["forwarded_bytes"] += size
        else:
            ep.counters["drop_no_route"] += 1

    # -- route probes (traceroute) -------------------------------------------------------------

    def send_probe(self, destination: PeerId, hop_limit: int, now: float) -> int | None:
        """Send a probe that runs out after ``hop_limit`` hops; its nonce, or None with no route."""
        if len(self.probes) >= MAX_PROBES:
            return None
        nonce = self.endpoint.rng.getrandbits(64)
        inner = _PROBE.pack(PROBE_REQUEST, nonce, hop_limit)
        if not self.wrap(inner, RoutedAddress(destination), probe=True, hop_limit=hop_limit):
            return None
        self.probes[nonce] = (destination, hop_limit, now)
        return nonce

    def _answer_probe(self, packet: ov.Routed, kind: int) -> None:
        try:
            req, nonce, limit = _PROBE.unpack(packet.inner)
        except struct.error:
            self.endpoint.counters["drop_overlay_malformed"] += 1
            return
        if req != PROBE_REQUEST:
            return  # an answer that ran out on its way back is not answered again
        self.wrap(_PROBE.pack(kind, nonce, limit), RoutedAddress(packet.source), probe=True)

    def _on_probe(self, packet: ov.Routed, now: float) -> None:
        try:
            kind, nonce, _ = _PROBE.unpack(packet.inner)
        except struct.error:
            self.endpoint.counters["drop_overlay_malformed"] += 1
            return
        if kind == PROBE_REQUEST:
            self._answer_probe(packet, PROBE_REACHED)
            return
        sent = self.probes.pop(nonce, None)
        if sent is None:
            self.endpoint.counters["drop_unexpected_probe_reply"] += 1
            return
        destination, limit, at = sent
        self.endpoint.emit(
            ev.RouteProbeAnswered(
                destination=destination,
                nonce=nonce,
                hop_limit=limit,
                responder=packet.source,
                reached=kind == PROBE_REACHED,
                rtt=now - at,
            )
        )

    def _expire_probes(self, now: float) -> None:
        horizon = now - 30.0
        for nonce in [n for n, (_, _, at) in self.probes.items() if at < horizon]:
            del self.probes[nonce]

    # -- views --------------------------------------------------------------------------------

    def routes(self, destination: PeerId) -> list[Route]:
        return self.table.routes(destination)

    def hops(self, destination: PeerId) -> tuple[PeerId, ...]:
        """The peers a routed packet to ``destination`` passes (the destination itself excluded)."""
        routes = self.table.routes(destination)
        return routes[0].path[:-1] if routes else ()

    def set_router(self, fn: Callable[[PeerId, list[Route]], PeerId | None] | None) -> None:
        self.table.set_router(fn)
        self.touch()


def acl_permits_origin(acl: PeerAcl, plaintext: bytes) -> bool:
    """Whether a broadcast's or multicast's origin (its signed body starts version | origin:32)
    may reach us through the overlay; a body too short for one is the flood core's to refuse."""
    start = len(ov.OVERLAY_PREFIX) + 2
    return not acl.restricts or len(plaintext) < start + 32 or acl.permits_key(plaintext[start : start + 32])


def is_overlay(plaintext: bytes) -> bool:
    return plaintext[:8] == ov.OVERLAY_PREFIX


__all__ = ["Delivery", "Overlay", "PathAddress", "is_overlay"]
