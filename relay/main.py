"""``coremesh-relay``: STUN/TURN server, keyed mesh relay, and their admin HTTP API.

    coremesh-relay [--listen HOST:PORT] [--alt-address IP] [--realm REALM] [--user NAME:PASSWORD]...
                   [--static-auth-secret SECRET] [--keyed-listen HOST:PORT] [--admin HOST:PORT] ...

Starts the STUN/TURN service (:mod:`coremesh_relay.stunturn`) and, with ``--keyed-listen``, the keyed
relay (:mod:`coremesh_relay.keyed`), then serves the admin API (:mod:`coremesh_relay.admin`). On
SIGTERM/SIGINT: readiness goes to 503, the services stop accepting and close their sessions, the admin
API stops, and the process exits 0. A second signal during shutdown ends it at once.

Exit codes: 0 after a clean shutdown; 2 for bad flags or configuration (one line on stderr); 1 when the
relay cannot run (address in use, ``--data-dir`` held by another process, ...). See docs/relay.md.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any, Final

from coremesh.datadir import DataDirLock, DataDirLocked, lock_data_dir
from coremesh.errors import ConfigError, IdentityError
from coremesh.identity import Identity, load_or_create_identity
from coremesh.service import (
    EXIT_CONFIG,
    EXIT_RUNTIME,
    StartupError,
    os_error_text,
    service_main,
)
from coremesh.service.lifecycle import SignalledService
from coremesh.service.logs import EventLogger

from .admin import AdminServer, RelayState, create_admin_app
from .keyed import KeyedRelayConfig, KeyedRelayServer
from .settings import PROG, RelaySettings, resolve
from .stunturn import StunTurnService
from .stunturn_config import StunTurnConfig

SHUTDOWN_TIMEOUT: Final = 10.0

log = EventLogger("coremesh_relay")


def main(argv: Sequence[str] | None = None) -> int:
    return service_main(PROG, lambda: resolve(argv, os.environ), lambda s: Relay(s).run(), log)


def stun_turn_config(s: RelaySettings) -> StunTurnConfig:
    return StunTurnConfig(
        listen=s.listen,
        alt_address=None if s.alt_address is None else s.alt_address.compressed,
        external_ip=s.external_ip,
        realm=s.realm,
        users=dict(s.users),
        static_auth_secret=s.static_auth_secret,
        allow_loopback_peers=s.allow_loopback_peers,
        allowed_peer_ips=s.allowed_peer_ips,
        denied_peer_ips=s.denied_peer_ips,
        min_port=s.min_port,
        max_port=s.max_port,
        user_quota=s.user_quota,
        total_quota=s.total_quota,
        max_bps=s.max_bps,
        no_tcp=s.no_tcp,
        no_udp=s.no_udp,
        ssl_context=s.ssl_context,
    )


def keyed_config(s: RelaySettings, identity: Identity | None) -> KeyedRelayConfig:
    assert s.keyed_listen is not None
    return KeyedRelayConfig(listen=str(s.keyed_listen), ssl_context=s.ssl_context, identity=identity)


class Relay(SignalledService):
    name = "relay"
    shutdown_timeout = SHUTDOWN_TIMEOUT

    def __init__(self, settings: RelaySettings) -> None:
        super().__init__(log)
        self.settings = settings
        self.stun_turn: StunTurnService | None = None
        self.keyed: KeyedRelayServer | None = None
        self.admin: AdminServer | None = None
        self._started: list[tuple[str, StunTurnService | KeyedRelayServer]] = []
        self._data_dir_lock: DataDirLock | None = None
        self.state = RelayState(settings=settings.summary())

    def not_ready(self) -> None:
        self.state.ready = False

    async def _start(self) -> None:
        s = self.settings
        st = self.state
        identity: Identity | None = None
        if s.data_dir is not None:
            try:  # the data dir belongs to this process from before the identity is read until exit
                self._data_dir_lock = lock_data_dir(s.data_dir)
            except DataDirLocked as exc:
                raise StartupError(str(exc), EXIT_RUNTIME) from None
            except IdentityError as exc:
                raise StartupError(str(exc), EXIT_CONFIG) from None
            try:
                identity = load_or_create_identity(s.data_dir)
            except IdentityError as exc:
                raise StartupError(str(exc), EXIT_CONFIG) from None
            except OSError as exc:
                raise StartupError(f"--data-dir {s.data_dir}: {os_error_text(exc)}", EXIT_CONFIG) from None
            st.peer_id = identity.peer_id.to_text()
        try:
            self.stun_turn = StunTurnService(stun_turn_config(s))
        except (ConfigError, ValueError) as exc:
            raise StartupError(f"STUN/TURN: {exc}", EXIT_CONFIG) from None
        await _start_service("STUN/TURN", str(s.listen), self.stun_turn.start())
        stun_turn = self.stun_turn
        self._started.append(("stun_turn", stun_turn))
        st.services["stun_turn"] = stun_turn
        st.service_info["stun_turn"] = lambda: {
            "addresses": _texts(stun_turn.addresses),
            "alt_address": s.summary()["alt_address"],
            "udp": not s.no_udp,
            "tcp": not s.no_tcp,
            "tls": s.ssl_context is not None,
        }
        bound = stun_turn.addresses
        st.listen = [str(bound[0] if bound else s.listen)]  # port 0 resolved
        st.addresses = _texts(stun_turn.addresses)

        if s.keyed_listen is not None:
            try:
                self.keyed = KeyedRelayServer(keyed_config(s, identity))
            except (ConfigError, ValueError) as exc:
                raise StartupError(f"keyed relay: {exc}", EXIT_CONFIG) from None
            await _start_service("the keyed relay", str(s.keyed_listen), self.keyed.start())
            keyed = self.keyed
            self._started.append(("keyed", keyed))
            st.services["keyed"] = keyed
            st.service_info["keyed"] = lambda: {
                "address": str(keyed.address),
                "urls": [keyed.url("tcp"), keyed.url("ws")],
                "tls": s.ssl_context is not None,
            }
            st.listen.append(str(keyed.address))
            st.addresses = _texts([*st.addresses, keyed.address])
            stun_turn.add_server_addresses([keyed.address])  # TURN never relays into our own listeners

        self.admin = AdminServer(create_admin_app(st))
        try:
            admin_address = await self.admin.start(s.admin)
        except OSError as exc:
            self.admin = None
            raise StartupError(
                f"cannot serve the admin API on {s.admin}: {os_error_text(exc)}", EXIT_RUNTIME
            ) from None
        stun_turn.add_server_addresses([admin_address])
        st.ready = not self.stopping
        log.info(
            "relay.ready",
            peer_id=st.peer_id,
            addresses=st.addresses,
            admin=str(admin_address),
            settings=s.summary(),
            pid=os.getpid(),
        )

    async def _shutdown(self, *, quiet: bool = False) -> None:
        self.state.ready = False
        final: dict[str, Any] = {}
        for name, service in reversed(self._started):
            try:
                final[name] = dict(service.stats())
                await service.stop()
            except Exception as exc:
                log.error("relay.stop_failed", service=name, error=f"{type(exc).__name__}: {exc}")
        if self.admin is not None:
            await self.admin.stop()
        if self._data_dir_lock is not None:
            self._data_dir_lock.release()
        if not quiet:
            log.info("relay.stopped", stats=final)


async def _start_service(what: str, where: str, start: Awaitable[None]) -> None:
    try:
        await start
    except OSError as exc:
        raise StartupError(f"cannot start {what} on {where}: {os_error_text(exc)}", EXIT_RUNTIME) from None
    except ConfigError as exc:
        raise StartupError(f"{what}: {exc}", EXIT_CONFIG) from None


def _texts(addresses: Iterable[object]) -> list[str]:
    """Addresses as text, each once, in order (UDP and TCP on one address are one entry)."""
    return list(dict.fromkeys(str(a) for a in addresses))


if __name__ == "__main__":
    sys.exit(main())
