"""The TURN server core (RFC 8656), sans-IO.

Inputs: datagrams (or stream-framed messages) from clients, datagrams arriving at relayed addresses
from peers, confirmations that the shell bound a relay port, closed TCP connections, and the timer.
Every input takes ``now``: monotonic seconds (any origin; the shell passes ``loop.time()``), which
every lifetime and timer is measured in (allocations, permissions, channels, reservations, the
bandwidth bucket), so a step of the system clock neither expires them early nor keeps them alive.
:meth:`TurnServer.handle_client` also takes ``wall``: POSIX seconds, used only where a wall-clock
time is meant: the nonce's timestamp and the expiry carried in TURN REST API usernames.
Outputs: a list of effects for the shell to carry out, in order.

Relay ports: the core picks a relayed address (port from ``[min_port, max_port]`` with the injected
``rng``) and returns :class:`OpenRelay`. The shell binds it and calls :meth:`TurnServer.confirm_relay`
with ``ok=True`` or ``ok=False`` (port taken by another process); only then does the client get its
answer: the success response once every relay of the allocation is bound, another :class:`OpenRelay`
on another port after a failure, or 508 after :data:`MAX_BIND_ATTEMPTS` failures. A shell that binds
synchronously just loops over the effects, feeding confirmations back in.

Nothing raised by decoding bytes from the network escapes: malformed input is a counted drop.

Anti-amplification: a reply to a request that did not authenticate (the 401 and 438 challenges, the
400 and 420 errors before authentication) is, over UDP, at most 3x the request's size
(:mod:`coremesh.stun.budget`): it sheds SOFTWARE, then the error's reason phrase, if need be, and
is dropped otherwise (``drop_amplification``). A 401 with its REALM and NONCE fits the smallest
Allocate RFC 8656 allows (REQUESTED-TRANSPORT only, 28 bytes) while the realm is at most 8 bytes;
a longer realm needs a request longer by as much (ours carries LIFETIME and FINGERPRINT: 44 bytes;
coturn's 52).
"""

from __future__ import annotations

import heapq
import ipaddress
import logging
import random
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

from ..addr import Address
from ..errors import DecodeError
from ..stun.attributes import FAMILY_IPV4, FAMILY_IPV6, STUN_REQUIRED, Attr, StunEncodeError
from ..stun.budget import encode_within
from ..stun.channeldata import CHANNEL_MAX_ACCEPTED, decode_channel_data, encode_channel_data
from ..stun.credentials import NonceStatus, check_nonce, check_rest_api_username, long_term_key, make_nonce
from ..stun.message import Method, StunClass, StunMessage, decode, encode, verify_integrity
from .allocation import (
    CHANNEL_MIN,
    MAX_PEERS_PER_REQUEST,
    MAX_PERMISSIONS,
    Allocation,
    FiveTuple,
    Transport,
    bandwidth_bucket,
)
from .policy import PeerPolicy

log = logging.getLogger("coremesh.turn.server")

DEFAULT_LIFETIME: Final = 600.0
MAX_LIFETIME: Final = 3600.0
NONCE_LIFETIME: Final = 600.0
RESERVATION_LIFETIME: Final = 30.0
MAX_BIND_ATTEMPTS: Final = 8
SWEEP_INTERVAL: Final = 30.0
# The expiry heap is rebuilt once it holds more than twice as many entries as allocations (plus
# this slack): entries of deleted allocations, and of allocations whose expiry moved earlier, go.
HEAP_SLACK: Final = 16
UDP_PROTOCOL: Final = 17
SOFTWARE: Final = "coremesh-turn"

# Comprehension-required attributes this server understands in requests and indications: STUN's
# own and TURN's.
_KNOWN_REQUIRED: Final = STUN_REQUIRED | frozenset(
    {
        Attr.CHANNEL_NUMBER,
        Attr.LIFETIME,
        Attr.XOR_PEER_ADDRESS,
        Attr.DATA,
        Attr.XOR_RELAYED_ADDRESS,
        Attr.REQUESTED_ADDRESS_FAMILY,
        Attr.EVEN_PORT,
        Attr.REQUESTED_TRANSPORT,
        Attr.RESERVATION_TOKEN,
    }
)
# DONT-FRAGMENT is deliberately absent: this server cannot set DF per datagram, so, as RFC 8656
# §7.2 asks, it answers an Allocate carrying it with 420 and the client retries without it.


# ---------------------------------------------------------------------------------------- effects


@dataclass(frozen=True, slots=True)
class SendToClient:
    """Send ``data`` to ``client`` from the server's ``local`` address over ``transport``."""

    data: bytes
    client: Address
    local: Address
    transport: Transport


@dataclass(frozen=True, slots=True)
class SendFromRelay:
    """Send ``data`` from the relayed address ``relay`` to ``peer`` (UDP)."""

    data: bytes
    relay: Address
    peer: Address


