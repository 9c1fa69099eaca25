"""Core Mesh: a peer-to-peer mesh networking stack.

Identities are Ed25519 keys (:class:`PeerId`); peers talk over Noise-encrypted, reliable, ordered
connections on one UDP socket per node (:class:`MeshNode`, :class:`Connection`).

Names are imported lazily, so that small tools (the ``coremesh`` CLI) start fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Address": "addr",
    "parse_address": "addr",
    "MeshConfig": "config",
    "Connection": "mesh.connection",
    "ConnectionEvent": "mesh.connection",
    "ConnectionState": "mesh.connection",
    "PeerInfo": "mesh.connection",
    "PingResult": "mesh.connection",
    "AuthenticationFailed": "errors",
    "ConfigError": "errors",
    "ConnectionClosed": "errors",
    "ConnectionFailed": "errors",
    "DataDirLocked": "datadir",
    "IdentityError": "errors",
    "InvalidAddress": "errors",
    "InvalidPeerId": "errors",
    "MeshError": "errors",
    "MessageTooLarge": "errors",
    "NatTraversalFailed": "errors",
    "PeerIdentityMismatch": "errors",
    "PeerNotFound": "errors",
    "Identity": "identity",
    "PeerId": "identity",
    "MeshNode": "mesh.node",
}

__all__ = [
    "Address",
    "AuthenticationFailed",
    "ConfigError",
    "Connection",
    "ConnectionClosed",
    "ConnectionEvent",
    "ConnectionFailed",
    "ConnectionState",
    "DataDirLocked",
    "Identity",
    "IdentityError",
    "InvalidAddress",
    "InvalidPeerId",
    "MeshConfig",
    "MeshError",
    "MeshNode",
    "MessageTooLarge",
    "NatTraversalFailed",
    "PeerId",
    "PeerIdentityMismatch",
    "PeerInfo",
    "PeerNotFound",
    "PingResult",
    "__version__",
    "parse_address",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'coremesh' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from .addr import Address, parse_address
    from .config import MeshConfig
    from .datadir import DataDirLocked
    from .errors import (
        AuthenticationFailed,
        ConfigError,
        ConnectionClosed,
        ConnectionFailed,
        IdentityError,
        InvalidAddress,
        InvalidPeerId,
        MeshError,
        MessageTooLarge,
        NatTraversalFailed,
        PeerIdentityMismatch,
        PeerNotFound,
    )
    from .identity import Identity, PeerId
    from .mesh.connection import Connection, ConnectionEvent, ConnectionState, PeerInfo, PingResult
    from .mesh.node import MeshNode
