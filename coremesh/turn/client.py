"""The TURN client core (RFC 8656), sans-IO.

One :class:`TurnClient` holds one allocation on one server. The caller sends whatever
:meth:`TurnClient.datagrams_to_send` returns to the server, feeds everything that comes back from
the server to :meth:`TurnClient.on_datagram`, and calls :meth:`TurnClient.handle_timer` when
:meth:`TurnClient.get_timer` says. Time (``now``, any monotonic seconds) and randomness
(``random_bytes``) are inputs.

- :meth:`allocate` authenticates with the long-term mechanism (a 401 brings the realm and nonce;
  a 438 brings a fresh nonce and the request is sent again) and reports :class:`Allocated` or
  :class:`AllocationFailed`.
- The allocation is refreshed a minute before it expires (or at half its lifetime if shorter);
  permissions every 240 s (they last 300 s) and channel bindings every 540 s (they last 600 s).
- :meth:`wrap` turns an outgoing datagram into ChannelData (once the channel to that peer is bound)
  or a Send indication; :meth:`on_datagram` turns Data indications and ChannelData back into
  ``(peer, payload)`` and consumes the responses to its own requests.
- Requests are retransmitted as RFC 8489 §6.2.1 says over UDP (RTO 0.5 s doubling, 7 sends, then
  16 × RTO): 39.5 s before a request is given up. Over TCP they are sent once with the same timeout.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from functools import partial
from typing import Final, Literal

from ..addr import Address
from ..errors import DecodeError, LocalProtocolError
from ..stun.attributes import FAMILY_IPV4, FAMILY_IPV6, Attr, encode_text
from ..stun.channeldata import decode_channel_data, encode_channel_data
from ..stun.credentials import long_term_key
from ..stun.message import Method, StunClass, StunMessage, decode, encode, verify_integrity
from .allocation import CHANNEL_MAX, CHANNEL_MIN

log = logging.getLogger("coremesh.turn.client")

RTO: Final = 0.5
RC: Final = 7
RM: Final = 16
TCP_TIMEOUT: Final = 39.5
PERMISSION_REFRESH: Final = 240.0
CHANNEL_REFRESH: Final = 540.0
MAX_NONCE_RETRIES: Final = 3


# ----------------------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True, kw_only=True)
class Allocated:
    relayed_address: Address
    mapped_address: Address | None
    lifetime: int
    relayed_addresses: tuple[Address, ...] = ()  # both, for a dual-stack allocation


@dataclass(frozen=True, slots=True, kw_only=True)
class AllocationFailed:
    reason: str
    code: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class AllocationLost:
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PermissionFailed:
    """A CreatePermission or ChannelBind for ``peer`` was refused (e.g. 403) or timed out."""

    peer: str
    reason: str
    code: int = 0


TurnClientEvent = Allocated | AllocationFailed | AllocationLost | PermissionFailed


class ClientState(Enum):
    IDLE = "idle"
    ALLOCATING = "allocating"
    ALLOCATED = "allocated"
    CLOSING = "closing"
    CLOSED = "closed"
    FAILED = "failed"


# ---------------------------------------------------------------------------------------- internals


@dataclass(slots=True)
class _Txn:
    method: Method
    data: bytes
    send_at: float
    deadline: float
    rto: float
    sends: int = 0
    nonce_retries: int = 0
    peer: Address | None = None  # CreatePermission / ChannelBind target
    channel: int = 0
    build: Callable[[], StunMessage] | None = None  # rebuilds the request after a 401/438


@dataclass(slots=True)
class _Permission:
    refresh_at: float | None = None  # None: a request is under way
    active: bool = False


@dataclass(slots=True)
class _Channel:
    number: int
    peer: Address
    refresh_at: float | None = None
    bound: bool = False


@dataclass(slots=True)
class _Counters:
    values: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, n: int = 1) -> None:
        self.values[name] = self.values.get(name, 0) + n


class TurnClient:
    """One allocation on one TURN server; see the module docstring."""

    def __init__(
        self,
        server: Address,
        username: str,
        password: str,
        *,
        random_bytes: Callable[[int], bytes],
        transport: Literal["udp", "tcp", "tls"] = "udp",
        lifetime: int = 600,
        family: int = FAMILY_IPV4,
        additional_ipv6: bool = False,
        software: str | None = None,
    ) -> None:
        if family not in (FAMILY_IPV4, FAMILY_IPV6):
            raise LocalProtocolError(f"family must be {FAMILY_IPV4} (IPv4) or {FAMILY_IPV6} (IPv6)")
        self.server = server
        self.username = username
        self._password = password
        self._random_bytes = random_bytes
        self.transport = transport
        self.requested_lifetime = lifetime
        self.family = family
        self.additional_ipv6 = additional_ipv6
        self.software = software
        self.state = ClientState.IDLE
        self.realm: str | None = None
        self._nonce: str | None = None
        self._key: bytes | None = None
        self.relayed_address: Address | None = None
        self.relayed_addresses: tuple[Address, ...] = ()
        self.mapped_address: Address | None = None
        self.lifetime = 0
        self._refresh_at: float | None = None
        self._txns: dict[bytes, _Txn] = {}
        self._out: deque[bytes] = deque()
        self._events: deque[TurnClientEvent] = deque()
        self._permissions: dict[str, _Permission] = {}
        self._channels: dict[int, _Channel] = {}
        self._channel_by_peer: dict[Address, _Channel] = {}
        self._next_channel = CHANNEL_MIN
        self._counters = _Counters()

    # ------------------------------------------------------------------------------ commands

    def allocate(self, now: float) -> None:
        if self.state is not ClientState.IDLE:
            raise LocalProtocolError(f"allocate() in state {self.state.value}")
        self.state = ClientState.ALLOCATING
        self._request(Method.ALLOCATE, self._allocate_request, now)

    def create_permission(self, peer: Address | str, now: float) -> None:
        """Ask for (and keep refreshing) a permission for the peer's IP (its port is ignored)."""
        host = peer.host if isinstance(peer, Address) else peer
        if host not in self._permissions:
            self._permissions[host] = _Permission(refresh_at=now)
            if self.state is ClientState.ALLOCATED:
                self._service_refreshes(now)

    def bind_channel(self, peer: Address, now: float) -> int:
        """Bind (and keep refreshing) a channel to ``peer``; returns its number. Until the server
        confirms it, :meth:`wrap` uses Send indications for that peer."""
        existing = self._channel_by_peer.get(peer)
        if existing is not None:
            return existing.number
        if self._next_channel > CHANNEL_MAX:
            raise LocalProtocolError("all 4096 channel numbers are in use")
        ch = _Channel(self._next_channel, peer, refresh_at=now)
        self._next_channel += 1
        self._channels[ch.number] = ch
        self._channel_by_peer[peer] = ch
        self._permissions.setdefault(peer.host, _Permission(refresh_at=None, active=False))
        if self.state is ClientState.ALLOCATED:
            self._service_refreshes(now)
        return ch.number

    def close(self, now: float) -> None:
        """Release the allocation (Refresh with LIFETIME 0); :class:`AllocationLost` follows."""
        if self.state is ClientState.ALLOCATED:
            self.state = ClientState.CLOSING
            self._txns.clear()
            self._request(Method.REFRESH, lambda: self._refresh_request(0), now)
        elif self.state in (ClientState.IDLE, ClientState.ALLOCATING):
            self._txns.clear()
            self.state = ClientState.CLOSED

    # ---------------------------------------------------------------------------- data path

    def wrap(self, data: bytes, peer: Address) -> bytes:
        """The bytes to send to the server so that ``data`` reaches ``peer`` from the relay."""
        ch = self._channel_by_peer.get(peer)
        if ch is not None and ch.bound:
            return encode_channel_data(ch.number, data, pad=self.transport != "udp")
        msg = StunMessage(Method.SEND, StunClass.INDICATION, self._random_bytes(12))
        msg.add_address(Attr.XOR_PEER_ADDRESS, peer)
        msg.add(Attr.DATA, data)
        return encode(msg, fingerprint=False)

    def on_datagram(self, data: bytes, now: float) -> tuple[Address, bytes] | None:
        """Something from the server: relayed data (returned as ``(peer, payload)``) or a response
        to one of our requests (consumed, ``None``). Malformed input is counted and ignored."""
        if not data:
            return None
        first = data[0]
        try:
            if 0x40 <= first <= 0x7F:
                cd = decode_channel_data(data, pad=self.transport != "udp")
                ch = self._channels.get(cd.channel)
                if ch is None:
                    self._counters.add("drop_unknown_channel")
                    return None
                return ch.peer, cd.data
            msg = decode(data)
            if msg.msg_class is StunClass.INDICATION:
                if msg.method is not Method.DATA:
                    return None
                peer = msg.get_address(Attr.XOR_PEER_ADDRESS)
                payload = msg.get(Attr.DATA)
                if peer is None or payload is None:
                    self._counters.add("drop_malformed")
                    return None
                return peer, payload
            if msg.msg_class in (StunClass.SUCCESS, StunClass.ERROR):
                self._on_response(msg, data, now)
        except (DecodeError, ValueError):  # ValueError: StunEncodeError, CredentialError
            self._counters.add("drop_malformed")
        return None

    # -------------------------------------------------------------------------- shell interface

    def datagrams_to_send(self) -> list[bytes]:
        out = list(self._out)
        self._out.clear()
        return out

    def next_event(self) -> TurnClientEvent | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        times: list[float] = []
        for txn in self._txns.values():
            times.append(min(txn.send_at, txn.deadline))
        if self.state is ClientState.ALLOCATED:
            if self._refresh_at is not None:
                times.append(self._refresh_at)
            times.extend(p.refresh_at for p in self._permissions.values() if p.refresh_at is not None)
            times.extend(c.refresh_at for c in self._channels.values() if c.refresh_at is not None)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        for tid, txn in list(self._txns.items()):
            if now >= txn.deadline:
                del self._txns[tid]
                self._on_timeout(txn, now)
            elif now >= txn.send_at:
                self._transmit(txn, now)
        if self.state is ClientState.ALLOCATED:
            if self._refresh_at is not None and now >= self._refresh_at:
                self._refresh_at = None
                self._request(Method.REFRESH, lambda: self._refresh_request(self.requested_lifetime), now)
            self._service_refreshes(now)

    def stats(self) -> dict[str, int]:
        return dict(self._counters.values)

    def channel_for(self, peer: Address) -> int | None:
        ch = self._channel_by_peer.get(peer)
        return ch.number if ch is not None and ch.bound else None

    # ------------------------------------------------------------------------------ requests

    def _base(self, method: Method) -> StunMessage:
        msg = StunMessage(method, StunClass.REQUEST, self._random_bytes(12))
        if self.software:
            msg.add_text(Attr.SOFTWARE, self.software)
        return msg

    def _allocate_request(self) -> StunMessage:
        msg = self._base(Method.ALLOCATE)
        msg.add_uint(Attr.REQUESTED_TRANSPORT, 17)
        msg.add_uint(Attr.LIFETIME, self.requested_lifetime)
        if self.additional_ipv6:
            msg.add_uint(Attr.ADDITIONAL_ADDRESS_FAMILY, FAMILY_IPV6)
        elif self.family != FAMILY_IPV4:
            msg.add_uint(Attr.REQUESTED_ADDRESS_FAMILY, self.family)
        return msg

    def _refresh_request(self, lifetime: int) -> StunMessage:
        msg = self._base(Method.REFRESH)
        msg.add_uint(Attr.LIFETIME, lifetime)
        return msg

    def _permission_request(self, host: str) -> StunMessage:
        msg = self._base(Method.CREATE_PERMISSION)
        msg.add_address(Attr.XOR_PEER_ADDRESS, Address(host, 0))
        return msg

    def _channel_request(self, ch: _Channel) -> StunMessage:
        msg = self._base(Method.CHANNEL_BIND)
        msg.add_uint(Attr.CHANNEL_NUMBER, ch.number)
        msg.add_address(Attr.XOR_PEER_ADDRESS, ch.peer)
        return msg

    def _request(
        self,
        method: Method,
        build: Callable[[], StunMessage],
        now: float,
        *,
        peer: Address | None = None,
        channel: int = 0,
        nonce_retries: int = 0,
    ) -> None:
        msg = build()
        if self._key is not None and self.realm is not None and self._nonce is not None:
            msg.add_text(Attr.USERNAME, self.username)
            msg.add_text(Attr.REALM, self.realm)
            msg.add_text(Attr.NONCE, self._nonce)
        data = encode(msg, integrity_key=self._key)
        reliable = self.transport != "udp"
        deadline = now + (TCP_TIMEOUT if reliable else _udp_span())
        txn = _Txn(method, data, now, deadline, RTO, peer=peer, channel=channel, build=build)
        txn.nonce_retries = nonce_retries
        self._txns[msg.transaction_id] = txn
        self._transmit(txn, now)

    def _transmit(self, txn: _Txn, now: float) -> None:
        self._out.append(txn.data)
        txn.sends += 1
        if self.transport != "udp" or txn.sends >= RC:
            txn.send_at = float("inf")
        else:
            txn.send_at = now + txn.rto
            txn.rto *= 2

    def _service_refreshes(self, now: float) -> None:
        for host, perm in self._permissions.items():
            if perm.refresh_at is not None and now >= perm.refresh_at:
                perm.refresh_at = None
                self._request(
                    Method.CREATE_PERMISSION,
                    partial(self._permission_request, host),
                    now,
                    peer=Address(host, 0),
                )
        for ch in self._channels.values():
            if ch.refresh_at is not None and now >= ch.refresh_at:
                ch.refresh_at = None
                self._request(
                    Method.CHANNEL_BIND,
                    partial(self._channel_request, ch),
                    now,
                    peer=ch.peer,
                    channel=ch.number,
                )

    # ----------------------------------------------------------------------------- responses

    def _on_response(self, msg: StunMessage, raw: bytes, now: float) -> None:
        txn = self._txns.get(msg.transaction_id)
        if txn is None or msg.method != txn.method:
            self._counters.add("drop_unexpected_response")
            return
        if (
            self._key is not None
            and msg.msg_class is StunClass.SUCCESS
            and not verify_integrity(raw, self._key)
        ):
            self._counters.add("drop_bad_integrity")
            return
        # Read every attribute that is acted on before the transaction is consumed: a malformed one
        # raises DecodeError here, the response is dropped and the request is retransmitted or times
        # out, instead of the client waiting forever for an answer it already threw away.
        if msg.msg_class is StunClass.SUCCESS:
            _check_success(txn.method, msg)
            del self._txns[msg.transaction_id]
            self._on_success(txn, msg, now)
            return
        err = msg.get_error()
        realm = msg.get_text(Attr.REALM)
        nonce = msg.get_text(Attr.NONCE)
        del self._txns[msg.transaction_id]
        code = err.code if err is not None else 0
        reason = err.reason if err is not None else "error response without ERROR-CODE"
        if code in (401, 438) and txn.build is not None:
            first_challenge = code == 401 and self._key is None
            if nonce is not None and (
                first_challenge or (code == 438 and txn.nonce_retries < MAX_NONCE_RETRIES)
            ):
                try:  # what the server sent must be usable in every later request
                    encode_text(Attr.NONCE, nonce)
                    if realm is not None and realm != self.realm:
                        encode_text(Attr.REALM, realm)
                        self._key = long_term_key(self.username, realm, self._password)
                        self.realm = realm
                    self._nonce = nonce
                    if self._key is not None:
                        self._request(
                            txn.method,
                            txn.build,
                            now,
                            peer=txn.peer,
                            channel=txn.channel,
                            nonce_retries=txn.nonce_retries + 1,
                        )
                        return
                except ValueError as exc:  # StunEncodeError, or CredentialError from SASLprep
                    self._counters.add("bad_challenge")
                    self._on_failure(txn, code, f"{code} {reason}: unusable credentials: {exc}", now)
                    return
        self._on_failure(txn, code, f"{code} {reason}", now)

    def _on_success(self, txn: _Txn, msg: StunMessage, now: float) -> None:
        if txn.method is Method.ALLOCATE:
            relays = tuple(msg.get_all_addresses(Attr.XOR_RELAYED_ADDRESS))
            lifetime = msg.get_uint(Attr.LIFETIME) or 0
            if not relays or self.state is not ClientState.ALLOCATING:
                self._fail("Allocate success without XOR-RELAYED-ADDRESS", 0)
                return
            self.relayed_addresses = relays
            self.relayed_address = relays[0]
            self.mapped_address = msg.get_address(Attr.XOR_MAPPED_ADDRESS)
            self.lifetime = lifetime
            self.state = ClientState.ALLOCATED
            self._refresh_at = now + _refresh_delay(lifetime)
            log.info("allocated %s on %s (lifetime %d s)", self.relayed_address, self.server, lifetime)
            self._events.append(
                Allocated(
                    relayed_address=relays[0],
                    mapped_address=self.mapped_address,
                    lifetime=lifetime,
                    relayed_addresses=relays,
                )
            )
            self._service_refreshes(now)
        elif txn.method is Method.REFRESH:
            lifetime = msg.get_uint(Attr.LIFETIME) or 0
            if self.state is ClientState.CLOSING or lifetime == 0:
                self._lose("closed")
                return
            self.lifetime = lifetime
            self._refresh_at = now + _refresh_delay(lifetime)
        elif txn.method is Method.CREATE_PERMISSION and txn.peer is not None:
            perm = self._permissions.get(txn.peer.host)
            if perm is not None:
                perm.active = True
                perm.refresh_at = now + PERMISSION_REFRESH
        elif txn.method is Method.CHANNEL_BIND:
            ch = self._channels.get(txn.channel)
            if ch is not None:
                ch.bound = True
                ch.refresh_at = now + CHANNEL_REFRESH
            perm = self._permissions.get(txn.peer.host) if txn.peer is not None else None
            if perm is not None:  # ChannelBind installs or refreshes the permission too
                perm.active = True
                if perm.refresh_at is None or perm.refresh_at > now + PERMISSION_REFRESH:
                    perm.refresh_at = now + PERMISSION_REFRESH

    def _on_failure(self, txn: _Txn, code: int, reason: str, now: float) -> None:
        if txn.method is Method.ALLOCATE:
            self._fail(reason, code)
        elif txn.method is Method.REFRESH:
            if self.state is ClientState.CLOSING:
                self._lose("closed")  # 437 on a Refresh to 0 means it is gone already
            else:
                self._lose(f"refresh failed: {reason}")
        elif txn.peer is not None:
            if txn.method is Method.CHANNEL_BIND:
                ch = self._channels.pop(txn.channel, None)
                if ch is not None:
                    self._channel_by_peer.pop(ch.peer, None)
                perm = self._permissions.get(txn.peer.host)
                if perm is not None and not perm.active and perm.refresh_at is None:
                    del self._permissions[txn.peer.host]
            else:
                self._permissions.pop(txn.peer.host, None)
            self._events.append(PermissionFailed(peer=str(txn.peer.host), reason=reason, code=code))
            if code == 437:
                self._lose("allocation mismatch")

    def _on_timeout(self, txn: _Txn, now: float) -> None:
        self._counters.add("transaction_timeouts")
        self._on_failure(txn, 0, f"{txn.method.name} timed out", now)

    def _fail(self, reason: str, code: int) -> None:
        self.state = ClientState.FAILED
        self._txns.clear()
        log.info("allocation on %s failed: %s", self.server, reason)
        self._events.append(AllocationFailed(reason=reason, code=code))

    def _lose(self, reason: str) -> None:
        if self.state in (ClientState.CLOSED, ClientState.FAILED):
            return
        self.state = ClientState.CLOSED
        self._txns.clear()
        self._refresh_at = None
        log.info("allocation %s on %s ended: %s", self.relayed_address, self.server, reason)
        self._events.append(AllocationLost(reason=reason))


def _check_success(method: int, msg: StunMessage) -> None:
    """Raise :class:`DecodeError` if an attribute :meth:`TurnClient._on_success` reads is malformed."""
    if method == Method.ALLOCATE:
        msg.get_all_addresses(Attr.XOR_RELAYED_ADDRESS)
        msg.get_address(Attr.XOR_MAPPED_ADDRESS)
        msg.get_uint(Attr.LIFETIME)
    elif method == Method.REFRESH:
        msg.get_uint(Attr.LIFETIME)


def _udp_span() -> float:
    """Seconds from the first send to giving up: sends at 0, 0.5, 1.5, ... 31.5 s, then 16 × RTO."""
    return RTO * float((1 << (RC - 1)) - 1) + RTO * RM


def _refresh_delay(lifetime: int) -> float:
    return max(lifetime / 2.0, lifetime - 60.0)