@dataclass(frozen=True, slots=True)
class OpenRelay:
    """Bind a UDP socket on ``relay`` for ``allocation``; answer with :meth:`TurnServer.confirm_relay`."""

    allocation: FiveTuple
    relay: Address

    @property
    def family(self) -> int:
        return 6 if ":" in self.relay.host else 4

    @property
    def port(self) -> int:
        return self.relay.port


@dataclass(frozen=True, slots=True)
class CloseRelay:
    """Close the UDP socket bound on ``relay``."""

    relay: Address


Effect = SendToClient | SendFromRelay | OpenRelay | CloseRelay


# ----------------------------------------------------------------------------------------- config


@dataclass(frozen=True, slots=True)
class TurnServerConfig:
    """What the core needs. ``0`` for a quota or ``max_bps`` means unlimited.

    ``users`` are static long-term credentials (name → password); ``static_auth_secret`` enables
    the TURN REST API convention (username ``EXPIRY[:NAME]``, password base64(HMAC-SHA1(secret,
    username))). ``relay_ipv4`` / ``relay_ipv6`` are the IPs relayed addresses are bound on; when one
    is unset, the server address the request arrived on is used if it is of that family.
    ``external_ipv4`` / ``external_ipv6`` (coturn's ``--external-ip``, for a relay behind a 1:1 NAT or
    a load balancer) replace the IP of that family in the XOR-RELAYED-ADDRESS of Allocate responses;
    the port stays the relay's and relay sockets stay bound on the relay IP.
    ``max_bps`` is in bytes per second (as coturn's ``--max-bps``), both directions together.
    ``max_permissions`` caps the live permissions of one allocation (508 beyond it) and
    ``max_peers_per_request`` the XOR-PEER-ADDRESS attributes of one CreatePermission (400 beyond).
    """

    realm: str = "coremesh"
    users: Mapping[str, str] = field(default_factory=dict)
    static_auth_secret: str | None = None
    policy: PeerPolicy = field(default_factory=PeerPolicy)
    min_port: int = 49152
    max_port: int = 65535
    user_quota: int = 0
    total_quota: int = 0
    max_bps: int = 0
    relay_ipv4: str | None = None
    relay_ipv6: str | None = None
    external_ipv4: str | None = None
    external_ipv6: str | None = None
    default_lifetime: float = DEFAULT_LIFETIME
    max_lifetime: float = MAX_LIFETIME
    nonce_lifetime: float = NONCE_LIFETIME
    software: str | None = SOFTWARE
    max_permissions: int = MAX_PERMISSIONS
    max_peers_per_request: int = MAX_PEERS_PER_REQUEST

    def __post_init__(self) -> None:
        if not self.realm:
            raise ValueError("realm must not be empty")
        if not 1 <= self.min_port <= self.max_port <= 65535:
            raise ValueError(f"port range [{self.min_port}, {self.max_port}] is not within 1-65535")
        for name in ("user_quota", "total_quota", "max_bps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("max_permissions", "max_peers_per_request"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not 0 < self.default_lifetime <= self.max_lifetime:
            raise ValueError("need 0 < default_lifetime <= max_lifetime")
        for name, version in (("external_ipv4", 4), ("external_ipv6", 6)):
            value = getattr(self, name)
            if value is None:
                continue
            try:
                ip = ipaddress.ip_address(value)
            except ValueError:
                raise ValueError(f"{name}: {value!r} is not an IP address") from None
            if ip.version != version:
                raise ValueError(f"{name}: {value} is not an IPv{version} address")
            object.__setattr__(self, name, ip.compressed)

    def advertised(self, relay: Address) -> Address:
        """The relayed address as clients are told it: ``external_ipv4``/``external_ipv6`` with the
        relay's port when set for its family, else ``relay`` itself."""
        external = self.external_ipv6 if ":" in relay.host else self.external_ipv4
        return relay if external is None else Address(external, relay.port)


# ------------------------------------------------------------------------------------------ server


@dataclass(slots=True)
class _PendingAllocate:
    """What the success response needs once every relay is bound."""

    request: StunMessage
    lifetime: float
    token: bytes | None
    address_errors: list[tuple[int, int, str]]  # (family code, error code, reason)
    even: bool = False  # EVEN-PORT: retries must pick an even port too (and move the reservation)
    fixed: bool = False  # RESERVATION-TOKEN: the port was promised; no other will do
    attempts: int = 0


class _Reject(Exception):
    """An error response to a request (internal control flow)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


_Handler = Callable[[StunMessage, FiveTuple, str, bytes, float], list[Effect]]


class TurnServer:
    """All allocations of one TURN server. See the module docstring for the effect protocol."""

    def __init__(self, config: TurnServerConfig, *, rng: random.Random, secret: bytes | None = None) -> None:
        self.config = config
        self._rng = rng
        self._nonce_secret = secret or rng.randbytes(32)
        self._static_keys = {
            name: long_term_key(name, config.realm, password) for name, password in config.users.items()
        }
        self._rest_secret = config.static_auth_secret
        self.allocations: dict[FiveTuple, Allocation] = {}
        self._by_relay: dict[Address, Allocation] = {}
        self._reserved: dict[Address, tuple[bytes, float]] = {}  # relay address -> (token, expiry)
        self._by_token: dict[bytes, Address] = {}
        self._per_user: Counter[str] = Counter()
        self._pending: dict[FiveTuple, _PendingAllocate] = {}
        self._expiries: list[tuple[float, int, FiveTuple]] = []
        self._seq = 0
        self._next_sweep: float | None = None
        self.server_addresses: set[Address] = set()  # the shell adds its listening addresses
        self.counters: Counter[str] = Counter()

    # ------------------------------------------------------------------------------ public inputs

    def handle_client(
        self, data: bytes, client: Address, local: Address, transport: Transport, now: float, *, wall: float
    ) -> list[Effect]:
        """A STUN message or a ChannelData message from a client. Never raises on bad input.

        ``now`` is monotonic seconds (lifetimes); ``wall`` is POSIX seconds (nonces, REST API expiry).
        """
        key = FiveTuple(client, local, transport)
        try:
            if not data:
                return self._drop("drop_malformed")
            first = data[0]
            if 0x40 <= first <= 0x7F:
                return self._on_channel_data(data, key, now)
            if first > 0x03:
                return self._drop("drop_unknown_type")
            try:
                msg = decode(data)
            except DecodeError:
                return self._drop("drop_malformed")
            if msg.msg_class is StunClass.INDICATION:
                if msg.method is Method.SEND:
                    return self._on_send(msg, key, now)
                return self._drop("drop_unexpected")
            if msg.msg_class is not StunClass.REQUEST:
                return self._drop("drop_unexpected")
            return self._on_request(msg, data, key, now, wall)
        except (DecodeError, StunEncodeError) as exc:
            log.debug("malformed message from %s: %s", client, exc)
            return self._drop("drop_malformed")

    def handle_peer(self, data: bytes, relay: Address, peer: Address, now: float) -> list[Effect]:
        """A datagram from ``peer`` arrived at the relayed address ``relay``."""
        alloc = self._by_relay.get(relay)
        if alloc is None or not alloc.confirmed or now >= alloc.expires:
            return self._drop("drop_no_allocation")
        if not alloc.has_permission(peer.host, now):
            return self._drop("drop_no_permission")
        if not alloc.within_bandwidth(len(data), now):
            return self._drop("drop_bandwidth")
        key = alloc.key
        channel = alloc.live_channel_for(peer, now)
        if channel is not None:
            out = encode_channel_data(channel.number, data, pad=key.transport != "udp")
        else:
            msg = StunMessage(Method.DATA, StunClass.INDICATION, self._rng.randbytes(12))
            msg.add_address(Attr.XOR_PEER_ADDRESS, peer)
            msg.add(Attr.DATA, data)
            out = encode(msg, fingerprint=False)
        self.counters["packets_to_client"] += 1
        self.counters["bytes_to_client"] += len(data)
        return [SendToClient(out, key.client, key.local, key.transport)]

    def confirm_relay(self, relay: Address, ok: bool, now: float) -> list[Effect]:
        """The shell bound (``ok``) or failed to bind the relay socket asked for by :class:`OpenRelay`."""
        alloc = self._by_relay.get(relay)
        if alloc is None:
            # The allocation was forgotten while the shell was binding: what it bound is nobody's.
            return [CloseRelay(relay)] if ok else []
        if relay not in alloc.pending:
            return []
        pending = self._pending.get(alloc.key)
        if pending is None:  # pragma: no cover - the two tables move together
            return []
        alloc.pending.discard(relay)
        if not ok:
            self.counters["relay_bind_failures"] += 1
            del self._by_relay[relay]
            family = 6 if ":" in relay.host else 4
            del alloc.relays[family]
            pending.attempts += 1
            candidate = None
            if pending.attempts < MAX_BIND_ATTEMPTS and not pending.fixed:
                candidate = self._pick_relay(relay.host, even=pending.even, now=now)
            if candidate is None:
                return self._abort_allocate(alloc, pending, 508, "Insufficient Capacity")
            if pending.token is not None:  # move the reserved next port along with the even one
                self._reserved.pop(Address(relay.host, relay.port + 1), None)
                self._reserved[Address(candidate.host, candidate.port + 1)] = (
                    pending.token,
                    now + RESERVATION_LIFETIME,
                )
                self._by_token[pending.token] = Address(candidate.host, candidate.port + 1)
            alloc.relays[family] = candidate
            alloc.pending.add(candidate)
            self._by_relay[candidate] = alloc
            return [OpenRelay(alloc.key, candidate)]
        if alloc.pending:
            return []
        return self._finish_allocate(alloc, pending, now)

    def connection_closed(
        self, client: Address, local: Address, transport: Transport, now: float
    ) -> list[Effect]:
        """A TCP/TLS connection from a client closed: its allocation ends with it (RFC 8656 §7)."""
        alloc = self.allocations.get(FiveTuple(client, local, transport))
        return self._delete(alloc) if alloc is not None else []

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` next needs to run, or ``None``."""
        times = [t for t in (self._expiries[0][0] if self._expiries else None, self._next_sweep) if t]
        return min(times) if times else None

    def handle_timer(self, now: float) -> list[Effect]:
        effects: list[Effect] = []
        while self._expiries and self._expiries[0][0] <= now:
            _, seq, key = heapq.heappop(self._expiries)
            alloc = self.allocations.get(key)
            if alloc is None or alloc.timer_seq != seq:
                continue  # stale: the allocation is gone, or has an earlier entry of its own
            alloc.timer_seq = 0
            if alloc.expires <= now:
                self.counters["allocations_expired"] += 1
                effects.extend(self._delete(alloc))
            else:  # refreshed since this entry was pushed
                self._push_expiry(alloc)
        if self._next_sweep is not None and now >= self._next_sweep:
            for alloc in self.allocations.values():
                alloc.expire(now)
            for relay, (token, expiry) in list(self._reserved.items()):
                if expiry <= now:
                    del self._reserved[relay]
                    self._by_token.pop(token, None)
            busy = self.allocations or self._reserved
            self._next_sweep = now + SWEEP_INTERVAL if busy else None
        return effects

    def close_all(self) -> list[Effect]:
        """Delete every allocation (shutdown)."""
        effects: list[Effect] = []
        for alloc in list(self.allocations.values()):
            effects.extend(self._delete(alloc))
        return effects

    def stats(self) -> dict[str, int]:
        out = dict(self.counters)
        out["allocations_current"] = len(self.allocations)
        out["permissions_current"] = sum(len(a.permissions) for a in self.allocations.values())
        out["channels_current"] = sum(len(a.channels) for a in self.allocations.values())
        out["expiry_entries"] = len(self._expiries)
        out["reservations_current"] = len(self._reserved)
        return out

    # ------------------------------------------------------------------------------- internals

    def _drop(self, reason: str) -> list[Effect]:
        self.counters[reason] += 1
        self.counters["drops"] += 1
        return []

    def _on_request(
        self, msg: StunMessage, raw: bytes, key: FiveTuple, now: float, wall: float
    ) -> list[Effect]:
        handlers: dict[int, _Handler] = {
            Method.ALLOCATE: self._allocate,
            Method.REFRESH: self._refresh,
            Method.CREATE_PERMISSION: self._create_permission,
            Method.CHANNEL_BIND: self._channel_bind,
        }
        handler = handlers.get(msg.method)
        if handler is None:
            self.counters["drop_unknown_method"] += 1
            return self._error(msg, key, 400, "Bad Request: unknown method")
        unknown = msg.comprehension_required_unknown(_KNOWN_REQUIRED)
        if unknown:
            self.counters["error_420"] += 1
            err = self._error_message(msg, 420, "Unknown Attribute")
            err.add_unknown_attributes(unknown)
            return self._unauthenticated(err, key, msg)
        auth = self._authenticate(msg, raw, key, wall)
        if isinstance(auth, list):
            return auth
        username, hmac_key = auth
        try:
            return handler(msg, key, username, hmac_key, now)
        except _Reject as rej:
            self.counters[f"error_{rej.code}"] += 1
            return [self._reply(self._error_message(msg, rej.code, rej.reason), key, hmac_key, msg)]

    # -- authentication (RFC 8489 §9.2.4) -------------------------------------------------------

    def _authenticate(
        self, msg: StunMessage, raw: bytes, key: FiveTuple, wall: float
    ) -> tuple[str, bytes] | list[Effect]:
        """The user and key of an authenticated request, or the challenge/error to send. ``wall`` is
        POSIX seconds: nonces carry their issue time and REST API usernames their expiry in it."""
        if not msg.has(Attr.MESSAGE_INTEGRITY) and not msg.has(Attr.MESSAGE_INTEGRITY_SHA256):
            self.counters["auth_challenges"] += 1
            return self._challenge(msg, key, 401, "Unauthorized", wall)
        username = msg.get_text(Attr.USERNAME)
        realm = msg.get_text(Attr.REALM)
        nonce = msg.get_text(Attr.NONCE)
        if username is None or realm is None or nonce is None:
            self.counters["auth_failures"] += 1
            return self._error(msg, key, 400, "Bad Request: missing USERNAME, REALM or NONCE")
        status = check_nonce(
            nonce, self._nonce_secret, wall, lifetime=self.config.nonce_lifetime, bound_to=key.client.host
        )
        if status is not NonceStatus.VALID:
            self.counters["stale_nonces" if status is NonceStatus.STALE else "invalid_nonces"] += 1
            return self._challenge(msg, key, 438, "Stale Nonce", wall)
        hmac_key = self._key_for(username, realm, wall)
        if hmac_key is None or not verify_integrity(raw, hmac_key):
            self.counters["auth_failures"] += 1
            return self._challenge(msg, key, 401, "Unauthorized", wall)
        return username, hmac_key

    def _key_for(self, username: str, realm: str, wall: float) -> bytes | None:
        if realm != self.config.realm:
            return None
        static = self._static_keys.get(username)
        if static is not None:
            return static
        if self._rest_secret is None:
            return None
        password = check_rest_api_username(self._rest_secret, username, wall)
        return None if password is None else long_term_key(username, realm, password)

    def _challenge(
        self, msg: StunMessage, key: FiveTuple, code: int, reason: str, wall: float
    ) -> list[Effect]:
        err = self._error_message(msg, code, reason)
        err.add_text(Attr.REALM, self.config.realm)
        err.add_text(
            Attr.NONCE,
            make_nonce(self._nonce_secret, wall, bound_to=key.client.host, random_bytes=self._rng.randbytes),
        )
        return self._unauthenticated(err, key, msg)

    # -- replies ----------------------------------------------------------------------------------

    def _error_message(self, request: StunMessage, code: int, reason: str) -> StunMessage:
        err = request.response(StunClass.ERROR)
        err.add_error(code, reason)
        if self.config.software:
            err.add_text(Attr.SOFTWARE, self.config.software)
        return err

    def _error(self, request: StunMessage, key: FiveTuple, code: int, reason: str) -> list[Effect]:
        self.counters[f"error_{code}"] += 1
        return self._unauthenticated(self._error_message(request, code, reason), key, request)

    def _reply(
        self, msg: StunMessage, key: FiveTuple, hmac_key: bytes | None, request: StunMessage
    ) -> SendToClient:
        data = encode(msg, integrity_key=hmac_key, fingerprint=request.has(Attr.FINGERPRINT))
        return SendToClient(data, key.client, key.local, key.transport)

    def _unauthenticated(self, msg: StunMessage, key: FiveTuple, request: StunMessage) -> list[Effect]:
        """A reply to a request that did not authenticate: over UDP at most 3x the request's size
        (:mod:`coremesh.stun.budget`), shedding SOFTWARE and the reason phrase if need be, else
        dropped and counted. The
        request's size is its encoding (decoded attributes keep their raw bytes, FINGERPRINT too)."""
        fingerprint = request.has(Attr.FINGERPRINT)
        received = len(encode(request, fingerprint=False))
        validated = key.transport != "udp"
        shed = (Attr.SOFTWARE, Attr.ERROR_CODE)
        data = encode_within(msg, received, shed, fingerprint=fingerprint, validated=validated)
        if data is None:
            self.counters["drop_amplification"] += 1
            return []
        return [SendToClient(data, key.client, key.local, key.transport)]

    def _success(self, request: StunMessage) -> StunMessage:
        ok = request.response()
        if self.config.software:
            ok.add_text(Attr.SOFTWARE, self.config.software)
        return ok

    # -- Allocate (RFC 8656 §7.2) -------------------------------------------------------------

    def _allocate(
        self, msg: StunMessage, key: FiveTuple, username: str, hmac_key: bytes, now: float
    ) -> list[Effect]:
        existing = self.allocations.get(key)
        if existing is not None:
            if existing.transaction_id == msg.transaction_id:
                if existing.success:  # a retransmission: the same answer again
                    return [SendToClient(existing.success, key.client, key.local, key.transport)]
                return []
            raise _Reject(437, "Allocation Mismatch")
        transport = msg.get_uint(Attr.REQUESTED_TRANSPORT)
        if transport is None:
            raise _Reject(400, "Bad Request: REQUESTED-TRANSPORT missing")
        if transport != UDP_PROTOCOL:
            raise _Reject(442, "Unsupported Transport Protocol")
        token = msg.get(Attr.RESERVATION_TOKEN)
        even = msg.get_even_port()
        requested = msg.get_uint(Attr.REQUESTED_ADDRESS_FAMILY)
        additional = msg.get_uint(Attr.ADDITIONAL_ADDRESS_FAMILY)
        if token is not None and (even is not None or requested is not None or additional is not None):
            raise _Reject(400, "Bad Request: RESERVATION-TOKEN with EVEN-PORT or an address family")
        if requested is not None and additional is not None:
            raise _Reject(400, "Bad Request: REQUESTED- and ADDITIONAL-ADDRESS-FAMILY together")
        if additional is not None and additional != FAMILY_IPV6:
            raise _Reject(400, "Bad Request: ADDITIONAL-ADDRESS-FAMILY must be IPv6")
        if even is not None and additional is not None:
            raise _Reject(400, "Bad Request: EVEN-PORT with ADDITIONAL-ADDRESS-FAMILY")
        if requested is not None and requested not in (FAMILY_IPV4, FAMILY_IPV6):
            raise _Reject(440, "Address Family not Supported")
        quota = self.config.user_quota
        if quota and self._per_user[username] >= quota:
            raise _Reject(486, "Allocation Quota Reached")
        if self.config.total_quota and len(self.allocations) >= self.config.total_quota:
            raise _Reject(486, "Allocation Quota Reached")

        relays: dict[int, Address] = {}
        errors: list[tuple[int, int, str]] = []
        reserve_next = False
        if token is not None:
            reserved = self._by_token.pop(token, None)
            entry = self._reserved.pop(reserved, None) if reserved is not None else None
            if reserved is None or entry is None or entry[1] <= now:
                raise _Reject(508, "Insufficient Capacity: unknown or expired RESERVATION-TOKEN")
            relays[6 if ":" in reserved.host else 4] = reserved
        else:
            families = [FAMILY_IPV4, FAMILY_IPV6] if additional is not None else [requested or FAMILY_IPV4]
            reserve_next = bool(even)
            for fam in families:
                version = 4 if fam == FAMILY_IPV4 else 6
                ip = self._relay_ip(version, key.local)
                if ip is None:
                    errors.append((fam, 440, "Address Family not Supported"))
                    continue
                relay = self._pick_relay(ip, even=even is not None, now=now)
                if relay is None:
                    errors.append((fam, 508, "Insufficient Capacity"))
                    continue
                relays[version] = relay
            if not relays:
                code, reason = (
                    (errors[0][1], errors[0][2]) if len(errors) == 1 else (508, "Insufficient Capacity")
                )
                if all(e[1] == 440 for e in errors):
                    code, reason = 440, "Address Family not Supported"
                raise _Reject(code, reason)
        new_token: bytes | None = None
        if reserve_next:
            (relay,) = relays.values()
            nxt = Address(relay.host, relay.port + 1)
            new_token = self._rng.randbytes(8)
            self._reserved[nxt] = (new_token, now + RESERVATION_LIFETIME)
            self._by_token[new_token] = nxt
        lifetime = self._lifetime(msg)
        alloc = Allocation(
            key=key,
            username=username,
            realm=self.config.realm,
            hmac_key=hmac_key,
            relays=relays,
            expires=now + lifetime,
            bucket=bandwidth_bucket(self.config.max_bps, now),
            transaction_id=msg.transaction_id,
            pending=set(relays.values()),
        )
        self.allocations[key] = alloc
        self._per_user[username] += 1
        for relay in relays.values():
            self._by_relay[relay] = alloc
        self._pending[key] = _PendingAllocate(
            msg, lifetime, new_token, errors, even=even is not None, fixed=token is not None
        )
        return [OpenRelay(key, relay) for relay in relays.values()]

    def _finish_allocate(self, alloc: Allocation, pending: _PendingAllocate, now: float) -> list[Effect]:
        del self._pending[alloc.key]
        alloc.confirmed = True
        msg = pending.request
        ok = self._success(msg)
        for version in sorted(alloc.relays):
            ok.add_address(Attr.XOR_RELAYED_ADDRESS, self.config.advertised(alloc.relays[version]))
        ok.add_uint(Attr.LIFETIME, int(pending.lifetime))
        if pending.token is not None:
            ok.add(Attr.RESERVATION_TOKEN, pending.token)
        ok.add_address(Attr.XOR_MAPPED_ADDRESS, alloc.key.client)
        for fam, code, reason in pending.address_errors:
            ok.add_address_error(fam, code, reason)
        reply = self._reply(ok, alloc.key, alloc.hmac_key, msg)
        alloc.success = reply.data
        self.counters["allocations_total"] += 1
        self._schedule(alloc, now)
        log.info(
            "allocation %s for %r: %s", alloc.key, alloc.username, sorted(map(str, alloc.relays.values()))
        )
        return [reply]

    def _abort_allocate(
        self, alloc: Allocation, pending: _PendingAllocate, code: int, reason: str
    ) -> list[Effect]:
        effects: list[Effect] = [CloseRelay(r) for r in alloc.relays.values() if r not in alloc.pending]
        self._forget(alloc)
        self.counters[f"error_{code}"] += 1
        err = self._error_message(pending.request, code, reason)
        effects.append(self._reply(err, alloc.key, alloc.hmac_key, pending.request))
        return effects

    def _relay_ip(self, version: int, local: Address) -> str | None:
        configured = self.config.relay_ipv4 if version == 4 else self.config.relay_ipv6
        if configured:
            return configured
        is_v6 = ":" in local.host
        if (version == 6) == is_v6 and local.host not in ("0.0.0.0", "::"):
            return local.host
        return None

    def _pick_relay(self, ip: str, *, even: bool, now: float) -> Address | None:
        lo, hi = self.config.min_port, self.config.max_port

        def free(port: int) -> bool:
            addr = Address(ip, port)
            if addr in self._by_relay:
                return False
            held = self._reserved.get(addr)
            return held is None or held[1] <= now

        def fits(port: int) -> bool:
            if even:
                return port % 2 == 0 and port + 1 <= hi and free(port) and free(port + 1)
            return free(port)

        for _ in range(16):
            port = self._rng.randint(lo, hi)
            if fits(port):
                return Address(ip, port)
        span = hi - lo + 1
        start = self._rng.randint(0, span - 1)
        for i in range(span):
            port = lo + (start + i) % span
            if fits(port):
                return Address(ip, port)
        return None

    def _lifetime(self, msg: StunMessage) -> float:
        asked = msg.get_uint(Attr.LIFETIME)
        if asked is None:
            return self.config.default_lifetime
        return max(self.config.default_lifetime, min(float(asked), self.config.max_lifetime))

    def _schedule(self, alloc: Allocation, now: float) -> None:
        """Make sure the expiry heap wakes up no later than ``alloc.expires``. Each allocation has at
        most one live entry, pushed again only when its expiry moves earlier than that entry; a later
        expiry is picked up when the entry fires (and is pushed again then)."""
        if alloc.timer_seq == 0 or alloc.expires < alloc.timer_at:
            self._push_expiry(alloc)
            self._compact_expiries()
        if self._next_sweep is None:
            self._next_sweep = now + SWEEP_INTERVAL

    def _push_expiry(self, alloc: Allocation) -> None:
        self._seq += 1
        alloc.timer_seq = self._seq
        alloc.timer_at = alloc.expires
        heapq.heappush(self._expiries, (alloc.expires, self._seq, alloc.key))

    def _compact_expiries(self) -> None:
        """Rebuild the heap from the live entries once stale ones outnumber them."""
        if len(self._expiries) <= 2 * len(self.allocations) + HEAP_SLACK:
            return
        live = [
            (at, seq, key)
            for at, seq, key in self._expiries
            if (alloc := self.allocations.get(key)) is not None and alloc.timer_seq == seq
        ]
        heapq.heapify(live)
        self._expiries = live

    def _forget(self, alloc: Allocation) -> None:
        self.allocations.pop(alloc.key, None)
        alloc.timer_seq = 0
        pending = self._pending.pop(alloc.key, None)
        if pending is not None and pending.token is not None:
            # Never answered with success, so the client never learnt the EVEN-PORT reservation's
            # token: free the port it holds now rather than keep it from others.
            reserved = self._by_token.pop(pending.token, None)
            if reserved is not None:
                self._reserved.pop(reserved, None)
        for relay in alloc.relays.values():
            if self._by_relay.get(relay) is alloc:
                del self._by_relay[relay]
        self._per_user[alloc.username] -= 1
        if self._per_user[alloc.username] <= 0:
            del self._per_user[alloc.username]
        self._compact_expiries()

    def _delete(self, alloc: Allocation) -> list[Effect]:
        self._forget(alloc)
        log.info("allocation %s of %r deleted", alloc.key, alloc.username)
        return [CloseRelay(r) for r in alloc.relays.values() if r not in alloc.pending]

    def _existing(self, key: FiveTuple, username: str, now: float) -> Allocation:
        alloc = self.allocations.get(key)
        if alloc is None or not alloc.confirmed or now >= alloc.expires:
            raise _Reject(437, "Allocation Mismatch")
        if alloc.username != username:
            raise _Reject(441, "Wrong Credentials")
        return alloc

    # -- Refresh (RFC 8656 §7.3) ------------------------------------------------------------

    def _refresh(
        self, msg: StunMessage, key: FiveTuple, username: str, hmac_key: bytes, now: float
    ) -> list[Effect]:
        alloc = self._existing(key, username, now)
        family = msg.get_uint(Attr.REQUESTED_ADDRESS_FAMILY)
        if family is not None and (4 if family == FAMILY_IPV4 else 6) not in alloc.relays:
            raise _Reject(443, "Peer Address Family Mismatch")
        effects: list[Effect] = []
        if msg.get_uint(Attr.LIFETIME) == 0:
            lifetime = 0.0
            effects.extend(self._delete(alloc))
        else:
            lifetime = self._lifetime(msg)
            alloc.expires = now + lifetime
            self._schedule(alloc, now)
        ok = self._success(msg)
        ok.add_uint(Attr.LIFETIME, int(lifetime))
        effects.insert(0, self._reply(ok, key, hmac_key, msg))
        return effects

    # -- CreatePermission (RFC 8656 §9) and ChannelBind (§11) ----------------------------------

    def _peer_addresses(self, msg: StunMessage, alloc: Allocation) -> list[Address]:
        if len(msg.get_all(Attr.XOR_PEER_ADDRESS)) > self.config.max_peers_per_request:
            self.counters["peer_limit_refusals"] += 1
            raise _Reject(400, "Bad Request: too many XOR-PEER-ADDRESS attributes")
        peers = msg.get_all_addresses(Attr.XOR_PEER_ADDRESS)
        if not peers:
            raise _Reject(400, "Bad Request: XOR-PEER-ADDRESS missing")
        for peer in peers:
            if (6 if ":" in peer.host else 4) not in alloc.relays:
                raise _Reject(443, "Peer Address Family Mismatch")
            why = self.config.policy.reason(peer.host)
            if why is not None or peer in self.server_addresses:
                self.counters["forbidden_peers"] += 1
                log.info("allocation %s: peer %s refused (%s)", alloc.key, peer, why or "a server address")
                raise _Reject(403, "Forbidden")
        return peers

    def _check_room(self, alloc: Allocation, peers: list[Address], now: float) -> None:
        """508 when the new permissions would take ``alloc`` past ``max_permissions``: RFC 8656 §9.2
        names 508 for a valid request the server cannot fulfil because of a capacity limit (486 is
        the Allocate quota). Nothing of the request is installed; refreshing live ones still works."""
        if not alloc.room_for_permissions({p.host for p in peers}, now, self.config.max_permissions):
            self.counters["permission_limit_refusals"] += 1
            log.info("allocation %s: permission cap %d reached", alloc.key, self.config.max_permissions)
            raise _Reject(508, "Insufficient Capacity: too many permissions")

    def _create_permission(
        self, msg: StunMessage, key: FiveTuple, username: str, hmac_key: bytes, now: float
    ) -> list[Effect]:
        alloc = self._existing(key, username, now)
        peers = self._peer_addresses(msg, alloc)
        self._check_room(alloc, peers, now)
        for peer in peers:
            alloc.install_permission(peer.host, now)
        return [self._reply(self._success(msg), key, hmac_key, msg)]

    def _channel_bind(
        self, msg: StunMessage, key: FiveTuple, username: str, hmac_key: bytes, now: float
    ) -> list[Effect]:
        alloc = self._existing(key, username, now)
        number = msg.get_uint(Attr.CHANNEL_NUMBER)
        if number is None:
            raise _Reject(400, "Bad Request: CHANNEL-NUMBER missing")
        if not CHANNEL_MIN <= number <= CHANNEL_MAX_ACCEPTED:  # RFC 5766's range, for deployed clients
            raise _Reject(400, "Bad Request: channel number out of range")
        peers = self._peer_addresses(msg, alloc)
        if len(peers) != 1:
            raise _Reject(400, "Bad Request: one XOR-PEER-ADDRESS expected")
        self._check_room(alloc, peers, now)  # the binding installs a permission for the peer too
        conflict = alloc.bind_channel(number, peers[0], now)
        if conflict is not None:
            raise _Reject(400, f"Bad Request: {conflict}")
        return [self._reply(self._success(msg), key, hmac_key, msg)]

    # -- data from the client ---------------------------------------------------------------

    def _relay_out(self, alloc: Allocation, data: bytes, peer: Address, now: float) -> list[Effect]:
        relay = alloc.relays.get(6 if ":" in peer.host else 4)
        if relay is None:
            return self._drop("drop_family_mismatch")
        if not alloc.has_permission(peer.host, now):
            return self._drop("drop_no_permission")
        if peer in self.server_addresses:
            return self._drop("drop_loop")
        if not alloc.within_bandwidth(len(data), now):
            return self._drop("drop_bandwidth")
        self.counters["packets_to_peer"] += 1
        self.counters["bytes_to_peer"] += len(data)
        return [SendFromRelay(data, relay, peer)]

    def _on_send(self, msg: StunMessage, key: FiveTuple, now: float) -> list[Effect]:
        alloc = self.allocations.get(key)
        if alloc is None or not alloc.confirmed or now >= alloc.expires:
            return self._drop("drop_no_allocation")
        if msg.comprehension_required_unknown(_KNOWN_REQUIRED):
            return self._drop("drop_unknown_attribute")
        peer = msg.get_address(Attr.XOR_PEER_ADDRESS)
        data = msg.get(Attr.DATA)
        if peer is None or data is None:
            return self._drop("drop_malformed")
        return self._relay_out(alloc, data, peer, now)

    def _on_channel_data(self, data: bytes, key: FiveTuple, now: float) -> list[Effect]:
        number, payload = decode_channel_data(data, pad=key.transport != "udp")
        alloc = self.allocations.get(key)
        if alloc is None or not alloc.confirmed or now >= alloc.expires:
            return self._drop("drop_no_allocation")
        channel = alloc.live_channel(number, now)
        if channel is None:
            return self._drop("drop_unknown_channel")
        return self._relay_out(alloc, payload, channel.peer, now)


# ------------------------------------------------------------------------------------------ helpers


def stun_method(data: bytes) -> int | None:
    """The STUN method of ``data`` from its first two bytes, or ``None`` if it is not STUN-shaped."""
    if len(data) < 20 or data[0] > 0x03:
        return None
    t = (data[0] << 8) | data[1]
    return (t & 0x000F) | ((t & 0x00E0) >> 1) | ((t & 0x3E00) >> 2)
