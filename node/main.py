"""``coremesh-node``: the mesh node daemon.

    coremesh-node --listen HOST:PORT --data-dir DIR --admin HOST:PORT [--bootstrap [PEERID@]HOST:PORT]...

Starts a :class:`coremesh.MeshNode`, reads every connection's messages into an inbox
(:mod:`coremesh_node.inbox`), serves the admin API (:mod:`coremesh_node.admin`), dials ``--connect``
peers (retrying with backoff, and again whenever the connection drops), and shuts down gracefully on
SIGTERM/SIGINT (:class:`~coremesh.service.lifecycle.SignalledService`): readiness goes to 503, the
dialers and the admin server stop, then ``node.stop()`` closes every connection so that peers see a
close at once. A second signal during shutdown ends the process at once.

Exit codes: 0 after a clean shutdown; 2 for bad flags, config or identity file (one line on stderr);
1 when the node cannot run (UDP or admin address in use, data dir held by another process, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sys
from collections.abc import Sequence
from typing import Any, Final

from coremesh import ConnectionEvent, MeshNode
from coremesh.config import PeerAddress
from coremesh.datadir import DataDirLocked
from coremesh.errors import ConfigError, IdentityError, MeshError
from coremesh.identity import PeerId
from coremesh.service import (
    EXIT_CONFIG,
    EXIT_RUNTIME,
    StartupError,
    os_error_text,
    service_main,
)
from coremesh.service.jsonable import state_text
from coremesh.service.lifecycle import SignalledService

from .admin import STATE, AdminServer, create_admin_app, resolve_address
from .inbox import INBOX_BYTES, Inbox, InboxPump
from .logs import log
from .settings import PROG, NodeSettings, resolve

SHUTDOWN_TIMEOUT: Final = 10.0
BACKOFF_FIRST: Final = 0.5
BACKOFF_MAX: Final = 30.0


def main(argv: Sequence[str] | None = None) -> int:
    return service_main(PROG, lambda: resolve(argv, os.environ), lambda s: Daemon(s).run(), log)


class Daemon(SignalledService):
    name = "node"
    shutdown_timeout = SHUTDOWN_TIMEOUT

    def __init__(self, settings: NodeSettings, *, inbox_bytes: int | None = None) -> None:
        super().__init__(log)
        self.settings = settings
        # The inbox's byte cap: while it is full the node stops reading from peers, so their sends
        # block (back-pressure) instead of the daemon's memory growing.
        # `--inbox-bytes` / `inbox_bytes` in [node]; a parameter for tests.
        if inbox_bytes is None:
            inbox_bytes = settings.inbox_bytes or INBOX_BYTES
        self.inbox = Inbox(max_bytes=inbox_bytes)
        self._dialers: list[asyncio.Task[None]] = []
        self._closed_events: dict[PeerId, asyncio.Event] = {}
        self.node: MeshNode | None = None
        self.pump: InboxPump | None = None
        self.admin: AdminServer | None = None

    # ------------------------------------------------------------------------------- lifecycle

    def not_ready(self) -> None:
        if self.admin is not None:
            self.admin.app[STATE].ready = False

    async def _start(self) -> None:
        s = self.settings
        mesh = s.mesh
        if mesh.data_dir is None:
            log.warning(
                "identity.ephemeral",
                reason="no --data-dir: this run uses a fresh identity that is lost on exit",
            )
        try:
            self.node = MeshNode(mesh)  # locks the data dir, then loads the identity
        except DataDirLocked as exc:  # another process runs on this data dir
            raise StartupError(str(exc), EXIT_RUNTIME) from None
        except (IdentityError, ConfigError) as exc:
            raise StartupError(str(exc), EXIT_CONFIG) from None
        node = self.node
        self.pump = InboxPump(node, self.inbox)
        node.on_connection(self._on_connection)
        node.on_delivery(self.pump.on_delivery)  # broadcasts and multicasts into the same inbox
        try:
            await node.start()
        except IdentityError as exc:
            raise StartupError(str(exc), EXIT_CONFIG) from None
        except ConfigError as exc:  # the UDP socket cannot be bound (address in use, ...): exit 1
            reason = str(exc).removeprefix("listen_addr: ")
            raise StartupError(f"cannot listen on {mesh.listen_addr}: {reason}", EXIT_RUNTIME) from None
        except OSError as exc:
            raise StartupError(
                f"cannot listen on {mesh.listen_addr}: {os_error_text(exc)}", EXIT_RUNTIME
            ) from None
        except MeshError as exc:
            raise StartupError(f"cannot start the node: {exc}", EXIT_RUNTIME) from None

        app = create_admin_app(
            node,
            self.inbox,
            role="node",
            listen=mesh.listen_addr,
            extra_status={"bootstrap": list(mesh.bootstrap_peers)},
            max_body=min(mesh.max_message_size * 4 // 3 + 64 * 1024, 256 * 1024 * 1024),
        )
        self.admin = AdminServer(app)
        try:
            admin_address = await self.admin.start(s.admin)
        except OSError as exc:
            self.admin = None
            raise StartupError(
                f"cannot serve the admin API on {s.admin}: {os_error_text(exc)}", EXIT_RUNTIME
            ) from None
        app[STATE].ready = not self.stopping

        for entry in s.dial_peers:
            self._dialers.append(asyncio.create_task(self._keep_connected(entry), name=f"dial-{entry}"))
        for entry in s.pinned_bootstrap:
            log.info(
                "bootstrap.dialing",
                peer_id=str(entry.peer_id),
                address=str(entry.address),
                note="dialed at start and kept connected, retrying with backoff",
            )
        for entry in s.deferred_bootstrap:
            log.info(
                "bootstrap.seed",
                address=str(entry.address),
                note="joins the DHT through it (its PeerId is learned from its signed answer)",
            )
        log.info(
            "node.ready",
            peer_id=node.peer_id.to_text(),
            addresses=app[STATE].addresses(),
            listen=[str(a) for a in node.listen_addresses],
            admin=str(admin_address),
            data_dir=str(mesh.data_dir) if mesh.data_dir else None,
            dialing=[str(e) for e in (*s.dial_peers, *s.pinned_bootstrap)],
            pid=os.getpid(),
        )

    async def _shutdown(self, *, quiet: bool = False) -> None:
        """Stop dialing, stop the admin API, close every connection (peers see a close at once), stop
        reading into the inbox. After a failed start (``quiet``) it only releases what was opened."""
        for task in self._dialers:
            task.cancel()
        for task in self._dialers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.admin is not None:
            await self.admin.stop()
        stats: dict[str, int] = {}
        if self.node is not None:
            if not quiet:
                stats = self.node.stats()  # the final counters, read while the socket is still open
            await self.node.stop()
        if self.pump is not None:
            await self.pump.stop()
        if quiet:
            return
        log.info(
            "node.stopped",
            peer_id=self.node.peer_id.to_text() if self.node else None,
            inbox_received=self.inbox.received,
            inbox_dropped=self.inbox.dropped,
            stats=stats,
        )

    # ----------------------------------------------------------------------------- connections

    def _on_connection(self, event: ConnectionEvent) -> None:
        state = state_text(event.state)
        fields: dict[str, Any] = {
            "peer_id": event.peer_id.to_text(),
            "state": state,
            "address": str(event.address) if event.address is not None else None,
        }
        if event.reason:
            fields["reason"] = event.reason
        if state == "failed":
            log.warning("connection.failed", **fields)
        else:
            log.info(f"connection.{state}", **fields)
        if self.pump is not None:
            self.pump.on_event(event)
        if state in ("closed", "failed"):
            waiter = self._closed_events.get(event.peer_id)
            if waiter is not None:
                waiter.set()

    async def _keep_connected(self, entry: PeerAddress) -> None:
        """Dial ``entry`` until connected; when the connection ends, dial again. Backoff with jitter."""
        node = self.node
        peer = entry.peer_id
        assert node is not None and peer is not None
        delay = BACKOFF_FIRST
        attempt = 0
        while True:
            attempt += 1
            closed = asyncio.Event()
            self._closed_events[peer] = closed
            try:
                address = await resolve_address(entry.address)
                conn = await node.connect(peer, address, timeout=node.config.connect_timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                wait = delay * random.uniform(0.8, 1.2)
                log.warning(
                    "dial.failed",
                    peer_id=peer.to_text(),
                    address=str(entry.address),
                    attempt=attempt,
                    error=str(exc) or type(exc).__name__,
                    retry_in_s=round(wait, 2),
                )
                await asyncio.sleep(wait)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            log.info("dial.connected", peer_id=peer.to_text(), address=str(entry.address), attempt=attempt)
            attempt, delay = 0, BACKOFF_FIRST
            if not conn.is_closed:
                await closed.wait()
            wait = BACKOFF_FIRST * random.uniform(0.8, 1.2)
            log.info(
                "dial.reconnecting", peer_id=peer.to_text(), address=str(entry.address), in_s=round(wait, 2)
            )
            await asyncio.sleep(wait)


if __name__ == "__main__":
    sys.exit(main())
