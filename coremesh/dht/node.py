"""``DhtNode``: the sans-IO Kademlia node (aioquic-style datagram endpoint).

Fed with ``receive_datagram(data, addr, now)`` and ``handle_timer(now)``; drained with
``datagrams_to_send(now)``, ``get_timer()`` and ``next_event()``. Time and randomness are inputs
(``now`` is monotonic seconds; ``now + wall_offset`` is unix time, used for record expiry).

Trust rules:
- No peer list travels in clear: every message is signed by its sender and sealed to the peer it is
  for (Noise N to its static key, the reply under the derived key: :mod:`coremesh.dht.secure`). A
  seed known only by address is first asked a HELLO, answered by its signed PeerId alone.
- A response is only accepted for a txid this node sent to that very address, under the key of that
  request (so from that peer); anything else is an ``unsolicited_response`` or ``undecryptable``
  drop. A sealed request outside the replay window, or seen before, is refused.
- Only a peer whose address answered a signed response to our request enters the routing table. An
  unknown peer that sends us a request gets a verification PING (bounded, backed off); no state is
  kept for a sender that never answers.
- A response whose signature is valid but whose content is garbage (malformed body, a record that
  does not match the target or fails its signature) demotes its signer.
- Requests are answered at most ``max_replies_per_second`` per source IP, and what is sent to an
  address in answer is never more than three times the request, unless the request carried an
  address token this node gave that address (QUIC-style anti-amplification and address validation).

Every drop is counted by reason in :attr:`DhtNode.counters`.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import random
import struct
from collections import Counter, OrderedDict, deque
from typing import Final

import nacl.bindings as sodium

from ..addr import Address
from ..errors import AuthenticationFailed, DecodeError, InvalidPeerId, LocalProtocolError
from ..identity import Identity, PeerId
from ..ratelimit import TokenBucket
from ..secure.wire import PacketType
from . import events as ev
from . import messages as m
from . import secure as sec
from .config import DhtConfig
from .lookup import FINISHED, WAITING_AT_CAPACITY, ClosestPeersIter, Waiting
from .records import InvalidRecord, PeerRecord, RecordRejected
from .routing import RoutingTable, Update
from .store import RecordStore

MAX_EVENTS: Final = 4096
_SNAPSHOT_MAGIC: Final = b"coremesh-dht-snapshot-v1\n"
MAX_SNAPSHOT_CONTACTS: Final = 4096
MAX_SNAPSHOT_RECORDS: Final = 65535
VERIFY_PING_SIZE: Final = sec.SEALED_OVERHEAD + m.OVERHEAD  # a sealed PING: 166 bytes


class _Purpose(enum.Enum):
    LOOKUP = "lookup"
    BOOTSTRAP = "bootstrap"  # PING a seed address (peer id unknown, or pinned)
    LIVENESS = "liveness"  # PING a table contact not heard from lately
    VERIFY = "verify"  # PING an unknown requester to verify its address
    STORE = "store"


class _QueryKind(enum.Enum):
    USER = "user"
    JOIN = "join"  # lookup of our own id after bootstrap
    REFRESH = "refresh"
    PUBLISH = "publish"


class _Query:
    __slots__ = ("deadline", "id", "iter", "kind", "record", "retried", "started", "target")

    def __init__(
        self, qid: int, kind: _QueryKind, target: PeerId, it: ClosestPeersIter, now: float, deadline: float
    ) -> None:
        self.id = qid
        self.kind = kind
        self.target = target
        self.iter = it
        self.started = now
        self.deadline = deadline
        self.record: PeerRecord | None = None
        self.retried = False


class _Pending:
    """A request in flight: a HELLO (``peer`` and ``key`` None, ``expect`` None) or a sealed request
    to ``peer``, whose reply opens with ``key``."""

    __slots__ = ("address", "deadline", "expect", "key", "peer", "purpose", "query")

    def __init__(
        self,
        expect: m.Kind | None,
        peer: PeerId | None,
        address: Address,
        deadline: float,
        purpose: _Purpose,
        query: _Query | None,
        key: bytes | None,
    ) -> None:
        self.expect = expect
        self.peer = peer
        self.address = address
        self.deadline = deadline
        self.purpose = purpose
        self.query = query
        self.key = key


class _Publish:
    __slots__ = ("attempted", "pending", "seq", "stored")

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.pending: set[int] = set()
        self.stored = 0
        self.attempted = 0


class DhtNode:
    """One Kademlia DHT member. See the module docstring for the trust rules."""

    def __init__(
        self,
        identity: Identity,
        config: DhtConfig | None = None,
        *,
        rng: random.Random,
        wall_offset: float = 0.0,
    ) -> None:
        self.identity = identity
        self.peer_id = identity.peer_id
        self.config = config if config is not None else DhtConfig()
        self.rng = rng
        self.wall_offset = wall_offset
        self._secret = identity.seed + identity.peer_id.key
        self._static_private = identity.x25519_private
        self._static_public = identity.x25519_public
        self._replay = sec.ReplayCache(self.config.replay_window, self.config.replay_cache_size)
        self._token_maker = sec.AddressTokens(rng.randbytes(32), self.config.token_lifetime)
        self._tokens: OrderedDict[Address, tuple[bytes, float]] = OrderedDict()  # theirs, for us
        self.table = RoutingTable(self.peer_id, self.config)
        self.store = RecordStore(self.peer_id, self.config.max_records, self.config.max_record_ttl)
        self.counters: Counter[str] = Counter()
        self._out: list[tuple[bytes, Address]] = []
        self._events: deque[ev.Event] = deque()
        self._pending: dict[int, _Pending] = {}
        self._deadlines: list[tuple[float, int]] = []  # (deadline, txid), lazily cleaned
        self._queries: dict[int, _Query] = {}
        self._queued: deque[_Query] = deque()
        self._starting_queued = False
        self._query_ids = itertools.count(1)
        self._probing: dict[PeerId, int] = {}  # liveness/verify pings in flight, by peer
        self._verified_at: OrderedDict[PeerId, float] = OrderedDict()
        self._rates: OrderedDict[object, TokenBucket] = OrderedDict()  # by source, LRU first
        self._refreshed: dict[int, float] = {}
        self._own: PeerRecord | None = None
        self._next_republish: float | None = None
        self._publish: _Publish | None = None
        self._publish_due = False
        self._joining = False
        self._join_attempts = 0
        self._last_join = 0.0
        self._last_self_refresh: float | None = None
        self._bootstrap_pings = 0
        self._next_maintenance: float | None = None
        self.observed_address: Address | None = None  # how the last peer that answered PING saw us
        self.lookups_served = 0
        self.lookups_started = 0
        self.bytes_sent = 0
        self.bytes_received = 0

    # ---- the sans-IO surface --------------------------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        out, self._out = self._out, []
        for data, _ in out:
            self.bytes_sent += len(data)
        return out

    def get_timer(self) -> float | None:
        t = self._next_maintenance
        heap = self._deadlines
        while heap:
            deadline, txid = heap[0]
            p = self._pending.get(txid)
            if p is None or p.deadline != deadline:
                heapq.heappop(heap)
                continue
            if t is None or deadline < t:
                t = deadline
            break
        for q in self._queries.values():
            if t is None or q.deadline < t:
                t = q.deadline
        return t

    def handle_timer(self, now: float) -> None:
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            deadline, txid = heapq.heappop(heap)
            p = self._pending.get(txid)
            if p is None or p.deadline != deadline:
                continue
            del self._pending[txid]
            self._on_timeout(txid, p, now)
        for q in [q for q in self._queries.values() if q.deadline <= now]:
            if q.id in self._queries:
                self._finish(q, now, timed_out=True)
        if self._next_maintenance is not None and now >= self._next_maintenance:
            self._maintain(now)

    def next_event(self) -> ev.Event | None:
        return self._events.popleft() if self._events else None

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        self.bytes_received += len(data)
        self._start(now)
        if not data or data[0] != PacketType.DHT:
            self.counters["not_dht"] += 1
            return
        try:
            packet = sec.parse_packet(data)
        except sec.UnsupportedVersion:
            self.counters["bad_version"] += 1
            return
        except DecodeError:
            self.counters["malformed"] += 1
            return
        if isinstance(packet, sec.Sealed):
            self._receive_sealed(packet, addr, len(data), now)
        elif isinstance(packet, sec.SealedReply):
            self._receive_sealed_reply(packet, addr, now)
        elif isinstance(packet, sec.Hello):
            self._receive_hello(packet, addr, now)
        else:
            self._receive_hello_reply(packet, addr, now)

    # ---- public commands ------------------------------------------------------------------------

    def bootstrap(self, addresses: list[Address], now: float) -> None:
        """Join through seeds known only by address: a HELLO to each learns (and verifies) its id."""
        self._start(now)
        self._joining = True
        for address in addresses:
            if self._hello(address, now) is not None:
                self._bootstrap_pings += 1
        if not self._bootstrap_pings and len(self.table):
            self._join(now)

    def add_contact(self, peer_id: PeerId, address: Address, now: float) -> None:
        """Add a pinned seed (``PEERID@HOST:PORT``, trusted configuration) and join through it."""
        self._start(now)
        if peer_id == self.peer_id:
            return
        self.table.update(peer_id, address, now)
        self._joining = True
        self._probe(peer_id, address, _Purpose.BOOTSTRAP, now)
        self._join(now)

    def start_lookup(self, target: PeerId, now: float) -> int:
        """Look ``target`` up (its record and the k closest peers); ends with :class:`LookupFinished`."""
        return self._start_query(_QueryKind.USER, target, now)

    def publish(self, record: PeerRecord, now: float) -> None:
        """Make ``record`` (our own) the one served, and store it at the k closest peers now and every
        ``republish_interval`` (re-signed with a higher seq before it expires)."""
        if record.peer_id != self.peer_id:
            raise LocalProtocolError("publish: the record is not this node's own")
        self._start(now)
        self.set_own_record(record)
        self._next_republish = now + self.config.republish_interval
        if len(self.table) and not self._joining:
            self._start_query(_QueryKind.PUBLISH, self.peer_id, now)
        else:
            self._publish_due = True  # when the join ends, or at the first maintenance with contacts

    def set_own_record(self, record: PeerRecord) -> None:
        """Replace the own record (a newer seq, new addresses); the next republication carries it."""
        if record.peer_id != self.peer_id:
            raise LocalProtocolError("set_own_record: the record is not this node's own")
        self._own = record

    @property
    def own_record(self) -> PeerRecord | None:
        return self._own

    def gossip(self, peers: list[tuple[PeerId, Address]], now: float) -> None:
        """Send each peer (a connected one) a PEX datagram: a bounded random sample of known records."""
        self._start(now)
        wall = now + self.wall_offset
        records = [r for r in self.store.records() if r.expires_at > wall]
        for peer, address in peers[: self.config.k]:
            sample = [r for r in records if r.peer_id != peer]
            self.rng.shuffle(sample)
            chosen = [self._own] if self._own is not None and self._own.expires_at > wall else []
            for r in sample:
                if len(chosen) >= self.config.pex_max_records:
                    break
                chosen.append(r)
            chosen = chosen[: self.config.pex_max_records]
            while chosen:
                data = self._seal(peer, self._encode(self.rng.getrandbits(64), m.Pex(tuple(chosen))), now)
                if data is None:
                    break
                if len(data) <= m.MAX_DATAGRAM:
                    self._out.append((data, address))
                    self.counters["pex_sent"] += 1
                    break
                chosen.pop()

    def get_record(self, peer_id: PeerId, now: float) -> PeerRecord | None:
        """The live record of ``peer_id`` held locally (stored, gossiped or found), if any."""
        if peer_id == self.peer_id:
            return self._own
        return self.store.get(peer_id, now + self.wall_offset)

    def known_records(self) -> list[PeerRecord]:
        return self.store.records()

    def routing_table(self) -> list[tuple[PeerId, Address]]:
        return [(c.peer_id, c.address) for c in self.table.contacts()]

    def stats(self) -> dict[str, int]:
        return {
            "routing_table_size": len(self.table),
            "records_stored": len(self.store),
            "lookups_served": self.lookups_served,
            "lookups_started": self.lookups_started,
            "lookups_active": len(self._queries),
            "lookups_queued": len(self._queued),
            "pending_requests": len(self._pending),
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
        }

    def memory_stats(self) -> dict[str, int]:
        """The size of every table this node keeps (entries, not bytes): each one is bounded, and
        the tables that age (rate limits, verification backoff, demotions) are purged as they age."""
        table = self.table.sizes()
        return {
            "contacts": table["contacts"],
            "replacements": table["replacements"],
            "buckets": table["buckets"],
            "demoted": table["demoted"],
            "records": len(self.store),
            "rate_sources": len(self._rates),
            "verified": len(self._verified_at),
            "probing": len(self._probing),
            "pending": len(self._pending),
            "deadlines": len(self._deadlines),
            "queries": len(self._queries),
            "queued": len(self._queued),
            "events": len(self._events),
            "refreshed": len(self._refreshed),
            "replay": len(self._replay),
            "tokens": len(self._tokens),
            "outgoing": len(self._out),
            "counters": len(self.counters),
        }

    # ---- persistence ----------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """Routing table, stored records and the own record, for a warm restart (write it atomically)."""
        contacts = sorted(self.table.contacts(), key=lambda c: -c.last_seen)[:MAX_SNAPSHOT_CONTACTS]
        parts = [_SNAPSHOT_MAGIC, struct.pack("!H", len(contacts))]
        parts += [c.peer_id.key + m.encode_address(c.address) for c in contacts]
        records = self.store.records()[:MAX_SNAPSHOT_RECORDS]
        parts.append(struct.pack("!H", len(records)))
        for r in records:
            raw = r.encode()
            parts.append(struct.pack("!H", len(raw)) + raw)
        if self._own is None:
            parts.append(b"\x00")
        else:
            raw = self._own.encode()
            parts.append(b"\x01" + struct.pack("!H", len(raw)) + raw)
        return b"".join(parts)

    def restore(self, data: bytes, now: float) -> int:
        """Load a :meth:`snapshot`: records are checked again, contacts are PINGed and only enter the
        table when they answer. Returns the number of contacts pinged. Raises :class:`DecodeError`."""
        contacts, records, own = _decode_snapshot(data)
        self._start(now)
        wall = now + self.wall_offset
        for r in records:
            self._accept_record(r, wall)
        newer = own is not None and (self._own is None or own.seq > self._own.seq)
        if own is not None and newer and own.peer_id == self.peer_id and own.verify():
            self._own = own
            self._next_republish = now
        sent = 0
        budget = max(1, self.config.max_pending_requests // 2)
        for peer, address in contacts[:budget]:
            if peer != self.peer_id and self._probe(peer, address, _Purpose.BOOTSTRAP, now):
                sent += 1
        if sent:
            self._joining = True
            self._bootstrap_pings += sent
        return sent

    # ---- sending --------------------------------------------------------------------------------

    def _sign(self, message: bytes) -> bytes:
        return bytes(sodium.crypto_sign(message, self._secret)[:64])

    def _encode(self, txid: int, body: m.Body, pad_to: int = 0) -> bytes:
        return m.encode_message(self._sign, self.peer_id, txid, body, pad_to=pad_to)

    def _seal(self, peer: PeerId, message: bytes, now: float) -> bytes | None:
        """``message`` sealed to ``peer`` (None if its id is no key one can seal to)."""
        sealed = self._seal_request(peer, message, now)
        return None if sealed is None else sealed[0]

    def _seal_request(
        self, peer: PeerId, message: bytes, now: float, token: bytes = sec.NO_TOKEN
    ) -> tuple[bytes, bytes] | None:
        try:
            return sec.seal(peer, message, now + self.wall_offset, self.rng.randbytes(32), token)
        except (InvalidPeerId, AuthenticationFailed):
            self.counters["unsealable_peer"] += 1
            return None

    def _new_txid(self) -> int | None:
        if len(self._pending) >= self.config.max_pending_requests:
            self.counters["pending_full"] += 1
            return None
        txid = self.rng.getrandbits(64)
        while txid in self._pending:
            txid = self.rng.getrandbits(64)
        return txid

    def _track(self, txid: int, pending: _Pending) -> None:
        self._pending[txid] = pending
        heapq.heappush(self._deadlines, (pending.deadline, txid))

    def _hello(self, address: Address, now: float) -> int | None:
        """Ask a seed known by address only for its PeerId (in clear: nothing else is answered)."""
        txid = self._new_txid()
        if txid is None:
            return None
        self._out.append((sec.encode_hello(txid), address))
        deadline = now + self.config.request_timeout
        self._track(txid, _Pending(None, None, address, deadline, _Purpose.BOOTSTRAP, None, None))
        return txid

    def _request(
        self,
        peer: PeerId,
        address: Address,
        body: m.Body,
        purpose: _Purpose,
        query: _Query | None,
        now: float,
    ) -> int | None:
        txid = self._new_txid()
        if txid is None:
            return None
        # A request that wants a full list of contacts is padded so that the answer fits in 3x,
        # unless it carries the token that proves our address to the responder.
        token = self._token_for(address, now)
        wants_room = isinstance(body, m.FindNode | m.FindValue) and token == sec.NO_TOKEN
        pad = m.REQUEST_PAD - sec.SEALED_OVERHEAD if wants_room else 0
        sealed = self._seal_request(peer, self._encode(txid, body, pad), now, token)
        if sealed is None:
            return None
        data, key = sealed
        self._out.append((data, address))
        expect = m.RESPONSE_TO[m.kind_of(body)]
        deadline = now + self.config.request_timeout
        self._track(txid, _Pending(expect, peer, address, deadline, purpose, query, key))
        return txid

    def _probe(self, peer: PeerId, address: Address, purpose: _Purpose, now: float) -> bool:
        if peer in self._probing:
            return False
        txid = self._request(peer, address, m.Ping(), purpose, None, now)
        if txid is None:
            return False
        self._probing[peer] = txid
        return True

    def _reply(self, txid: int, body: m.Body, address: Address, key: bytes, now: float) -> None:
        token = self._token_maker.issue(address, now)
        self._out.append((sec.seal_reply(key, txid, self._encode(txid, body), token), address))

    def _token_for(self, address: Address, now: float) -> bytes:
        held = self._tokens.get(address)
        if held is None or now - held[1] >= self.config.token_lifetime:
            return sec.NO_TOKEN
        return held[0]

    def _keep_token(self, address: Address, token: bytes, now: float) -> None:
        if token == sec.NO_TOKEN or not self.config.max_tokens:
            return
        tokens = self._tokens
        tokens[address] = (token, now)
        tokens.move_to_end(address)
        while len(tokens) > self.config.max_tokens:
            tokens.popitem(last=False)  # the least recently refreshed

    # ---- requests -------------------------------------------------------------------------------

    def _rate_ok(self, addr: Address, now: float) -> bool:
        # Loopback sources are told apart by port: a local mesh runs many nodes on 127.0.0.1.
        key: object = addr if addr.host.startswith("127.") or addr.host == "::1" else addr.host
        rates = self._rates
        bucket = rates.get(key)
        if bucket is None:
            cfg = self.config
            if len(rates) >= cfg.max_rate_sources:
                rates.popitem(last=False)  # the least recently heard source
            bucket = rates[key] = TokenBucket(cfg.max_replies_per_second, cfg.reply_burst, now)
        else:
            rates.move_to_end(key)
        return bucket.consume(1.0, now)

    def _receive_hello(self, hello: sec.Hello, addr: Address, now: float) -> None:
        if not self._rate_ok(addr, now):
            self.counters["rate_limited"] += 1
            return
        reply = sec.encode_hello_reply(self._sign, self.peer_id, hello.nonce, addr)
        if len(reply) > m.AMPLIFICATION * hello.size:  # a HELLO is padded so that this never happens
            self.counters["amplification"] += 1
            return
        self.counters["hello_answered"] += 1
        self._out.append((reply, addr))

    def _receive_sealed(self, packet: sec.Sealed, addr: Address, size: int, now: float) -> None:
        # Cheap before expensive: the rate limit and an exact replay cost no DH.
        if not self._rate_ok(addr, now):
            self.counters["rate_limited"] += 1
            return
        if self._replay.seen(packet.ephemeral):
            self.counters["replayed_request"] += 1
            return
        try:
            opened = sec.open_sealed(self._static_private, self._static_public, packet)
        except AuthenticationFailed:
            self.counters["undecryptable"] += 1
            return
        except DecodeError:
            self.counters["malformed"] += 1
            return
        wall = now + self.wall_offset
        reason = self._replay.check(opened.sent_at, wall)
        if reason is not None:
            self.counters[reason] += 1
            return
        self._replay.add(opened.ephemeral, opened.sent_at, wall)
        try:
            env = m.parse_envelope(opened.message)
        except DecodeError:
            self.counters["malformed"] += 1
            return
        if env.sender == self.peer_id:
            self.counters["self_message"] += 1
            return
        if env.kind not in m.REQUESTS and env.kind is not m.Kind.PEX:
            self.counters["unexpected_kind"] += 1
            return
        validated = self._token_maker.valid(opened.token, addr, now)
        self._receive_request(env, addr, size, now, opened.reply_key, validated)

    def _receive_request(
        self, env: m.Envelope, addr: Address, size: int, now: float, key: bytes, validated: bool
    ) -> None:
        if not env.verify():
            self.counters["bad_signature"] += 1
            return
        try:
            body = m.decode_body(env.kind, env.body)
        except DecodeError:
            self.counters["malformed"] += 1
            return
        sender = env.sender
        wall = now + self.wall_offset
        if isinstance(body, m.Pex):
            self.counters["pex_received"] += 1
            for r in body.records[: self.config.pex_max_records]:
                self._accept_record(r, wall)
            return  # gossip comes from connected peers: the connection, not the DHT, vouches for them
        # Everything sent to an address not validated in answer (the reply, and our PING to verify
        # the sender) stays within 3x the request.
        verify = self._consider(sender, addr, now)
        ping = VERIFY_PING_SIZE if verify and not validated else 0
        budget = sec.reply_room(size, validated) - m.OVERHEAD - ping
        if isinstance(body, m.Ping):
            self._reply(env.txid, m.Pong(addr), addr, key, now)
        elif isinstance(body, m.FindNode):
            self.lookups_served += 1
            contacts = self._contacts_for(body.target, sender, budget - 1)
            self._reply(env.txid, m.Nodes(contacts), addr, key, now)
        elif isinstance(body, m.FindValue):
            self.lookups_served += 1
            record = self.get_record(body.target, now)
            if record is not None and record.expires_at <= wall:
                record = None
            room = budget - 2
            if record is not None:
                size_rec = len(record.encode()) + 2
                if size_rec <= room:
                    room -= size_rec
                else:
                    record = None
            value = m.Value(record, self._contacts_for(body.target, sender, room))
            self._reply(env.txid, value, addr, key, now)
        elif isinstance(body, m.Store):
            self._reply(env.txid, m.Stored(self._store_request(body.record, sender, wall)), addr, key, now)
        else:  # a response kind cannot reach here
            return
        if verify:
            self._probe(sender, addr, _Purpose.VERIFY, now)

    def _contacts_for(self, target: PeerId, requester: PeerId, room: int) -> tuple[m.Contact, ...]:
        out: list[m.Contact] = []
        for c in self.table.closest(target, self.config.k, exclude=requester):
            size = 32 + m.address_size(c.address)
            if size > room:
                break
            room -= size
            out.append((c.peer_id, c.address))
        return tuple(out)

    def _store_request(self, record: PeerRecord, sender: PeerId, wall: float) -> m.StoreStatus:
        if record.peer_id == self.peer_id:
            self.counters["own_record_offered"] += 1  # we are the authority on our own record
            return m.StoreStatus.REFUSED
        try:
            status = self.store.put(record, wall)
        except RecordRejected as exc:
            self.counters[exc.reason] += 1
            if exc.reason == "stale_seq":
                return m.StoreStatus.STALE
            if exc.reason == "store_full":
                return m.StoreStatus.FULL
            return m.StoreStatus.REFUSED
        self.counters["records_accepted"] += 1
        return status

    def _accept_record(self, record: PeerRecord, wall: float) -> bool:
        if record.peer_id == self.peer_id:
            return False
        try:
            self.store.put(record, wall)
        except RecordRejected as exc:
            self.counters[exc.reason] += 1
            return False
        return True

    def _consider(self, peer: PeerId, addr: Address, now: float) -> bool:
        """A signed request came from ``peer`` at ``addr``: whether to verify the address (with a
        PING, sent after the answer) before trusting it."""
        if self.table.touch(peer, addr, now):
            return False
        known = self.table.get(peer)
        if known is None and not self.table.admits(peer, addr, now):
            return False  # full bucket, prefix limit or demoted: a PING would be wasted
        if known is not None and self.table.is_demoted(peer, now):
            return False
        if len(self._probing) >= self.config.max_verifications or peer in self._probing:
            return False
        last = self._verified_at.get(peer)
        if last is not None and now - last < self.config.verify_backoff:
            return False
        self._verified_at[peer] = now
        self._verified_at.move_to_end(peer)
        while len(self._verified_at) > 4096:
            self._verified_at.popitem(last=False)
        return True

    # ---- responses ------------------------------------------------------------------------------

    def _receive_hello_reply(self, reply: sec.HelloReply, addr: Address, now: float) -> None:
        txid = reply.nonce
        p = self._pending.get(txid)
        if p is None or p.address != addr or p.expect is not None:
            self.counters["unsolicited_response"] += 1
            return
        if not reply.verify():
            self.counters["bad_signature"] += 1
            return  # keep waiting: the genuine answer may still come
        del self._pending[txid]
        self._bootstrap_pings = max(0, self._bootstrap_pings - 1)
        sender = reply.peer_id
        if sender == self.peer_id:
            self.counters["self_message"] += 1  # we are among our own seeds
            self._maybe_join_failed(now)
            return
        self.observed_address = reply.observed
        self._learn(sender, addr, now)
        if self._joining and sender in self.table:
            self._join(now, (sender, addr))
        else:
            self._maybe_join_failed(now)

    def _receive_sealed_reply(self, packet: sec.SealedReply, addr: Address, now: float) -> None:
        txid = packet.txid
        p = self._pending.get(txid)
        if p is None or p.address != addr or p.key is None or p.peer is None:
            self.counters["unsolicited_response"] += 1
            return
        try:
            token, inner = sec.open_reply(p.key, packet)
        except AuthenticationFailed:
            self.counters["undecryptable"] += 1
            return  # keep waiting: the genuine answer may still come
        except DecodeError:
            token, inner = sec.NO_TOKEN, b""  # sealed by the peer, too short: garbage (below)
        # Only the holder of the peer's static key could seal this: whatever is inside is its own.
        del self._pending[txid]
        sender = p.peer
        if self._probing.get(sender) == txid:
            del self._probing[sender]
        try:
            env = m.parse_envelope(inner)
            if env.txid != txid or env.kind is not p.expect or env.sender != sender:
                raise DecodeError("the sealed reply is not the answer to its request")
            if not env.verify():
                self.counters["bad_signature"] += 1
                raise DecodeError("bad signature inside a sealed reply")
            body = m.decode_body(env.kind, env.body)
        except DecodeError:
            self._garbage(txid, p, sender, now)
            return
        self._keep_token(addr, token, now)
        self._learn(sender, addr, now)
        if p.purpose is _Purpose.BOOTSTRAP:
            self._bootstrap_pings = max(0, self._bootstrap_pings - 1)
            if isinstance(body, m.Pong):
                self.observed_address = body.observed
            if self._joining and sender in self.table:
                self._join(now, (sender, addr))
        elif isinstance(body, m.Pong):
            self.observed_address = body.observed
        elif p.purpose is _Purpose.STORE and isinstance(body, m.Stored):
            self._store_done(txid, body.status is m.StoreStatus.STORED)
        elif p.query is not None and isinstance(body, m.Nodes | m.Value):
            self._lookup_response(p.query, sender, body, now)

    def _learn(self, peer: PeerId, addr: Address, now: float) -> None:
        result = self.table.update(peer, addr, now)
        if result is Update.PENDING:
            oldest = self.table.oldest(self.table.bucket_index(peer))
            if oldest is not None and now - oldest.last_seen > self.config.liveness_interval / 10:
                self._probe(oldest.peer_id, oldest.address, _Purpose.LIVENESS, now)
        elif result is not Update.REFRESHED and result is not Update.ADDED:
            self.counters[f"table_{result.value}"] += 1

    def _lookup_response(self, q: _Query, sender: PeerId, body: m.Nodes | m.Value, now: float) -> None:
        if self._queries.get(q.id) is not q:
            return  # the lookup already ended; the answer still taught us a contact
        contacts = [(p, a) for p, a in body.contacts[: self.config.k] if p != self.peer_id and a.port]
        if isinstance(body, m.Value) and body.record is not None:
            record = body.record
            wall = now + self.wall_offset
            if record.peer_id != q.target:
                self._demote(sender, now)
                q.iter.on_failure(sender)
                self._drive(q, now)
                return
            try:
                record.check(wall, max_ttl=self.config.max_record_ttl)
            except RecordRejected as exc:
                self.counters[exc.reason] += 1
                if exc.reason == "bad_signature":
                    self._demote(sender, now)
                    q.iter.on_failure(sender)
                    self._drive(q, now)
                    return
            else:
                self._accept_record(record, wall)
                if q.record is None or record.seq > q.record.seq:
                    q.record = record
                q.iter.on_value(sender)
                self._drive(q, now)
                return
        q.iter.on_success(sender, contacts)
        self._drive(q, now)

    def _garbage(self, txid: int, p: _Pending, sender: PeerId, now: float) -> None:
        self.counters["garbage_response"] += 1
        self._demote(sender, now)
        if p.purpose is _Purpose.STORE:
            self._store_done(txid, False)
        elif p.purpose is _Purpose.BOOTSTRAP:
            self._bootstrap_pings = max(0, self._bootstrap_pings - 1)
            self._maybe_join_failed(now)
        if p.query is not None and self._queries.get(p.query.id) is p.query:
            p.query.iter.on_failure(sender)
            self._drive(p.query, now)

    def _demote(self, peer: PeerId, now: float) -> None:
        self.counters["demoted"] += 1
        self.table.demote(peer, now)

    def _on_timeout(self, txid: int, p: _Pending, now: float) -> None:
        self.counters["request_timeout"] += 1
        if p.peer is not None:
            if self._probing.get(p.peer) == txid:
                del self._probing[p.peer]
            if self.table.record_failure(p.peer, now):
                self.counters["evicted_dead"] += 1
        if p.purpose is _Purpose.STORE:
            self._store_done(txid, False)
        elif p.purpose is _Purpose.BOOTSTRAP:
            self._bootstrap_pings = max(0, self._bootstrap_pings - 1)
            self._maybe_join_failed(now)
        q = p.query
        if q is not None and p.peer is not None and self._queries.get(q.id) is q:
            if p.peer == q.target and not q.retried:
                q.retried = True  # the target itself is the surest holder of its record: ask twice
                q.iter.retry(p.peer)
            else:
                q.iter.on_failure(p.peer)
            self._drive(q, now)

    # ---- lookups --------------------------------------------------------------------------------

    def _start_query(self, kind: _QueryKind, target: PeerId, now: float) -> int:
        self._start(now)
        qid = next(self._query_ids)
        cfg = self.config
        self._refreshed[self.table.bucket_index(target)] = now
        it = ClosestPeersIter(target, [], k=cfg.k, alpha=cfg.alpha)  # replaced when it runs
        q = _Query(qid, kind, target, it, now, now + cfg.lookup_timeout)
        if kind is _QueryKind.USER:
            self.lookups_started += 1
        if len(self._queries) >= cfg.max_lookups:
            if kind is _QueryKind.USER and len(self._queued) < 16 * cfg.max_lookups:
                self._queued.append(q)  # started when a running lookup ends; elapsed counts the wait
                return qid
            self.counters["lookup_refused"] += 1
            it.finish()
            self._finish(q, now)
            return qid
        self._run_query(q, now)
        return qid

    def _run_query(self, q: _Query, now: float) -> None:
        # Seeds are taken when the lookup really starts (it may have waited in the queue).
        cfg = self.config
        seeds = [(c.peer_id, c.address) for c in self.table.closest(q.target, cfg.k)]
        q.iter = ClosestPeersIter(q.target, seeds, k=cfg.k, alpha=cfg.alpha, exclude=self.peer_id)
        q.deadline = now + cfg.lookup_timeout
        self._queries[q.id] = q
        self._drive(q, now)

    def _drive(self, q: _Query, now: float) -> None:
        body: m.Body = m.FindValue(q.target) if q.kind is _QueryKind.USER else m.FindNode(q.target)
        it = q.iter
        while True:
            step = it.next(now)
            if step is WAITING_AT_CAPACITY:
                return
            if step is FINISHED:
                break
            if not isinstance(step, Waiting):
                return
            if self._request(step.peer_id, step.address, body, _Purpose.LOOKUP, q, now) is None:
                it.on_failure(step.peer_id)
        if self._queries.get(q.id) is q:
            self._finish(q, now)

    def _finish(self, q: _Query, now: float, *, timed_out: bool = False) -> None:
        self._queries.pop(q.id, None)
        q.iter.finish()
        if timed_out:
            self.counters["lookup_timeout"] += 1
        if q.kind is _QueryKind.USER:
            record = q.record
            if record is None:
                record = self.get_record(q.target, now)
            self._emit(
                ev.LookupFinished(
                    query_id=q.id,
                    target=q.target,
                    record=record,
                    closest=tuple(q.iter.closest()),
                    hops=q.iter.hops,
                    elapsed=now - q.started,
                    timed_out=timed_out,
                )
            )
        elif q.kind is _QueryKind.JOIN:
            if not q.iter.closest() and len(self.table) and self._join_attempts < 3:
                self._join_attempts += 1  # every request of the join was lost: try again at once
                self._start_query(_QueryKind.JOIN, self.peer_id, now)
                return
            self._join_attempts = 0
            self._joining = False
            self._emit(ev.BootstrapFinished(contacts=len(self.table)))
            if self._own is not None:
                self._store_own(q.iter.closest(), now)  # the join lookup found our k closest already
        elif q.kind is _QueryKind.PUBLISH:
            self._store_own(q.iter.closest(), now)
        self._start_queued(now)

    def _store_own(self, closest: list[tuple[PeerId, Address]], now: float) -> None:
        own = self._own
        if own is None:
            return
        self._publish_due = False
        pub = self._publish = _Publish(own.seq)
        for peer, address in closest:
            txid = self._request(peer, address, m.Store(own), _Purpose.STORE, None, now)
            if txid is not None:
                pub.pending.add(txid)
                pub.attempted += 1
        if not pub.pending:
            self._publish = None
            self._emit(ev.PublishFinished(seq=own.seq, stored=0, attempted=0))

    def _start_queued(self, now: float) -> None:
        if self._starting_queued:
            return  # an outer call is already looping (a queued lookup may end at once)
        self._starting_queued = True
        try:
            while self._queued and len(self._queries) < self.config.max_lookups:
                self._run_query(self._queued.popleft(), now)
        finally:
            self._starting_queued = False

    def _store_done(self, txid: int, ok: bool) -> None:
        pub = self._publish
        if pub is None or txid not in pub.pending:
            return
        pub.pending.discard(txid)
        pub.stored += ok
        if not pub.pending:
            self._publish = None
            self._emit(ev.PublishFinished(seq=pub.seq, stored=pub.stored, attempted=pub.attempted))

    def _join(self, now: float, seed: tuple[PeerId, Address] | None = None) -> None:
        for q in self._queries.values():
            if q.kind is _QueryKind.JOIN:
                if seed is not None:
                    q.iter.add_peers([seed])  # a second seed answered: the running join uses it too
                    self._drive(q, now)
                return
        self._last_join = now
        self._start_query(_QueryKind.JOIN, self.peer_id, now)

    def _maybe_join_failed(self, now: float) -> None:
        joining = any(q.kind is _QueryKind.JOIN for q in self._queries.values())
        if self._joining and not self._bootstrap_pings and not len(self.table) and not joining:
            self._joining = False
            self._emit(ev.BootstrapFinished(contacts=0))

    def _emit(self, event: ev.Event) -> None:
        if len(self._events) >= MAX_EVENTS:
            self._events.popleft()
            self.counters["events_dropped"] += 1
        self._events.append(event)

    # ---- maintenance ----------------------------------------------------------------------------

    def _start(self, now: float) -> None:
        if self._next_maintenance is None:
            self._next_maintenance = now + self.config.maintenance_interval * self.rng.random()

    def _maintain(self, now: float) -> None:
        cfg = self.config
        self._next_maintenance = now + cfg.maintenance_interval * (0.75 + 0.5 * self.rng.random())
        wall = now + self.wall_offset
        buckets = self.table.nonempty_buckets()
        # Liveness: the least-recently-seen contact of each bucket, if it has been quiet too long.
        for i in buckets:
            c = self.table.oldest(i)
            if c is not None and now - c.last_seen >= cfg.liveness_interval:
                self._probe(c.peer_id, c.address, _Purpose.LIVENESS, now)
        # Refresh (at most one lookup per round). A lookup of our own id covers every bucket up to
        # the one holding our k-th closest contact (those buckets hold fewer than k peers in the
        # whole network); a farther bucket needs its own lookup only if it has room: the contacts of
        # a full bucket are kept fresh by the liveness checks.
        if buckets and not self._joining:
            if self._last_self_refresh is None:
                self._last_self_refresh = now - self.rng.random() * cfg.refresh_interval / 2
            near = self.table.closest(self.peer_id, cfg.k)
            covered = self.table.bucket_index(near[-1].peer_id)
            if now - self._last_self_refresh >= cfg.refresh_interval:
                self._last_self_refresh = now
                self._start_query(_QueryKind.REFRESH, self.peer_id, now)
            else:
                for i in range(covered + 1, 256):
                    last = self._refreshed.get(i)
                    if last is None:
                        self._refreshed[i] = now - self.rng.random() * cfg.refresh_interval / 2
                    elif now - last >= cfg.refresh_interval:
                        if self.table.bucket_size(i) >= cfg.k:
                            self._refreshed[i] = now
                            continue
                        self._start_query(_QueryKind.REFRESH, self._random_id_in_bucket(i), now)
                        break
        # A table smaller than one bucket (a lossy join, mass departures): look ourselves up again.
        if (
            0 < len(self.table) < cfg.k
            and not self._joining
            and now - self._last_join >= 8 * cfg.maintenance_interval
        ):
            self._last_join = self._last_self_refresh = now
            self._start_query(_QueryKind.REFRESH, self.peer_id, now)
        # Republish (and renew) the own record.
        own = self._own
        if own is not None and self._publish_due and len(self.table) and not self._joining:
            self._start_query(_QueryKind.PUBLISH, self.peer_id, now)
            self._publish_due = False
        elif own is not None and self._next_republish is not None and now >= self._next_republish:
            self._next_republish = now + cfg.republish_interval
            if own.expires_at - wall < cfg.record_ttl / 2:
                try:
                    own = PeerRecord.create(self.identity, own.seq + 1, wall + cfg.record_ttl, own.addresses)
                except InvalidRecord:
                    own = None
                if own is not None:
                    self._own = own
                    self._emit(ev.OwnRecordRenewed(record=own))
            if len(self.table) and not self._joining:
                self._start_query(_QueryKind.PUBLISH, self.peer_id, now)
        expired = self.store.purge(wall)
        if expired:
            self.counters["records_expired"] += expired
        self._purge_aged(now)

    def _purge_aged(self, now: float) -> None:
        """Forget what no longer changes a decision, so that a long-running node's tables hold what
        recent traffic needs, not every peer it ever heard from (their caps are for floods)."""
        cfg = self.config
        # A source silent for a full refill has a full bucket: the same as a source never seen.
        rates = self._rates
        while rates:
            key, bucket = next(iter(rates.items()))  # least recently seen first
            if not bucket.idle_full(now):
                break
            del rates[key]
        # A verification older than the backoff no longer holds the next one back.
        verified = self._verified_at
        while verified:
            peer, at = next(iter(verified.items()))  # oldest first
            if now - at < cfg.verify_backoff:
                break
            del verified[peer]
        self.table.purge_demotions(now)
        self._replay.purge(now + self.wall_offset)
        tokens = self._tokens
        while tokens:
            address, (_, at) = next(iter(tokens.items()))  # least recently refreshed first
            if now - at < cfg.token_lifetime:
                break
            del tokens[address]

    def _random_id_in_bucket(self, index: int) -> PeerId:
        distance = (1 << index) | self.rng.getrandbits(index) if index > 0 else 1
        key = int.from_bytes(self.peer_id.key, "big") ^ distance
        return PeerId(key.to_bytes(32, "big"))


def _decode_snapshot(
    data: bytes,
) -> tuple[list[tuple[PeerId, Address]], list[PeerRecord], PeerRecord | None]:
    if not data.startswith(_SNAPSHOT_MAGIC):
        raise DecodeError("not a DHT snapshot (wrong header)")
    pos = len(_SNAPSHOT_MAGIC)
    try:
        (n,) = struct.unpack_from("!H", data, pos)
        pos += 2
        contacts, pos = m._decode_contacts_n(data, pos, n)
        (n,) = struct.unpack_from("!H", data, pos)
        pos += 2
        records = []
        for _ in range(n):
            r, pos = m._decode_record(data, pos)
            records.append(r)
        if pos >= len(data):
            raise DecodeError("truncated DHT snapshot")
        own: PeerRecord | None = None
        if data[pos] == 1:
            own, pos = m._decode_record(data, pos + 1)
        elif data[pos] != 0:
            raise DecodeError("bad own-record flag in DHT snapshot")
        pos += 0 if own is not None else 1
    except struct.error:
        raise DecodeError("truncated DHT snapshot") from None
    if pos != len(data):
        raise DecodeError("trailing bytes in DHT snapshot")
    return list(contacts), records, own
