"""The node's relays: keyed mesh relays (by PeerId, over TCP/WebSocket) and TURN allocations.

This is asyncio glue between the node's :class:`~coremesh.aio.runtime.UdpRuntime` and the relay
clients: it registers a sender for :class:`~coremesh.endpoint.paths.RelayAddress` destinations, feeds packets
that arrive from a relay into the endpoint, and reports which relays are usable. Relays never see
plaintext: what travels through them are the node's Noise transport packets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from typing import Any

from .. import stun
from ..addr import Address, normalize_socket_address
from ..config import RelayServer
from ..endpoint.paths import RelayAddress
from ..errors import MeshError
from ..identity import Identity, PeerId
from ..turn import client as turn
from .keyedrelay import KeyedRelayClient
from .runtime import UdpRuntime
from .timer import CoreTimer

log = logging.getLogger("coremesh.aio.relays")

RETRY_INITIAL = 1.0  # seconds before allocating again after a loss or a failure, doubling
RETRY_MAX = 60.0


class TurnLink:
    """One STUN/TURN server, used over the node's own UDP socket.

    With credentials it holds a TURN allocation (the relayed address is a candidate, and the runtime
    wraps datagrams the endpoint core routes to this server in ChannelData or Send indications);
    without, it only learns the node's server-reflexive address with a Binding request.
    """

    def __init__(
        self, config: RelayServer, runtime: UdpRuntime, rng: random.Random, wall_offset: float
    ) -> None:
        self.config = config
        self.server = config.address  # resolved in start()
        self._runtime = runtime
        self._rng = rng
        self._wall_offset = wall_offset
        self.client: turn.TurnClient | None = None
        self.mapped: Address | None = None
        self.relayed: Address | None = None
        self.error: str | None = None
        self.ready = asyncio.Event()
        self._timer: CoreTimer | None = None  # in the client's (wall) clock; made on the loop
        self._binding_id = b""
        self._binding_task: asyncio.Future[None] | None = None
        self._stopping = False
        self._permission_failures: dict[str, str] = {}  # peer IP -> why the server refused it
        self.routed: set[Address] = set()  # peers whose traffic this allocation carries
        self._retry_task: asyncio.Future[None] | None = None
        self._retry_delay = RETRY_INITIAL

    def _now(self) -> float:
        """POSIX time: time-limited TURN credentials carry wall-clock expiry times."""
        return self._runtime.now() + self._wall_offset

    async def start(self) -> None:
        self.server = await _resolve(self.config.address, self._runtime)
        if self.config.username and self.config.password:
            self._runtime.turn_links[self.server] = self
            self._allocate()
        else:
            self._binding_task = asyncio.ensure_future(self._bind())

    def _allocate(self) -> None:
        assert self.config.username and self.config.password
        self.client = turn.TurnClient(
            self.server, self.config.username, self.config.password, random_bytes=self._rng.randbytes
        )
        self.client.allocate(self._now())
        self._flush()

    def _lost(self) -> None:
        """The allocation is gone (or never came): stop routing through it, and try again later."""
        # Traffic goes direct again rather than into a dead allocation.
        self._runtime.endpoint.clear_turn_routes_via(self.server)
        if not self._stopping and (self._retry_task is None or self._retry_task.done()):
            self._retry_task = asyncio.ensure_future(self._retry())

    async def _retry(self) -> None:
        """Allocate again with exponential backoff; then carry the peers it carried before."""
        await asyncio.sleep(self._retry_delay * (0.8 + 0.4 * self._rng.random()))
        self._retry_delay = min(self._retry_delay * 2, RETRY_MAX)
        if self._stopping:
            return
        self.ready = asyncio.Event()
        self._allocate()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ready.wait(), 40.0)
        if not self.allocated:
            return  # _lost() scheduled the next try
        self._retry_delay = RETRY_INITIAL
        log.info("TURN allocation restored", extra={"relay": str(self.server), "relayed": str(self.relayed)})
        endpoint = self._runtime.endpoint
        for address in list(self.routed):
            if endpoint.turn_route(address) is None and await self.prepare(address):
                endpoint.set_turn_route(address, self.server)

    async def _bind(self) -> None:
        """RFC 8489 Binding with the usual retransmissions (0, 0.5, 1.5 s...), bounded."""
        self._binding_id = self._rng.randbytes(12)
        request = stun.encode(stun.StunMessage(stun.Method.BINDING, stun.StunClass.REQUEST, self._binding_id))
        delay = 0.5
        for _ in range(5):
            self._runtime.send_raw(request, self.server)
            try:
                await asyncio.wait_for(self.ready.wait(), delay)
                return
            except TimeoutError:
                delay *= 2
        self.error = f"no STUN answer from {self.server}"
        log.warning("relay unreachable", extra={"relay": str(self.server)})

    def stop(self) -> None:
        self._stopping = True
        for task in (self._binding_task, self._retry_task):
            if task is not None:
                task.cancel()
        if self.client is not None and self.client.state is turn.ClientState.ALLOCATED:
            with contextlib.suppress(Exception):
                self.client.close(self._now())
                self._flush()
        if self._timer is not None:
            self._timer.cancel()

    @property
    def allocated(self) -> bool:
        return self.client is not None and self.relayed is not None

    # -- the runtime's TurnWrapper protocol -------------------------------------------------------

    def wrap(self, data: bytes, peer: Address, now: float) -> bytes:
        assert self.client is not None
        return self.client.wrap(data, peer)

    # -- traffic from the server ------------------------------------------------------------------

    def on_datagram(self, data: bytes) -> list[tuple[bytes, Address]]:
        if self.client is None:
            self._on_binding_answer(data)
            return []
        relayed = self.client.on_datagram(data, self._now())
        self._drain()
        self._flush()
        return [(relayed[1], relayed[0])] if relayed is not None else []

    def _on_binding_answer(self, data: bytes) -> None:
        try:
            msg = stun.decode(data)
            if msg.transaction_id != self._binding_id or msg.msg_class is not stun.StunClass.SUCCESS:
                return
            mapped = msg.get_address(stun.Attr.XOR_MAPPED_ADDRESS) or msg.get_address(
                stun.Attr.MAPPED_ADDRESS
            )
        except stun.StunDecodeError:
            return
        if mapped is not None:
            self.mapped = normalize_socket_address((mapped.host, mapped.port))
            self.ready.set()

    def _drain(self) -> None:
        assert self.client is not None
        while (event := self.client.next_event()) is not None:
            if isinstance(event, turn.Allocated):
                self.relayed, self.mapped, self.error = event.relayed_address, event.mapped_address, None
                self.ready.set()
                log.info(
                    "relayed address allocated",
                    extra={"relay": str(self.server), "relayed": str(self.relayed)},
                )
            elif isinstance(event, turn.AllocationFailed | turn.AllocationLost):
                self.relayed = None
                self.error = f"{type(event).__name__}: {event.reason}"
                self.ready.set()
                if self._stopping:  # releasing our own allocation at shutdown is no news
                    continue
                self._lost()
                log.warning(
                    "TURN allocation unavailable", extra={"relay": str(self.server), "error": self.error}
                )
            elif isinstance(event, turn.PermissionFailed):
                why = self.refusal(event.peer, event.reason, event.code)
                self._permission_failures[event.peer] = why
                log.warning("TURN permission refused", extra={"relay": str(self.server), "error": why})

    def _flush(self) -> None:
        assert self.client is not None
        for data in self.client.datagrams_to_send():
            self._runtime.send_raw(data, self.server)
        if self._timer is None:
            self._timer = CoreTimer(asyncio.get_running_loop(), self._on_timer, offset=self._wall_offset)
        self._timer.arm(self.client.get_timer())

    def _on_timer(self, now: float) -> None:
        if self.client is not None:
            self.client.handle_timer(now)
            self._drain()
            self._flush()

    async def prepare(self, peer: Address, timeout: float = 1.0) -> bool:
        """Bind a channel (and with it a permission) to ``peer``; True unless the server refused."""
        return await self.bind(peer, timeout) is None

    async def bind(self, peer: Address, timeout: float = 1.0) -> str | None:
        """Bind a channel (and with it a permission) to ``peer``: None once bound (or while the
        server has not answered within ``timeout``), else why not, in one line that names this
        relay, e.g. ``TURN relay 192.0.2.1:3478 refused permission for 10.0.0.2: 403 Forbidden
        (peer address not allowed)``."""
        if self.client is None or self.relayed is None:
            return self.unusable()
        self._permission_failures.pop(peer.host, None)
        self.client.bind_channel(peer, self._now())
        self._flush()
        deadline = self._runtime.now() + timeout
        while self._runtime.now() < deadline:
            if self.client.channel_for(peer) is not None:
                return None
            if peer.host in self._permission_failures:
                return self._permission_failures[peer.host]
            await asyncio.sleep(0.005)
        return self._permission_failures.get(peer.host)

    def unusable(self) -> str:
        """Why this relay holds no allocation, in one line."""
        return f"TURN relay {self.server} has no allocation" + (f": {self.error}" if self.error else "")

    def refusal(self, peer: str, reason: str, code: int) -> str:
        """The user-facing line for a refused CreatePermission/ChannelBind. A 403 is the server's
        peer policy (RFC 8656 §9.2: loopback, private ranges and the like are refused by default).
        The server's reason phrase is remote text: kept printable and short."""
        reason = "".join(ch if ch.isprintable() else "?" for ch in reason[:120])
        if code == 403:
            reason += " (peer address not allowed)"
        return f"TURN relay {self.server} refused permission for {peer}: {reason}"


