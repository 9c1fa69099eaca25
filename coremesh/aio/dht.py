"""The DHT's asyncio shell: the sans-IO :class:`~coremesh.dht.node.DhtNode` on the node's own socket.

The DHT shares the mesh node's UDP socket (its packets have their own type byte, 0xE7), so the
address the DHT sees for a node is the one its mesh traffic comes from, NAT mapping included. This
shell passes datagrams and the loop's time in, sends what comes out, re-arms one timer, turns lookup
events into awaited results, and does the periodic work that needs the outside world: publishing the
node's own record when its addresses change, gossiping records to connected peers, and saving the
routing table to the data dir (atomically) so that a restart is warm. The core seals what it sends
(wire version 2, docs/dht.md): no peer list leaves the node in clear, gossip included.

The own record's sequence number must grow across restarts, or the peers that hold the previous
record answer STALE until it expires: it is at least the wall clock in milliseconds, and always
above the last one used, which is written to ``DATA_DIR/dht.seq`` (atomically, fsynced) before a
record carrying it leaves the node. A clock set back, a restart, or both, never make it go down.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from ..addr import Address, normalize_socket_address
from ..config import MeshConfig, PeerAddress
from ..dht.events import LookupFinished, OwnRecordRenewed
from ..dht.node import DhtNode
from ..dht.records import MAX_ADDRESSES, MAX_SEQ, PeerRecord
from ..endpoint.paths import PathAddress, udp_address
from ..errors import DecodeError, PeerNotFound
from ..identity import Identity, PeerId, atomic_write
from ..secure.wire import PacketType
from .runtime import UdpRuntime
from .timer import CoreTimer

log = logging.getLogger("coremesh.dht")

SNAPSHOT_FILE: Final = "dht.snapshot"
SEQ_FILE: Final = "dht.seq"
_SEQ_MAGIC: Final = "coremesh-dht-seq-v1"
_EVENT_COUNTERS: Final = frozenset(
    {
        "pex_sent",
        "pex_received",
        "records_accepted",
        "records_expired",
        "evicted_dead",
        "demoted",
        "request_timeout",
        "lookup_timeout",
        "hello_answered",
    }
)
SAVE_INTERVAL: Final = 60.0
ADDRESS_CHECK_INTERVAL: Final = 2.0  # how soon a new address (a relay's srflx, say) is published

AddressSource = Callable[[], list[tuple[str, str]]]


async def resolve_seeds(seeds: tuple[PeerAddress, ...], family: int) -> tuple[PeerAddress, ...]:
    """Seeds given by host name (``bootstrap:7946`` in a compose file), resolved once at start, in the
    socket's ``family`` first: the DHT accepts an answer only from the very address it asked, and
    answers come from an IP. A name that does not resolve is left out, with a warning."""
    out: list[PeerAddress] = []
    loop = asyncio.get_running_loop()
    for entry in seeds:
        host, port = entry.address.host, entry.address.port
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            out.append(entry)
            continue
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except OSError as exc:
            log.warning("bootstrap seed %s: cannot resolve %s: %s", entry.address, host, exc)
            continue
        infos.sort(key=lambda info: info[0] != family)
        out.append(PeerAddress(normalize_socket_address(infos[0][4]), entry.peer_id))
    return tuple(out)


class DhtService:
    """Runs the DHT for one :class:`~coremesh.MeshNode`; created by the node when it starts."""

    def __init__(
        self,
        identity: Identity,
        config: MeshConfig,
        runtime: UdpRuntime,
        *,
        addresses: AddressSource,
        connected_peers: Callable[[], list[tuple[PeerId, Address]]],
        rng: random.Random,
        seq_floor: int = 0,
    ) -> None:
        self._identity = identity
        self._config = config
        self._runtime = runtime
        self._addresses = addresses
        self._connected_peers = connected_peers
        self._loop = asyncio.get_running_loop()
        wall_offset = time.time() - self._loop.time()  # followed by _maintain as the clock moves
        self.core = DhtNode(identity, config.dht_config, rng=rng, wall_offset=wall_offset)
        self._timer = CoreTimer(self._loop, self._on_timer)
        self._lookups: dict[int, asyncio.Future[LookupFinished]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._published: tuple[tuple[str, str], ...] | None = None
        # The highest sequence number this node ever signed: in its data dir, or, without one, what
        # the node's previous run in this process used (``seq_floor``).
        self._seq = max(seq_floor, self._load_seq())
        self._stopped = False
        runtime.add_packet_handler(PacketType.DHT, self._on_datagram)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, seeds: tuple[PeerAddress, ...]) -> None:
        now = self._loop.time()
        self._restore(now)
        for entry in seeds:
            if entry.peer_id is not None:
                self.core.add_contact(entry.peer_id, entry.address, now)
        unpinned = [e.address for e in seeds if e.peer_id is None]
        if unpinned:
            self.core.bootstrap(unpinned, now)
        self.publish(force=True)
        self._pump()
        self._spawn(self._maintain())

    async def stop(self) -> None:
        self._stopped = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._timer.cancel()
        self.save()
        for fut in self._lookups.values():
            if not fut.done():
                fut.set_exception(PeerNotFound("node stopped"))
        self._lookups.clear()

    # -- lookups and records --------------------------------------------------------------------

    async def lookup(self, peer: PeerId, *, timeout: float | None = None) -> LookupFinished:
        """Look ``peer`` up: its signed record (if the network has a live one) and the closest contacts."""
        timeout = self._config.lookup_timeout if timeout is None else timeout
        query = self.core.start_lookup(peer, self._loop.time())
        fut: asyncio.Future[LookupFinished] = self._loop.create_future()
        self._lookups[query] = fut
        self._pump()
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            raise PeerNotFound(f"no record of {peer} found within {timeout:g}s") from None
        finally:
            self._lookups.pop(query, None)

    def publish(self, *, force: bool = False) -> bool:
        """Sign and publish this node's record if its addresses changed (or ``force``)."""
        addresses = tuple(dict.fromkeys(self._addresses()))[:MAX_ADDRESSES]
        if not force and addresses == self._published:
            return False
        if not addresses:
            return False
        wall = time.time()
        seq = self._next_seq(wall)
        record = PeerRecord.create(
            self._identity, seq, wall + self._config.dht_config.record_ttl, list(addresses)
        )
        self.core.publish(record, self._loop.time())
        self._published = addresses
        self._pump()
        return True

    def status(self) -> dict[str, Any]:
        stats = dict(self.core.stats())
        for key, value in self.core.counters.items():
            # Events worth counting are counted as they are; the rest are drops, by reason.
            stats[key if key in _EVENT_COUNTERS else f"drop_{key}"] = value
        return {
            "enabled": True,
            "routing_table_size": len(self.core.routing_table()),
            "records": len(self.core.known_records()),
            "published": [list(a) for a in self._published or ()],
            "stats": stats,
        }

    # -- persistence ----------------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The highest record sequence number used so far (the floor for the node's next run)."""
        return self._seq

    @property
    def _seq_path(self) -> Path | None:
        data_dir = self._config.data_dir
        return None if data_dir is None else data_dir / SEQ_FILE

    def _next_seq(self, wall: float) -> int:
        """A sequence number above every one used before (in this process, in the data dir, and in
        the record restored from the snapshot), the wall clock in ms when that is higher; persisted
        before it is used."""
        own = self.core.own_record
        floor = max(self._seq, own.seq if own is not None else 0)
        self._note_seq(max(floor + 1, int(wall * 1000)))
        return self._seq

    def _note_seq(self, seq: int) -> None:
        if seq <= self._seq:
            return
        self._seq = seq
        path = self._seq_path
        if path is None:
            return  # monotonic within this process only
        try:
            atomic_write(path, f"{_SEQ_MAGIC} {seq}\n".encode(), mode=0o600)
        except OSError as exc:
            log.warning("cannot save the record sequence number to %s: %s", path, exc)

    def _load_seq(self) -> int:
        path = self._seq_path
        if path is None:
            return 0
        try:
            text = path.read_text(encoding="ascii")
        except FileNotFoundError:
            return 0
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("ignoring the saved record sequence number %s: %s", path, exc)
            return 0
        magic, _, number = text.strip().partition(" ")
        if magic != _SEQ_MAGIC or not number.isascii() or not number.isdigit() or int(number) > MAX_SEQ:
            log.warning("ignoring the saved record sequence number %s: not a %s file", path, _SEQ_MAGIC)
            return 0
        return int(number)

    @property
    def _snapshot_path(self) -> Path | None:
        data_dir = self._config.data_dir
        return None if data_dir is None else data_dir / SNAPSHOT_FILE

    def save(self) -> None:
        path = self._snapshot_path
        if path is None:
            return
        try:
            atomic_write(path, self.core.snapshot(), mode=0o600)
        except OSError as exc:
            log.warning("cannot save the routing table to %s: %s", path, exc)

    def _restore(self, now: float) -> None:
        path = self._snapshot_path
        if path is None or not path.exists():
            return
        try:
            self.core.restore(path.read_bytes(), now)
        except (OSError, DecodeError, ValueError) as exc:
            # A damaged snapshot costs a cold start, never the node: say so and go on.
            log.warning("ignoring the saved routing table %s: %s", path, exc)

    # -- the shell ------------------------------------------------------------------------------

    def _on_datagram(self, data: bytes, addr: PathAddress, now: float) -> None:
        if type(addr) is Address:
            self.core.receive_datagram(data, addr, now)
            self._pump()
            return
        # By another path than the socket: a probe socket of the birthday approach, or our TURN
        # allocation. The core knows the sender by its UDP address; what it answers to that
        # address goes back the way the datagram came (that is where the sender's NAT lets it in).
        udp = udp_address(addr)
        if udp is None:
            # The keyed relay: a DHT contact must have a UDP address, and answers by relay would
            # not tell the sender anything it can use.
            self.core.counters["via_keyed_relay"] += 1
            return
        self._pump()
        self.core.receive_datagram(data, udp, now)
        if not self._stopped:
            for out, dest in self.core.datagrams_to_send(now):
                self._runtime.send_raw(out, addr if dest == udp else dest)
        self._pump()

    def _pump(self) -> None:
        if self._stopped:
            return
        now = self._loop.time()
        # Events first: a renewed own record's sequence number is saved before the record leaves.
        while (event := self.core.next_event()) is not None:
            if isinstance(event, LookupFinished):
                fut = self._lookups.get(event.query_id)
                if fut is not None and not fut.done():
                    fut.set_result(event)
            elif isinstance(event, OwnRecordRenewed):
                self._note_seq(event.record.seq)
        for data, addr in self.core.datagrams_to_send(now):
            self._runtime.send_raw(data, addr)
        self._timer.arm(self.core.get_timer())

    def _on_timer(self, now: float) -> None:
        self.core.handle_timer(now)
        self._pump()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _maintain(self) -> None:
        """Republish when the node's addresses change, gossip to connected peers, save the table."""
        last_gossip = last_save = self._loop.time()
        while True:
            await asyncio.sleep(ADDRESS_CHECK_INTERVAL)
            try:
                # The wall clock may have been stepped (NTP) since the start: sealed requests carry
                # it, and a peer refuses one stamped outside its replay window.
                self.core.wall_offset = time.time() - self._loop.time()
                self.publish()
                peers = self._connected_peers()
                if peers and self._loop.time() - last_gossip >= self._config.gossip_interval:
                    last_gossip = self._loop.time()
                    self.core.gossip(peers, last_gossip)
                    self._pump()
                if self._loop.time() - last_save >= SAVE_INTERVAL:
                    await asyncio.to_thread(self.save)
                    last_save = self._loop.time()
            except Exception:
                log.exception("DHT maintenance failed; trying again")
