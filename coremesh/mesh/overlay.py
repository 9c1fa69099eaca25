"""``OverlayApi``: the node's routes, traceroute, broadcast and multicast (the overlay's public side).

The overlay core lives in the endpoint (:mod:`coremesh.endpoint.overlay`, over the route table and
the flood core of :mod:`coremesh.routing`); this room turns it into the node's API: JSON-ready
views of the table, a traceroute that waits on probe answers, and the sends, each followed by one
pump so that the packets leave at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from ..errors import ConnectionFailed, PeerNotFound
from ..identity import PeerId
from ..routing.flood import Delivery
from ..routing.table import Route
from .parts import NodeParts
from .registry import ConnectionRegistry

log = logging.getLogger("coremesh.node")

MAX_TRACE_HOPS = 32


def _route_json(route: Route, now: float) -> dict[str, Any]:
    return {
        "next_hop": route.next_hop.to_text(),
        "metric": route.metric,
        "hops": [p.to_text() for p in route.path],
        "seqno": route.seqno,
        "age_s": round(max(0.0, now - route.updated_at), 3),
    }


class OverlayApi:
    """Routes, traceroute, broadcast and multicast of one node."""

    def __init__(self, parts: NodeParts, registry: ConnectionRegistry) -> None:
        self._parts = parts
        self._registry = registry

    def routes(self) -> list[dict[str, Any]]:
        """Per destination: the primary route (next hop, metric, hops, seqno, age) and backups."""
        runtime, endpoint = self._parts.require_running()
        now = runtime.now()
        table = []
        for routes in endpoint.overlay.table.all_routes():
            if not routes:
                continue
            primary = _route_json(routes[0], now)
            entry = {"destination": routes[0].destination.to_text(), **primary}
            entry["backups"] = [
                {k: v for k, v in _route_json(r, now).items() if k in ("next_hop", "metric", "hops")}
                for r in routes[1:]
            ]
            table.append(entry)
        table.sort(key=lambda e: (e["metric"], e["destination"]))
        return table

    def route_hops(self, peer: PeerId) -> tuple[PeerId, ...]:
        _, endpoint = self._parts.require_running()
        return endpoint.overlay.hops(peer)

    async def trace(self, peer: PeerId, *, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Traceroute through the overlay: one probe per hop limit until the destination answers.

        Each hop is ``{"hop", "peer_id", "rtt_ms"}``; a hop that did not answer in time has
        ``peer_id`` and ``rtt_ms`` None. Raises :class:`PeerNotFound` without a route."""
        runtime, endpoint = self._parts.require_running()
        if endpoint.overlay.next_hop(peer) is None:
            raise PeerNotFound(f"no route to {peer} through the mesh's peers")
        hops: list[dict[str, Any]] = []
        for limit in range(1, MAX_TRACE_HOPS + 1):
            nonce = endpoint.overlay.send_probe(peer, limit, runtime.now())
            if nonce is None:
                raise ConnectionFailed(f"the route to {peer} was lost during the trace")
            fut = self._registry.wait_route_probe(nonce)
            runtime.pump()
            try:
                answer = await asyncio.wait_for(fut, timeout)
            except TimeoutError:
                hops.append({"hop": limit, "peer_id": None, "rtt_ms": None})
                continue
            finally:
                self._registry.stop_waiting_route_probe(nonce)
            hops.append(
                {"hop": limit, "peer_id": answer.responder.to_text(), "rtt_ms": round(answer.rtt * 1000, 3)}
            )
            if answer.reached or answer.responder == peer:
                return hops
        return hops

    async def broadcast(self, data: bytes) -> int:
        """Send ``data`` to every node of the connected mesh; returns how many neighbours it went to."""
        runtime, endpoint = self._parts.require_running()
        sent = endpoint.overlay.flood.broadcast(bytes(data), runtime.now())
        endpoint.overlay.touch()
        runtime.pump()
        return sent

    async def multicast(self, group: str, data: bytes) -> int:
        runtime, endpoint = self._parts.require_running()
        sent = endpoint.overlay.flood.multicast(group, bytes(data), runtime.now())
        endpoint.overlay.touch()
        runtime.pump()
        return sent

    def join(self, group: str) -> None:
        runtime, endpoint = self._parts.require_running()
        endpoint.overlay.flood.join(group, runtime.now())
        endpoint.overlay.touch()
        runtime.pump()

    def leave(self, group: str) -> None:
        runtime, endpoint = self._parts.require_running()
        endpoint.overlay.flood.leave(group, runtime.now())
        endpoint.overlay.touch()
        runtime.pump()

    def groups(self) -> list[str]:
        endpoint = self._parts.endpoint
        return endpoint.overlay.flood.groups() if endpoint is not None else []

    def on_delivery(self, callback: Callable[[Delivery], object]) -> Callable[[], None]:
        return self._registry.subscribe_deliveries(callback)

    def stats(self) -> dict[str, int]:
        endpoint = self._parts.endpoint
        if endpoint is None:
            return {}
        overlay = endpoint.overlay
        counters = {k: v for k, v in overlay.table.counters.items()}
        counters.update(overlay.flood.counters)
        counters["routes"] = sum(1 for routes in overlay.table.all_routes() if routes)
        for key in ("forwarded_packets", "forwarded_bytes", "route_changes", "broadcast_duplicates"):
            counters.setdefault(key, endpoint.counters.get(key, 0))
        for key in ("broadcasts_delivered", "multicasts_delivered"):
            counters.setdefault(key, 0)
        return counters
