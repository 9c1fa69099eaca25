"""``coremesh-bootstrap``: a stable DHT member that new nodes join through.

    coremesh-bootstrap --listen HOST:PORT --data-dir DIR --admin HOST:PORT [--bootstrap [PEERID@]HOST:PORT]...

It is a :class:`coremesh.MeshNode` with a persistent identity (its PeerId can be pinned by others), its
routing table and peer store kept in the data dir, that answers DHT lookups, stores signed peer
records and accepts mesh connections. Several run side by side, each listing the others. On
SIGTERM/SIGINT: readiness goes to 503, the routing table is saved, connections are closed, and the
process exits 0; a second signal ends it at once.

Exit codes: 0 after a clean shutdown; 2 for bad flags, config or identity file (one line on stderr);
1 when it cannot run (address in use, data dir held by another process, ...).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Final

from coremesh import MeshConfig, MeshNode
from coremesh.datadir import DataDirLocked
from coremesh.errors import ConfigError, IdentityError, MeshError
from coremesh.service import (
    EXIT_CONFIG,
    EXIT_RUNTIME,
    StartupError,
    os_error_text,
    service_main,
)
from coremesh.service.lifecycle import SignalledService
from coremesh.service.logs import EventLogger

from .admin import AdminServer, BootstrapState, create_admin_app
from .settings import PROG, BootstrapSettings, resolve

SHUTDOWN_TIMEOUT: Final = 10.0

log = EventLogger("coremesh_bootstrap")


def main(argv: Sequence[str] | None = None) -> int:
    return service_main(PROG, lambda: resolve(argv, os.environ), lambda s: Bootstrap(s).run(), log)


def mesh_config(s: BootstrapSettings) -> MeshConfig:
    return MeshConfig(
        listen_addr=str(s.listen),
        data_dir=s.data_dir,
        bootstrap_peers=s.bootstrap,
        advertise_addresses=tuple(str(a) for a in s.advertise),
        max_connections=s.max_connections,
        dht_k=s.dht_k,
        dht_alpha=s.dht_alpha,
        # A bootstrap serves the DHT; it has no relay of its own to announce.
        enable_relay=False,
    )


class Bootstrap(SignalledService):
    name = "bootstrap"
    shutdown_timeout = SHUTDOWN_TIMEOUT

    def __init__(self, settings: BootstrapSettings) -> None:
        super().__init__(log)
        self.settings = settings
        self.node: MeshNode | None = None
        self.admin: AdminServer | None = None
        self.state = BootstrapState(settings=settings.summary())

    def not_ready(self) -> None:
        self.state.ready = False

    async def _start(self) -> None:
        s = self.settings
        try:
            config = mesh_config(s)
            node = MeshNode(config)  # locks the data dir, then loads the identity
        except DataDirLocked as exc:  # another process runs on this data dir
            raise StartupError(str(exc), EXIT_RUNTIME) from None
        except (ConfigError, IdentityError) as exc:
            raise StartupError(str(exc), EXIT_CONFIG) from None
        except OSError as exc:
            raise StartupError(f"--data-dir {s.data_dir}: {os_error_text(exc)}", EXIT_CONFIG) from None
        try:
            await node.start()
        except Exception as exc:
            await node.stop()  # gives the data dir up
            if isinstance(exc, OSError):
                text = f"cannot listen on {s.listen}: {os_error_text(exc)}"
                raise StartupError(text, EXIT_RUNTIME) from None
            if isinstance(exc, IdentityError):
                raise StartupError(str(exc), EXIT_CONFIG) from None
            if isinstance(exc, ConfigError | MeshError):  # the socket cannot be opened (in use, ...)
                raise StartupError(f"cannot start on {s.listen}: {exc}", EXIT_RUNTIME) from None
            raise
        self.node = node
        self.state.node = node
        self.state.addresses = [str(a) for a in node.advertised_addresses()]
        self.admin = AdminServer(create_admin_app(self.state))
        try:
            admin_address = await self.admin.start(s.admin)
        except OSError as exc:
            self.admin = None
            raise StartupError(
                f"cannot serve the admin API on {s.admin}: {os_error_text(exc)}", EXIT_RUNTIME
            ) from None
        self.state.ready = not self.stopping
        log.info(
            "bootstrap.ready",
            peer_id=node.peer_id.to_text(),
            addresses=self.state.addresses,
            admin=str(admin_address),
            settings=s.summary(),
            pid=os.getpid(),
        )

    async def _shutdown(self, *, quiet: bool = False) -> None:
        self.state.ready = False
        if self.admin is not None:
            await self.admin.stop()
        node = self.node
        if node is not None:
            stats = node.dht_status().get("stats", {})
            await node.stop()
            if not quiet:
                log.info("bootstrap.stopped", dht=stats)


if __name__ == "__main__":
    sys.exit(main())
