"""Core Mesh: a peer-to-peer mesh networking stack.

Identities are Ed25519 keys (:class:`PeerId`); peers talk over Noise-encrypted, reliable, ordered
connections on one UDP socket per node (:class:`MeshNode`, :class:`Connection`).
"""

from .addr import Address, parse_address
from .config import MeshConfig
from .connection import Connection, ConnectionEvent, ConnectionState, PeerInfo, PingResult
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
    PeerNotFound,
)
from .identity import Identity, PeerId
from .mesh import MeshNode

__version__ = "0.1.0"

__all__ = [
    "Address",
    "AuthenticationFailed",
    "ConfigError",
    "Connection",
    "ConnectionClosed",
    "ConnectionEvent",
    "ConnectionFailed",
    "ConnectionState",
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
    "PeerInfo",
    "PingResult",
    "__version__",
    "parse_address",
]
