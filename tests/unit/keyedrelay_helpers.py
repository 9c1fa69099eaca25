"""Shared builders for the keyed relay's sans-IO tests: identities, injected randomness, a relay
core, and the steps every test takes (open a session, register, read what the core did)."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from coremesh.identity import Identity
from coremesh.keyedrelay.frames import (
    Challenge,
    Close,
    Error,
    Registered,
    decode_frame,
    encode_frame,
    make_register,
)
from coremesh.keyedrelay.limits import RelayLimits
from coremesh.keyedrelay.server import Action, Disconnect, RelayCore, SessionState

ALICE = Identity(b"a" * 32)
BOB = Identity(b"b" * 32)
MALLORY = Identity(b"m" * 32)


def counting_bytes() -> Callable[[int], bytes]:
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(n, "big")


def make_core(**limits: float) -> RelayCore:
    return RelayCore(RelayLimits(**limits), random_bytes=counting_bytes())  # type: ignore[arg-type]


def decoded(actions: list[Action]) -> list[tuple[int, object]]:
    out: list[tuple[int, object]] = []
    for a in actions:
        if isinstance(a, Disconnect):
            out.append((a.conn, a))
        else:
            out.append((a.conn, decode_frame(a.frame)))
    return out


def open_(core: RelayCore, now: float = 0.0) -> tuple[int, bytes]:
    conn = core.open_session(now)
    [(c, challenge)] = decoded(core.drain())
    assert c == conn and isinstance(challenge, Challenge)
    return conn, challenge.nonce


def register(core: RelayCore, identity: Identity, now: float = 0.0) -> int:
    conn, nonce = open_(core, now)
    core.receive_frame(conn, encode_frame(make_register(identity, nonce)), now)
    assert decoded(core.drain()) == [(conn, Registered(max_packet=core.limits.max_packet))]
    assert core.session_state(conn) is SessionState.REGISTERED
    return conn


def closed_with(actions: list[Action], conn: int, code: int) -> str:
    """Assert the actions are CLOSE/ERROR(code) then Disconnect(code) for conn; return the reason."""
    frames = decoded(actions)
    assert len(frames) == 2, frames
    (c1, frame), (c2, disc) = frames
    assert c1 == c2 == conn
    assert isinstance(frame, Close | Error) and frame.code == code
    assert isinstance(disc, Disconnect) and disc.code == code
    return frame.reason
