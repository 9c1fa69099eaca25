"""The allow-list and deny-list core (coremesh/access/acl.py): the rule, run-time changes, the saved
form (round trip, typed errors on bad input, restore against an edited configuration)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coremesh.access.acl import (
    ALLOW_LISTED,
    DENIED,
    NOT_ALLOWED,
    OPEN,
    AclLists,
    PeerAcl,
    PeerNotAllowed,
    decode_saved,
    encode_saved,
    restore,
)
from coremesh.config import MeshConfig
from coremesh.errors import ConfigError, ConnectionFailed, DecodeError, LocalProtocolError
from coremesh.identity import Identity, PeerId

A, B, C, D = (Identity(bytes([i]) * 32).peer_id for i in range(1, 5))


def test_an_open_mesh_allows_everyone_but_the_denied() -> None:
    acl = PeerAcl(AclLists.of(deny=[C]))
    assert not acl.lists.closed
    assert [acl.decide(p).reason for p in (A, B, C)] == [OPEN, OPEN, DENIED]
    assert [acl.permits(p) for p in (A, B, C)] == [True, True, False]
    assert acl.counters == {OPEN: 2, DENIED: 1}


def test_an_allow_list_closes_the_mesh_and_deny_wins_over_allow() -> None:
    acl = PeerAcl(AclLists.of(allow=[A, B], deny=[B]))
    assert acl.lists.closed
    decisions = {p: acl.decide(p) for p in (A, B, C)}
    assert decisions[A].allowed and decisions[A].reason == ALLOW_LISTED
    assert not decisions[B].allowed and decisions[B].reason == DENIED  # on both lists: denied
    assert not decisions[C].allowed and decisions[C].reason == NOT_ALLOWED
    assert [acl.permits_key(p.key) for p in (A, B, C)] == [True, False, False]


def test_an_empty_configured_allow_list_leaves_the_mesh_open() -> None:
    assert AclLists.of(allow=[]).allow is None
    acl = PeerAcl()
    assert not acl.restricts and acl.permits(A)


def test_allow_and_deny_move_a_peer_between_the_lists() -> None:
    acl = PeerAcl()
    revision = acl.revision
    assert acl.allow(A)  # an open mesh becomes closed: only A
    assert acl.revision > revision
    assert acl.permits(A) and not acl.permits(B)
    assert not acl.allow(A)  # already so: no change
    assert acl.deny(A)
    assert acl.lists == AclLists(frozenset(), frozenset({A}))
    assert not acl.permits(A)
    assert acl.allow(A)  # back off the deny-list
    assert acl.lists == AclLists(frozenset({A}), frozenset())


def test_removing_the_last_allowed_peer_keeps_the_mesh_closed_until_opened() -> None:
    acl = PeerAcl(AclLists.of(allow=[A]))
    assert acl.remove_allowed(A) and not acl.remove_allowed(A)
    assert acl.lists.closed and not acl.permits(A) and not acl.permits(B)
    assert acl.set_open(True) and not acl.set_open(True)
    assert acl.permits(A) and acl.permits(B)
    assert acl.set_open(False) and not acl.permits(A)
    acl.deny(B)
    assert acl.remove_denied(B) and not acl.remove_denied(B)


def test_denying_on_an_open_mesh_keeps_it_open() -> None:
    acl = PeerAcl()
    acl.deny(A)
    assert not acl.lists.closed and acl.permits(B) and not acl.permits(A)


def test_the_refusal_error_is_typed_and_says_why() -> None:
    err = PeerNotAllowed(C, NOT_ALLOWED)
    assert isinstance(err, ConnectionFailed) and isinstance(err, LocalProtocolError)
    assert str(C) in str(err) and "allow-list" in str(err) and err.reason == NOT_ALLOWED
    assert "deny-list" in str(PeerNotAllowed(C, DENIED))


def test_mesh_config_validates_the_lists() -> None:
    cfg = MeshConfig(allow_peers=(A.to_text(), B.to_text(), A.to_text()), deny_peers=[C.to_text()])  # type: ignore[arg-type]
    assert cfg.allowed_peer_ids == (A, B) and cfg.denied_peer_ids == (C,)
    assert cfg.deny_peers == (C.to_text(),)
    with pytest.raises(ConfigError, match="allow_peers: invalid peer id"):
        MeshConfig(allow_peers=("not-a-peer-id",))
    with pytest.raises(ConfigError, match="deny_peers: expected a list"):
        MeshConfig(deny_peers=A.to_text())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="checksum"):
        MeshConfig.from_dict({"deny_peers": [A.to_text()[:-1] + ("a" if A.to_text()[-1] != "a" else "b")]})


# -- the saved form -----------------------------------------------------------------------------------


def test_saved_lists_round_trip_with_their_configuration() -> None:
    lists = AclLists(frozenset({A, C}), frozenset({B}))
    config = AclLists.of(allow=[A])
    data = encode_saved(lists, config)
    assert decode_saved(data) == (lists, config)
    assert json.loads(data)["lists"] == {
        "mode": "closed",
        "allow": sorted([A.to_text(), C.to_text()]),
        "deny": [B.to_text()],
    }


def test_restore_keeps_run_time_changes_while_the_configuration_is_the_same() -> None:
    config = AclLists.of(allow=[A, B])
    changed = AclLists(frozenset({A, C}), frozenset({B}))
    assert restore(config, None) == (config, False)
    assert restore(config, encode_saved(changed, config)) == (changed, False)
    # The same configured lists in another order are the same configuration.
    assert restore(AclLists.of(allow=[B, A]), encode_saved(changed, config)) == (changed, False)


def test_an_edited_configuration_wins_over_older_run_time_changes() -> None:
    old = AclLists.of(allow=[A])
    changed = AclLists(frozenset({A, C}), frozenset())
    edited = AclLists.of(allow=[A, D])
    assert restore(edited, encode_saved(changed, old)) == (edited, True)
    assert restore(edited, encode_saved(old, old)) == (edited, True)
    assert restore(edited, encode_saved(edited, old)) == (edited, False)  # nothing was lost


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xfe",
        b"[]",
        b'{"format": "other"}',
        b'{"format": "coremesh-acl", "version": 2}',
        b'{"format": "coremesh-acl", "version": 1, "lists": {"mode": "open", "allow": [], "deny": []}}',
        b'{"format": "coremesh-acl", "version": 1, "config": {"mode": "x", "allow": [], "deny": []},'
        b' "lists": {"mode": "open", "allow": [], "deny": []}}',
        b'{"format": "coremesh-acl", "version": 1, "config": {"mode": "open", "allow": ["abc"], "deny": []},'
        b' "lists": {"mode": "open", "allow": [], "deny": []}}',
        b'{"format": "coremesh-acl", "version": 1, "config": {"mode": "open", "allow": [], "deny": [1]},'
        b' "lists": {"mode": "open", "allow": [], "deny": []}}',
        b"[" * 100_000,
    ],
)
def test_bad_saved_bytes_are_a_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_saved(data)
    with pytest.raises(DecodeError):
        restore(AclLists(), data)


def test_an_open_mesh_with_an_allow_list_is_not_a_saved_form() -> None:
    bad = {"mode": "open", "allow": [A.to_text()], "deny": []}
    doc = {"format": "coremesh-acl", "version": 1, "config": bad, "lists": bad}
    with pytest.raises(DecodeError, match="open mesh"):
        decode_saved(json.dumps(doc).encode())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_decode_saved_never_raises_anything_but_decode_error(data: bytes) -> None:
    try:
        lists, base = decode_saved(data)
    except DecodeError:
        return
    assert decode_saved(encode_saved(lists, base)) == (lists, base)  # what decodes is a saved form


_peers = st.sets(st.sampled_from([A, B, C, D]))
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=60) | st.sampled_from([A.to_text(), "open"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["format", "version", "config", "lists", "mode", "allow", "deny"]), _json_values
    )
)
def test_decode_saved_refuses_any_structured_junk_with_a_decode_error(doc: dict[str, object]) -> None:
    try:
        lists, base = decode_saved(json.dumps(doc).encode())
    except DecodeError:
        return
    assert decode_saved(encode_saved(lists, base)) == (lists, base)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.none(), _peers), _peers, st.one_of(st.none(), _peers), _peers)
def test_saved_forms_round_trip(
    allow: set[PeerId] | None, deny: set[PeerId], base_allow: set[PeerId] | None, base_deny: set[PeerId]
) -> None:
    lists = AclLists(None if allow is None else frozenset(allow), frozenset(deny))
    base = AclLists(None if base_allow is None else frozenset(base_allow), frozenset(base_deny))
    assert decode_saved(encode_saved(lists, base)) == (lists, base)


# -- the node's settings --------------------------------------------------------------------------------


def test_node_flags_environment_and_config_file_give_the_lists(tmp_path: Path) -> None:
    from coremesh_node.settings import resolve

    flags = resolve(["--allow", A.to_text(), "--allow", B.to_text(), "--deny", C.to_text()])
    assert flags.mesh.allowed_peer_ids == (A, B) and flags.mesh.denied_peer_ids == (C,)
    env = resolve([], {"COREMESH_ALLOW": f"{A}, {B}", "COREMESH_DENY": str(C)})
    assert env.mesh.allowed_peer_ids == (A, B) and env.mesh.denied_peer_ids == (C,)
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[node]\nallow_peers = ["{A}"]\ndeny_peers = ["{D}"]\n')
    from_file = resolve(["--config", str(cfg), "--allow", B.to_text()])
    assert from_file.mesh.allowed_peer_ids == (B,)  # a flag's list replaces the file's
    assert from_file.mesh.denied_peer_ids == (D,)


def test_a_bad_peer_id_names_the_flag_the_variable_or_the_file(tmp_path: Path) -> None:
    from coremesh_node.settings import resolve

    with pytest.raises(ConfigError, match="--allow: invalid peer id"):
        resolve(["--allow", "nope"])
    with pytest.raises(ConfigError, match="COREMESH_DENY"):
        resolve([], {"COREMESH_DENY": "nope"})
    cfg = tmp_path / "node.toml"
    cfg.write_text('[node]\ndeny_peers = ["nope"]\n')
    with pytest.raises(ConfigError, match="deny_peers"):
        resolve(["--config", str(cfg)])
    cfg.write_text('[node]\nallow_peers = "not a list"\n')
    with pytest.raises(ConfigError, match="allow_peers: expected a list"):
        resolve(["--config", str(cfg)])
