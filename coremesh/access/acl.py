"""Peer allow-list and deny-list by PeerId (docs/access.md, "Allow and deny lists"), sans-IO.

The rule, checked in this order:

1. a peer on the **deny-list** is refused (reason ``denied``), whatever the allow-list says: deny
   wins over allow;
2. with an **allow-list** the mesh is *closed*: a peer not on it is refused (``not_allowed``);
3. otherwise the peer is allowed (``allow_listed`` in a closed mesh, ``open`` in an open one).

An open mesh has no allow-list (``allow is None``); a closed one has one, possibly empty (then
nobody gets in). A configuration closes the mesh with a non-empty ``allow_peers``; the same id on
both lists of a configuration is denied. At run time (``coremesh allow`` / ``coremesh deny``) a
peer *moves*: allowing it puts it on the allow-list (closing an open mesh) and takes it off the
deny-list, denying it does the reverse, and ``remove`` takes it off one list only. Removing the
last allowed peer leaves the mesh closed (to everyone); only :meth:`PeerAcl.set_open` reopens it.

Persistence is bytes in, bytes out (:func:`encode_saved`, :func:`restore`): the shell writes the
file. The saved form keeps the configured lists it started from, so that a restart keeps the run-time
changes while the configuration is the same, and an edited configuration wins over older run-time
changes (see :func:`restore`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from ..errors import ConnectionFailed, DecodeError, InvalidPeerId, LocalProtocolError
from ..identity import PeerId

# Decisions' reasons: the first two allow, the last two refuse.
OPEN: Final = "open"
ALLOW_LISTED: Final = "allow_listed"
DENIED: Final = "denied"
NOT_ALLOWED: Final = "not_allowed"

MAX_ENTRIES: Final = 65536  # per list: run-time additions cannot grow memory without bound
SAVED_FORMAT: Final = "coremesh-acl"
SAVED_VERSION: Final = 1
MAX_SAVED_BYTES: Final = 16 * 1024 * 1024


class PeerNotAllowed(LocalProtocolError, ConnectionFailed):
    """The access list refuses this peer: ``MeshNode.connect`` does not dial it. ``reason`` is
    ``denied`` (on the deny-list) or ``not_allowed`` (a closed mesh without it on its allow-list)."""

    def __init__(self, peer: PeerId, reason: str) -> None:
        why = "on the deny-list" if reason == DENIED else "the mesh is closed and it is not on the allow-list"
        super().__init__(f"{peer} is refused by the access list: {why}")
        self.peer = peer
        self.reason = reason


class AclFull(LocalProtocolError):
    """A list already holds :data:`MAX_ENTRIES` peers."""


@dataclass(frozen=True, slots=True)
class Decision:
    """What the access list says of one peer, and why (one of the reasons above)."""

    allowed: bool
    reason: str


@dataclass(frozen=True, slots=True)
class AclLists:
    """The two lists: ``allow`` None is an open mesh; ``deny`` always applies."""

    allow: frozenset[PeerId] | None = None
    deny: frozenset[PeerId] = frozenset()

    @classmethod
    def of(cls, allow: Iterable[PeerId] = (), deny: Iterable[PeerId] = ()) -> AclLists:
        """A configuration's lists: a non-empty ``allow`` closes the mesh, an empty one leaves it open."""
        allowed = frozenset(allow)
        return cls(allowed or None, frozenset(deny))

    @property
    def closed(self) -> bool:
        return self.allow is not None

    def to_json(self) -> dict[str, Any]:
        """``{"mode": "open"|"closed", "allow": [...], "deny": [...]}``, ids as text, sorted."""
        return {
            "mode": "closed" if self.closed else "open",
            "allow": sorted(p.to_text() for p in self.allow or ()),
            "deny": sorted(p.to_text() for p in self.deny),
        }

    @classmethod
    def from_json(cls, value: object) -> AclLists:
        """The inverse of :meth:`to_json`; :class:`DecodeError` on anything else."""
        if not isinstance(value, dict):
            raise DecodeError("access lists: expected an object")
        mode = value.get("mode")
        if mode not in ("open", "closed"):
            raise DecodeError(f"access lists: mode must be 'open' or 'closed', got {mode!r}")
        allow = _peer_list(value.get("allow"), "allow")
        deny = _peer_list(value.get("deny"), "deny")
        if mode == "open" and allow:
            raise DecodeError("access lists: an open mesh has no allow-list")
        return cls(frozenset(allow) if mode == "closed" else None, frozenset(deny))


def _peer_list(value: object, name: str) -> list[PeerId]:
    if not isinstance(value, list):
        raise DecodeError(f"access lists: {name} must be a list of peer ids")
    if len(value) > MAX_ENTRIES:
        raise DecodeError(f"access lists: {name} holds more than {MAX_ENTRIES} peers")
    out = []
    for item in value:
        if not isinstance(item, str):
            raise DecodeError(f"access lists: {name} must be a list of peer ids")
        try:
            out.append(PeerId.from_text(item))
        except InvalidPeerId as exc:
            raise DecodeError(f"access lists: {name}: {exc}") from None
    return out


