"""Allow and deny lists from the operator's side: ``GET/POST /v1/acl``, ``POST /v1/allow``,
``POST /v1/deny`` and the ``coremesh allow``, ``deny`` and ``acl`` commands (docs/access.md).

The real admin app runs over a fake node that holds the real access room
(:class:`coremesh.mesh.access.PeerAccess`, saving to a data dir), stopped: the endpoint's side of
a change is tested in tests/unit/test_endpoint_acl.py and over real processes in
tests/integration/test_acl.py.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coremesh.access.acl import decode_saved
from coremesh.cli import main as cli
from coremesh.config import MeshConfig
from coremesh.errors import ConfigError
from coremesh.mesh.access import ACL_FILE, PeerAccess
from coremesh.mesh.parts import NodeParts
from tests.unit.test_cli import (
    PEER_B,
    PEER_C,
    AdminThread,
    FakeNode,
    assert_one_error_line,
    canned_server,
    run,
)


class AclNode(FakeNode):
    def __init__(self, data_dir: Path, **config: Any) -> None:
        super().__init__()
        self.access = PeerAccess(NodeParts(), MeshConfig(data_dir=data_dir, **config))

    async def connect(
        self, peer: Any, addr: Any = None, *, timeout: float | None = None, path: str = "auto"
    ) -> Any:
        self.access.check_connect(peer)  # as MeshNode.connect does
        return await super().connect(peer, addr, timeout=timeout, path=path)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[AdminThread]:
    with AdminThread(AclNode(tmp_path, allow_peers=(PEER_B.to_text(),))) as server:
        yield server


def test_acl_shows_the_configured_lists(api: AdminThread, capsys: pytest.CaptureFixture[str]) -> None:
    status, body = api.request("GET", "/v1/acl")
    assert status == 200
    assert body["mode"] == "closed" and body["allow"] == [PEER_B.to_text()] and body["deny"] == []
    assert body["saved_to"].endswith(ACL_FILE) and body["save_error"] is None
    code, out, err = run(["--admin", api.admin, "acl", "--json"], capsys)
    assert code == 0 and err == "" and json.loads(out) == body
    code, out, _ = run(["--admin", api.admin, "acl"], capsys)
    assert out.splitlines() == [
        "mesh closed: only allowed peers may connect (1 allowed, 0 denied)",
        f"allow  {PEER_B}",
    ]


def test_allow_deny_and_remove_through_the_cli_are_saved(
    api: AdminThread, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, _ = run(["--admin", api.admin, "allow", PEER_C.to_text()], capsys)
    assert code == 0 and out.splitlines()[0] == f"allowed {PEER_C}"
    assert f"allow  {PEER_C}" in out
    code, out, _ = run(["--admin", api.admin, "deny", PEER_B.to_text(), "--json"], capsys)
    answer = json.loads(out)
    assert answer["peer_id"] == PEER_B.to_text() and answer["removed"] is False
    assert answer["allow"] == [PEER_C.to_text()] and answer["deny"] == [PEER_B.to_text()]
    assert answer["connections_closed"] == 0  # the node is not running: nothing to close
    code, out, _ = run(["--admin", api.admin, "deny", PEER_B.to_text(), "--remove"], capsys)
    assert code == 0 and out.splitlines()[0] == f"removed {PEER_B} from the deny-list"

    path = tmp_path / ACL_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lists, config = decode_saved(path.read_bytes())
    assert lists.allow == {PEER_C} and lists.deny == set() and config.allow == {PEER_B}
    # A new room on the same data dir and configuration (a restart) starts where this one ended.
    again = PeerAccess(NodeParts(), MeshConfig(data_dir=tmp_path, allow_peers=(PEER_B.to_text(),)))
    assert again.acl.lists == lists


def test_open_and_close_the_mesh(api: AdminThread, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--admin", api.admin, "acl", "--open"], capsys)
    assert code == 0 and out.startswith("mesh open: every peer may connect but the denied")
    status, body = api.request("POST", "/v1/acl", {"mode": "closed"})
    assert status == 200 and body["mode"] == "closed" and body["allow"] == []


def test_a_refused_peer_is_not_dialed_and_the_error_says_why(
    api: AdminThread, capsys: pytest.CaptureFixture[str]
) -> None:
    status, body = api.request("POST", "/v1/connect", {"peer": f"{PEER_C}@127.0.0.1:9"})
    assert status == 403 and body["code"] == "peer_not_allowed"
    code, _, err = run(["--admin", api.admin, "connect", f"{PEER_C}@127.0.0.1:9"], capsys)
    assert code == 1
    assert_one_error_line(err, str(PEER_C), "refused by the access list", "not on the allow-list")


@pytest.mark.parametrize(
    ("path", "body", "words"),
    [
        ("/v1/allow", {}, '"peer" is required'),
        ("/v1/deny", {"peer": "nope"}, "invalid peer id"),
        ("/v1/deny", {"peer": PEER_B.to_text(), "remove": "yes"}, '"remove": expected true or false'),
        ("/v1/acl", {"mode": "ajar"}, '"mode": expected "open" or "closed"'),
    ],
)
def test_the_api_refuses_bad_input(api: AdminThread, path: str, body: Any, words: str) -> None:
    status, answer = api.request("POST", path, body)
    assert status == 400 and words in answer["error"]


def test_the_cli_refuses_a_bad_peer_id_before_any_request(capsys: pytest.CaptureFixture[str]) -> None:
    with canned_server() as (admin, canned):
        code, out, err = run(["--admin", admin, "allow", "not-a-peer"], capsys)
        assert code == 2 and out == "" and canned.requests == []
    assert_one_error_line(err, "invalid peer id")


def test_a_node_without_access_lists_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    with AdminThread(FakeNode()) as server:
        status, body = server.request("GET", "/v1/acl")
        assert status == 501 and body["code"] == "not_supported"


def test_a_corrupt_saved_file_stops_the_node_with_a_config_error(tmp_path: Path) -> None:
    (tmp_path / ACL_FILE).write_text('{"format": "coremesh-acl", "version": 1, "lists": 3}')
    with pytest.raises(ConfigError, match=r"acl\.json: .*fix or remove the file"):
        PeerAccess(NodeParts(), MeshConfig(data_dir=tmp_path))


def test_an_edited_configuration_wins_and_is_saved(tmp_path: Path) -> None:
    first = PeerAccess(NodeParts(), MeshConfig(data_dir=tmp_path, allow_peers=(PEER_B.to_text(),)))
    first.allow(PEER_C)
    edited = PeerAccess(NodeParts(), MeshConfig(data_dir=tmp_path, deny_peers=(PEER_C.to_text(),)))
    assert edited.acl.lists.allow is None and edited.acl.lists.deny == {PEER_C}
    lists, config = decode_saved((tmp_path / ACL_FILE).read_bytes())
    assert lists == config == edited.acl.lists


@pytest.mark.parametrize("command", ["allow", "deny", "acl"])
def test_help_on_every_acl_command(capsys: pytest.CaptureFixture[str], command: str) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"], env={})
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "--json" in out
