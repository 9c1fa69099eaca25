"""The life of one peer connection as data: the states, the transitions allowed between them, and the
diagram drawn from them.

:class:`ConnState` is what a :class:`~coremesh.endpoint.peer.PeerConnection` is doing;
:data:`TRANSITIONS` lists every change it may make, with what causes it. ``PeerConnection`` changes
state in one method, which checks the change against this table with :func:`check_transition`
(anything else is a bug: :class:`~coremesh.errors.LocalProtocolError`) and logs it.
:func:`mermaid_diagram` renders the table for ``docs/architecture.md`` (``tests/gendocs.py``).

:class:`PeerState` is the coarser view the endpoint shows its callers (snapshots, ``state_of``).
"""

from __future__ import annotations

import enum
from typing import Final

from ..errors import LocalProtocolError

__all__ = [
    "ANNOUNCED",
    "INITIAL",
    "TRANSITIONS",
    "ConnState",
    "PeerState",
    "check_transition",
    "mermaid_diagram",
]


class PeerState(enum.Enum):
    """What callers of the endpoint see of a connection's state."""

    CONNECTING = "connecting"  # a handshake in flight (initiator) or awaiting key confirmation
    CONNECTED = "connected"
    CLOSING = "closing"  # we sent CLOSE and wait for its acknowledgement
    DRAINING = "draining"  # the peer closed; we linger to acknowledge its CLOSE


class ConnState(enum.Enum):
    """The state of one peer connection."""

    DIALING = "dialing"  # we sent an initiation (and retry it) and wait for the response
    CONFIRMING = "confirming"  # we answered an initiation; the first packet under its keys confirms it
    CONNECTED = "connected"  # PeerConnected was emitted; sessions, stream and paths are live
    CLOSING = "closing"  # we sent CLOSE (after the data queued before it) and wait for its ack
    DRAINING = "draining"  # the peer closed (PeerDisconnected emitted); we linger to ack its CLOSE
    CROSSED = "crossed"  # both sides closed at once: we linger to ack the peer's CLOSE, then report
    CLOSED = "closed"  # gone from the endpoint; nothing more happens

    public: PeerState
    """What callers see of this state: a plain attribute (set from :data:`_PUBLIC` below), so the
    liveness check on every send reads it without a call."""


_PUBLIC: Final = {
    ConnState.DIALING: PeerState.CONNECTING,
    ConnState.CONFIRMING: PeerState.CONNECTING,
    ConnState.CONNECTED: PeerState.CONNECTED,
    ConnState.CLOSING: PeerState.CLOSING,
    ConnState.DRAINING: PeerState.DRAINING,
    ConnState.CROSSED: PeerState.DRAINING,
    ConnState.CLOSED: PeerState.DRAINING,  # never shown: a closed connection has left the endpoint
}
for _state, _public in _PUBLIC.items():
    _state.public = _public
del _state, _public

ANNOUNCED: Final = frozenset({ConnState.CONNECTED, ConnState.CLOSING, ConnState.DRAINING, ConnState.CROSSED})
"""States in which the application has seen PeerConnected (so it must see PeerDisconnected)."""

INITIAL: Final[dict[ConnState, str]] = {
    ConnState.DIALING: "connect()",
    ConnState.CONFIRMING: "an initiation answered",
}
"""The states a connection starts in, and what creates it there."""

TRANSITIONS: Final[dict[tuple[ConnState, ConnState], str]] = {
    (ConnState.DIALING, ConnState.CONNECTED): "handshake response",
    (ConnState.DIALING, ConnState.CONFIRMING): "the peer's dial wins a simultaneous open",
    (ConnState.DIALING, ConnState.CLOSED): "connect timeout, close()",
    (ConnState.CONFIRMING, ConnState.CONNECTED): "first packet under the new keys",
    (ConnState.CONFIRMING, ConnState.CLOSED): "never confirmed, superseded, close()",
    (ConnState.CONNECTED, ConnState.CLOSING): "close()",
    (ConnState.CONNECTED, ConnState.DRAINING): "CLOSE received",
    (ConnState.CONNECTED, ConnState.CLOSED): "idle timeout, keys expired, protocol violation, replaced",
    (ConnState.CLOSING, ConnState.CROSSED): "CLOSE received",
    (ConnState.CLOSING, ConnState.CLOSED): "CLOSE acknowledged, linger ended, replaced",
    (ConnState.DRAINING, ConnState.CLOSED): "linger ended, replaced",
    (ConnState.CROSSED, ConnState.CLOSED): "linger ended, replaced",
}
"""Every change of state a connection may make, and what causes it."""


def check_transition(old: ConnState, new: ConnState) -> None:
    """Raise :class:`LocalProtocolError` unless the table allows ``old`` -> ``new``."""
    if (old, new) not in TRANSITIONS:
        raise LocalProtocolError(f"illegal peer connection transition {old.name} -> {new.name}")


def mermaid_diagram() -> str:
    """The table as a Mermaid ``stateDiagram-v2`` block (Markdown, fenced)."""
    lines = ["```mermaid", "stateDiagram-v2"]
    lines += [f"    [*] --> {state.name}: {cause}" for state, cause in INITIAL.items()]
    lines += [f"    {old.name} --> {new.name}: {cause}" for (old, new), cause in TRANSITIONS.items()]
    lines += [f"    {ConnState.CLOSED.name} --> [*]", "```"]
    return "\n".join(lines) + "\n"