class PeerAcl:
    """The node's allow-list and deny-list, consulted before any per-peer state (see the module
    docstring for the rule). ``counters`` counts every :meth:`decide` by reason; ``revision`` grows
    with every change, so a caller can tell whether it must re-check its connections."""

    def __init__(self, lists: AclLists | None = None) -> None:
        self.counters: Counter[str] = Counter()
        self.revision = 0
        self._set(lists if lists is not None else AclLists())

    def _set(self, lists: AclLists) -> None:
        self._lists = lists
        self._allow_keys = None if lists.allow is None else frozenset(p.key for p in lists.allow)
        self._deny_keys = frozenset(p.key for p in lists.deny)
        self.restricts = lists.allow is not None or bool(lists.deny)
        self.revision += 1

    @property
    def lists(self) -> AclLists:
        return self._lists

    # -- decisions --------------------------------------------------------------------------------

    def decide(self, peer: PeerId) -> Decision:
        """Allowed or refused, and why; counted in ``counters`` by reason."""
        key = peer.key
        if key in self._deny_keys:
            reason, allowed = DENIED, False
        elif self._allow_keys is None:
            reason, allowed = OPEN, True
        elif key in self._allow_keys:
            reason, allowed = ALLOW_LISTED, True
        else:
            reason, allowed = NOT_ALLOWED, False
        self.counters[reason] += 1
        return Decision(allowed, reason)

    def permits(self, peer: PeerId) -> bool:
        """:meth:`decide`'s answer alone, uncounted: for per-packet checks."""
        return self.permits_key(peer.key)

    def permits_key(self, key: bytes) -> bool:
        """:meth:`permits` for a raw 32-byte key (as it sits in a packet)."""
        if not self.restricts:
            return True
        if key in self._deny_keys:
            return False
        return self._allow_keys is None or key in self._allow_keys

    # -- changes (each returns whether anything changed) -----------------------------------------

    def allow(self, peer: PeerId) -> bool:
        """Put ``peer`` on the allow-list (an open mesh becomes closed) and off the deny-list."""
        lists = self._lists
        allow = lists.allow or frozenset()
        if peer in allow and lists.allow is not None and peer not in lists.deny:
            return False
        _room(allow, "allow")
        self._set(AclLists(allow | {peer}, lists.deny - {peer}))
        return True

    def deny(self, peer: PeerId) -> bool:
        """Put ``peer`` on the deny-list and off the allow-list."""
        lists = self._lists
        if peer in lists.deny and (lists.allow is None or peer not in lists.allow):
            return False
        _room(lists.deny, "deny")
        allow = None if lists.allow is None else lists.allow - {peer}
        self._set(AclLists(allow, lists.deny | {peer}))
        return True

    def remove_allowed(self, peer: PeerId) -> bool:
        """Take ``peer`` off the allow-list (the mesh stays closed, also when the list empties)."""
        lists = self._lists
        if lists.allow is None or peer not in lists.allow:
            return False
        self._set(AclLists(lists.allow - {peer}, lists.deny))
        return True

    def remove_denied(self, peer: PeerId) -> bool:
        lists = self._lists
        if peer not in lists.deny:
            return False
        self._set(AclLists(lists.allow, lists.deny - {peer}))
        return True

    def set_open(self, is_open: bool) -> bool:
        """Open the mesh (drop the allow-list) or close it (an empty allow-list if it had none)."""
        lists = self._lists
        if is_open == (lists.allow is None):
            return False
        self._set(AclLists(None if is_open else frozenset(), lists.deny))
        return True


def _room(entries: frozenset[PeerId], name: str) -> None:
    if len(entries) >= MAX_ENTRIES:
        raise AclFull(f"the {name}-list is full ({MAX_ENTRIES} peers)")


# -- persistence: bytes only; the shell reads and writes the file ------------------------------------


def encode_saved(lists: AclLists, config: AclLists) -> bytes:
    """The saved form of ``lists``, with the configured ``config`` lists they started from."""
    doc = {
        "format": SAVED_FORMAT,
        "version": SAVED_VERSION,
        "config": config.to_json(),
        "lists": lists.to_json(),
    }
    return (json.dumps(doc, indent=1) + "\n").encode("utf-8")


def decode_saved(data: bytes) -> tuple[AclLists, AclLists]:
    """``(lists, config)`` from :func:`encode_saved`'s bytes; :class:`DecodeError` on bad input."""
    if len(data) > MAX_SAVED_BYTES:
        raise DecodeError("saved access lists: too large")
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise DecodeError("saved access lists: not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != SAVED_FORMAT:
        raise DecodeError(f"saved access lists: not a {SAVED_FORMAT} document")
    if doc.get("version") != SAVED_VERSION:
        raise DecodeError(f"saved access lists: unsupported version {doc.get('version')!r}")
    return AclLists.from_json(doc.get("lists")), AclLists.from_json(doc.get("config"))


def restore(config: AclLists, saved: bytes | None) -> tuple[AclLists, bool]:
    """The lists to start with: the saved ones when they started from the same configured lists
    (a restart keeps the run-time changes), else the configuration's (an edited configuration wins
    over older run-time changes). Returns them and whether saved changes were dropped.
    :class:`DecodeError` if ``saved`` is not a saved form (never ignored: it may close a mesh)."""
    if saved is None:
        return config, False
    lists, base = decode_saved(saved)
    if base == config:
        return lists, False
    return config, lists != config