async def _resolve(address: Address, runtime: UdpRuntime) -> Address:
    """A literal address as is; a host name resolved in the socket's family."""
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in address.host else socket.AF_INET, address.host)
        return address
    except OSError:
        pass
    family = socket.AF_INET6 if runtime.sock.family == socket.AF_INET6 else socket.AF_INET
    infos = await asyncio.get_running_loop().getaddrinfo(address.host, address.port, type=socket.SOCK_DGRAM)
    infos.sort(key=lambda info: info[0] != family)
    return normalize_socket_address(infos[0][4])


class RelayManager:
    """The node's relays (TURN servers and keyed relays), wired into its runtime."""

    def __init__(
        self,
        identity: Identity,
        runtime: UdpRuntime,
        keyed_urls: tuple[str, ...],
        turn_servers: tuple[RelayServer, ...] = (),
        *,
        rng: random.Random | None = None,
        wall_offset: float = 0.0,
    ) -> None:
        self._identity = identity
        self._runtime = runtime
        rng = rng if rng is not None else random.SystemRandom()
        self.turn = [TurnLink(server, runtime, rng, wall_offset) for server in turn_servers]
        if self.turn:
            runtime.foreign_handler = self._on_foreign
        self._keyed: dict[str, KeyedRelayClient] = {}
        for url in keyed_urls:
            self._keyed[url] = KeyedRelayClient(
                identity,
                url,
                on_packet=self._receiver(url),
                on_state=self._state_logger(url),
            )
        if self._keyed:
            runtime.relay_sender = self._send

    async def start(self) -> None:
        for link in self.turn:
            try:
                await link.start()
            except OSError as exc:
                link.error = f"cannot resolve {link.config.address.host}: {exc}"
                log.warning("relay unusable", extra={"relay": str(link.config), "error": link.error})
        # Wait briefly for the first answers, so that candidates are known right after start.
        pending = [link.ready.wait() for link in self.turn if link.error is None]
        if pending:
            await asyncio.wait([asyncio.ensure_future(p) for p in pending], timeout=2.0)
        # A relay that is down at start must not stop the node: clients keep retrying in the
        # background; we only wait briefly so that a reachable relay is usable right away.
        for client in self._keyed.values():
            await client.start(wait=False)
        for url, client in self._keyed.items():
            try:
                await client.wait_registered(2.0)
            except (OSError, TimeoutError, MeshError) as exc:
                log.warning("keyed relay not reachable yet", extra={"relay": url, "error": str(exc)})

    async def stop(self) -> None:
        for link in self.turn:
            link.stop()
        for client in self._keyed.values():
            with contextlib.suppress(Exception):
                await client.stop()
        self._runtime.relay_sender = None

    def keyed_relay(self) -> str | None:
        """The URL of a keyed relay this node is registered with, if any."""
        for url, client in self._keyed.items():
            if client.registered:
                return url
        return None

    def forget(self, address: Address) -> None:
        """The connection to ``address`` ended: no allocation needs to carry it any more."""
        for link in self.turn:
            link.routed.discard(address)

    def turn_link(self) -> TurnLink | None:
        """A TURN server where this node holds an allocation, if any."""
        return next((link for link in self.turn if link.allocated), None)

    def turn_unusable(self) -> str | None:
        """Why no TURN server can carry traffic (None if one holds an allocation, or none is configured)."""
        if not self.turn or self.turn_link() is not None:
            return None
        return "; ".join(link.unusable() for link in self.turn)

    def keyed_unusable(self) -> str | None:
        """Why no keyed relay can carry traffic (None if one is registered, or none is configured)."""
        if not self._keyed or self.keyed_relay() is not None:
            return None
        return "; ".join(f"keyed relay {url} is not connected" for url in self._keyed)

    def candidates(self) -> list[dict[str, str]]:
        """Server-reflexive and relayed candidates learned from the relays."""
        out: list[dict[str, str]] = []
        for link in self.turn:
            if link.mapped is not None:
                out.append({"type": "srflx", "address": str(link.mapped), "via": str(link.server)})
            if link.relayed is not None:
                out.append({"type": "relay", "address": str(link.relayed), "via": str(link.server)})
        return out

    def registered_keyed_urls(self) -> list[str]:
        """The keyed relays this node is registered with now: where peers can reach it by PeerId."""
        return [url for url, client in self._keyed.items() if client.registered]

    def status(self) -> dict[str, Any]:
        return {
            "turn": {
                str(link.config): {
                    "server": str(link.server),
                    "allocated": link.allocated,
                    "mapped": str(link.mapped) if link.mapped else None,
                    "relayed": str(link.relayed) if link.relayed else None,
                    "error": link.error,
                }
                for link in self.turn
            },
            "keyed": {url: {"registered": c.registered} for url, c in self._keyed.items()},
        }

    def _on_foreign(self, data: bytes, source: Address, now: float) -> list[tuple[bytes, Address]]:
        for link in self.turn:
            if link.server == source:
                return link.on_datagram(data)
        return []

    def _send(self, address: RelayAddress, data: bytes) -> bool:
        client = self._keyed.get(address.relay)
        if client is None or not client.registered:
            return False
        try:
            client.send(address.peer, data)
        except Exception as exc:  # a full queue or a lost session: a counted drop, retried by the stream
            log.debug("keyed relay send failed: %s", exc)
            return False
        return True

    def _receiver(self, url: str) -> Any:
        runtime = self._runtime

        def on_packet(src: PeerId, packet: bytes) -> None:
            runtime.deliver(packet, RelayAddress(url, src))

        return on_packet

    @staticmethod
    def _state_logger(url: str) -> Any:
        def on_state(state: str) -> None:
            log.info("keyed relay %s", state, extra={"relay": url})

        return on_state
