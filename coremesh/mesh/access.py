"""``PeerAccess``: the node's allow-list and deny-list at run time (docs/access.md).

The rule is the sans-IO :class:`~coremesh.access.acl.PeerAcl`, which the endpoint consults before
any per-peer state; this room owns its life in the node: it starts from the configuration (or from
``DATA_DIR/acl.json``, where run-time changes are saved atomically, so a restart keeps them), applies
every change to the open connections at once (a peer refused now is closed), and refuses to dial a
refused peer with :class:`~coremesh.access.acl.PeerNotAllowed`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Final

from ..access.acl import AclLists, PeerAcl, PeerNotAllowed, encode_saved, restore
from ..config import MeshConfig, parse_peer_address
from ..errors import ConfigError, DecodeError, InvalidAddress, InvalidPeerId
from ..identity import PeerId, atomic_write
from .parts import NodeParts

log = logging.getLogger("coremesh.node")

ACL_FILE: Final = "acl.json"


class PeerAccess:
    """The access lists of one node, kept across its restarts (see the module docstring)."""

    def __init__(self, parts: NodeParts, config: MeshConfig) -> None:
        self._parts = parts
        self._config_lists = AclLists.of(config.allowed_peer_ids, config.denied_peer_ids)
        self.path: Path | None = config.data_dir / ACL_FILE if config.data_dir is not None else None
        saved = self._read()
        try:
            lists, dropped = restore(self._config_lists, saved)
        except DecodeError as exc:
            # Never ignored: a mesh closed by the saved lists must not open because a file is bad.
            raise ConfigError(f"{self.path}: {exc}; fix or remove the file") from None
        if dropped:
            log.warning(
                "the configured access lists changed since run-time changes were saved: the "
                "configuration wins",
                extra={"file": str(self.path)},
            )
        self.acl = PeerAcl(lists)
        self.save_error: str | None = None
        if dropped:
            self._save()

    def _read(self) -> bytes | None:
        if self.path is None:
            return None
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(f"cannot read {self.path}: {exc.strerror}") from None

    def _save(self) -> None:
        if self.path is None:
            return
        try:
            atomic_write(self.path, encode_saved(self.acl.lists, self._config_lists), mode=0o600)
            self.save_error = None
        except OSError as exc:  # the change holds for this run; the view says it was not saved
            self.save_error = f"cannot write {self.path}: {exc.strerror or exc}"
            log.warning("access lists not saved", extra={"error": self.save_error})

    # -- the node's API ---------------------------------------------------------------------------

    def view(self) -> dict[str, Any]:
        """The lists (``mode``, ``allow``, ``deny``), where they are saved, and the decisions so far."""
        return {
            **self.acl.lists.to_json(),
            "saved_to": str(self.path) if self.path is not None else None,
            "save_error": self.save_error,
            "decisions": dict(sorted(self.acl.counters.items())),
        }

    def allow(self, peer: PeerId) -> int:
        """Allow ``peer`` (see :meth:`PeerAcl.allow`); returns how many connections were closed
        (allowing a peer on an open mesh closes it to everyone else)."""
        return self._changed(self.acl.allow(peer))

    def deny(self, peer: PeerId) -> int:
        """Deny ``peer``; its connection, if any, is closed. Returns how many were closed."""
        return self._changed(self.acl.deny(peer))

    def remove(self, peer: PeerId, *, allowed: bool) -> int:
        """Take ``peer`` off the allow-list (``allowed``) or the deny-list."""
        changed = self.acl.remove_allowed(peer) if allowed else self.acl.remove_denied(peer)
        return self._changed(changed)

    def set_open(self, is_open: bool) -> int:
        """Open the mesh (no allow-list) or close it to everyone not on the allow-list."""
        return self._changed(self.acl.set_open(is_open))

    def check_connect(self, peer: PeerId | str) -> None:
        """Raise :class:`PeerNotAllowed` before dialing a peer the lists refuse (when the target
        names its id; an address alone is checked once the identity probe names it)."""
        peer_id = _peer_of(peer)
        if peer_id is None or self.acl.permits(peer_id):
            return  # (the endpoint decides, and counts, when it dials)
        decision = self.acl.decide(peer_id)
        if self._parts.endpoint is not None:
            self._parts.endpoint.counters["acl_connects_refused"] += 1
        raise PeerNotAllowed(peer_id, decision.reason)

    def _changed(self, changed: bool) -> int:
        if not changed:
            return 0
        self._save()
        runtime, endpoint = self._parts.runtime, self._parts.endpoint
        if runtime is None or endpoint is None:
            return 0
        closed = endpoint.apply_acl(runtime.now())
        runtime.pump()
        return closed


def _peer_of(peer: PeerId | str) -> PeerId | None:
    if isinstance(peer, PeerId):
        return peer
    try:
        if "@" in peer:
            return parse_peer_address(peer).peer_id
        return None if ":" in peer else PeerId.from_text(peer)
    except (InvalidPeerId, InvalidAddress, TypeError):
        return None  # the dialer names what is wrong with it
