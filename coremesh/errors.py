"""The typed errors of the mesh.

One base class, ``MeshError``. Errors caused by the remote side (a malformed packet, a forged
signature, a peer violating the protocol) derive from ``RemoteProtocolError``; errors in local use
(bad config, sending on a closed connection) from ``LocalProtocolError``. Cores never let a remote
error escape as a traceback: they count it as a drop or close the connection cleanly.
"""

from __future__ import annotations


class MeshError(Exception):
    """Base class of every error coremesh raises on purpose."""


class LocalProtocolError(MeshError):
    """The local program asked for something the protocol or the current state does not allow."""


class RemoteProtocolError(MeshError):
    """The remote peer sent something invalid. ``code`` is the wire close code, if one applies."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class DecodeError(RemoteProtocolError):
    """Bytes from the network could not be decoded (truncated, malformed, out of range)."""


class AuthenticationFailed(RemoteProtocolError):
    """A handshake or packet failed authentication: wrong key, forged or replayed data."""


class ConfigError(LocalProtocolError, ValueError):
    """A configuration value is invalid. The message names the field and the accepted values."""


class IdentityError(MeshError):
    """The identity key file is corrupt, foreign, or unreadable; never replaced silently."""


class InvalidPeerId(MeshError, ValueError):
    """A peer id's text form is malformed or fails its checksum (a typo)."""


class InvalidAddress(MeshError, ValueError):
    """A network address is not ``HOST:PORT`` or ``[V6]:PORT``, or is out of range."""


class ConnectionFailed(MeshError):
    """A connection could not be established, or was lost."""


class ConnectionClosed(ConnectionFailed):
    """The connection is closed (locally, by the peer, or after an idle timeout)."""

    def __init__(self, message: str, reason: str = "closed") -> None:
        super().__init__(message)
        self.reason = reason


class PeerNotFound(MeshError):
    """No live record or connection exists for the requested peer."""


class NatTraversalFailed(ConnectionFailed):
    """No path through the NATs between two peers could be made: ``MeshNode.connect`` tried the
    peer directly without an answer, then found no relay that could carry the connection (each
    configured relay refused or unusable; the message says why, relay by relay)."""


class PeerIdentityMismatch(AuthenticationFailed, ConnectionFailed):
    """``MeshNode.connect``: the node at the address answered as another peer id than the one
    asked for (a wrong id, or another node now listens there). Also a :class:`ConnectionFailed`,
    so that code catching a failed connect keeps working."""


class NonceExhausted(LocalProtocolError):
    """A session used every nonce its cipher allows: it cannot send again. Rekey, or reconnect."""


class MessageTooLarge(LocalProtocolError):
    """A message exceeds the connection's maximum message size."""


class NetcheckError(MeshError):
    """Netcheck cannot run: no server configured, or the node is not started."""
