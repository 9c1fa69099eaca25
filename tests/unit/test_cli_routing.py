"""Overlay routing from the operator's side: the admin endpoints (``/v1/routes``, ``/v1/route``,
``/v1/broadcast``, ``/v1/join``, ``/v1/leave``, ``/v1/multicast``, ``/v1/groups``, ping's hops) and the
``coremesh`` commands over them (docs/routing.md).

The real admin app runs over a fake node that implements the Node API of the routing work (the table,
traceroute, broadcast and groups as plain data); a canned HTTP server checks what the CLI refuses
before sending anything.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest

from coremesh.addr import Address
from coremesh.cli import main as cli
from coremesh.errors import MessageTooLarge, PeerNotFound
from coremesh.identity import Identity, PeerId
from coremesh.routing.flood import TooManyGroups
from coremesh.routing.flood_messages import MAX_GROUP_LEN, group_bytes
from coremesh.service import nodeapi
from tests.unit.test_cli import (
    PEER_B,
    PEER_C,
    AdminThread,
    FakeConnection,
    FakeNode,
    FakePing,
    assert_one_error_line,
    canned_server,
    run,
)

PEER_D = Identity(bytes(range(3, 35))).peer_id
MAX_PACKET = 1000  # the fake's broadcast and multicast limit


class RoutingNode(FakeNode):
    """FakeNode plus the routing part of the Node API: A reaches B directly and C and D through B."""

    def __init__(self) -> None:
        super().__init__()
        self.connections[PEER_B] = FakeConnection(PEER_B, Address("127.0.0.1", 9))
        self.broadcasts: list[bytes] = []
        self.multicasts: list[tuple[str, bytes]] = []
        self.joined: list[str] = []
        self.traces: list[tuple[PeerId, float]] = []
        self.trace_error: BaseException | None = None
        self.route_to_d = False

    def routes(self) -> list[dict[str, Any]]:
        b, c, d = PEER_B.to_text(), PEER_C.to_text(), PEER_D.to_text()
        to_d = {"destination": d, "next_hop": b, "metric": 30, "hops": [b, d], "seqno": 1, "age_s": 0.5}
        return ([{**to_d, "backups": []}] if self.route_to_d else []) + [
            {
                "destination": b,
                "next_hop": b,
                "metric": 10,
                "hops": [b],
                "seqno": 7,
                "age_s": 1.5,
                "backups": [],
            },
            {
                "destination": c,
                "next_hop": b,
                "metric": 25,
                "hops": [b, c],
                "seqno": 9,
                "age_s": 0.25,
                "backups": [{"next_hop": d, "metric": 60, "hops": [d, c]}],
            },
        ]

    async def trace(self, peer: PeerId, *, timeout: float = 5.0) -> list[dict[str, Any]]:
        self.traces.append((peer, timeout))
        if self.trace_error is not None:
            raise self.trace_error
        if peer not in (PEER_B, PEER_C):
            raise PeerNotFound(f"no route to {peer}")
        hops: list[dict[str, Any]] = [{"hop": 1, "peer_id": PEER_B.to_text(), "rtt_ms": 1.25}]
        if peer == PEER_C and timeout < 1:  # C's answer comes too late: the trace ends unanswered
            hops += [{"hop": n, "peer_id": None, "rtt_ms": None} for n in (2, 3)]
        elif peer == PEER_C:
            hops.append({"hop": 2, "peer_id": PEER_C.to_text(), "rtt_ms": 2.5})
        return hops

    async def ping(self, peer: PeerId, *, timeout: float = 5.0) -> FakePing:
        if peer == PEER_C:
            return FakePing(0.003, "routed", (PEER_B,))
        return await super().ping(peer, timeout=timeout)

    def get_connection(self, peer: PeerId) -> FakeConnection | None:
        if peer == PEER_C:  # the end-to-end connection over the overlay
            conn = FakeConnection(PEER_C, Address("127.0.0.1", 9))
            conn.path = "routed"
            return conn
        return super().get_connection(peer)

    async def broadcast(self, data: bytes) -> int:
        if len(data) > MAX_PACKET:
            raise MessageTooLarge(f"a broadcast is at most {MAX_PACKET} bytes, got {len(data)}")
        self.broadcasts.append(data)
        return 1

    def join(self, group: str) -> None:
        if len(self.joined) >= 3:
            raise TooManyGroups("a member has at most 3 groups")
        if group not in self.joined:
            self.joined.append(group)

    def leave(self, group: str) -> None:
        if group in self.joined:
            self.joined.remove(group)

    def groups(self) -> list[str]:
        return sorted(self.joined)

    async def multicast(self, group: str, data: bytes) -> int:
        if len(data) > MAX_PACKET:
            raise MessageTooLarge(f"a multicast is at most {MAX_PACKET} bytes, got {len(data)}")
        self.multicasts.append((group, data))
        return 2

    def stats(self) -> dict[str, int]:
        return {"datagrams_sent": 1, "routes": 2, "forwarded_packets": 4, "forwarded_bytes": 400}


@pytest.fixture
def api() -> Iterator[AdminThread]:
    with AdminThread(RoutingNode()) as server:
        yield server


def node_of(api: AdminThread) -> RoutingNode:
    assert isinstance(api.node, RoutingNode)
    return api.node


# -------------------------------------------------------------------------------------- the table


def test_routes_json_is_the_table(api: AdminThread, capsys: pytest.CaptureFixture[str]) -> None:
    status, body = api.request("GET", "/v1/routes")
    assert status == 200 and body == {"routes": node_of(api).routes()}
    code, out, err = run(["--admin", api.admin, "routes", "--json"], capsys)
    assert code == 0 and err == "" and json.loads(out) == body


def test_routes_human_output_shows_each_destination_then_its_backups(
    api: AdminThread, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["--admin", api.admin, "routes"], capsys)
    assert code == 0
    head, to_b, to_c, backup = out.splitlines()
    assert head.split() == ["DESTINATION", "NEXT_HOP", "METRIC", "HOPS", "AGE"]
    assert to_b.split() == [PEER_B.to_text(), PEER_B.to_text(), "10", "1", "1.5s"]
    assert to_c.split() == [PEER_C.to_text(), PEER_B.to_text(), "25", "2", "0.2s"]
    assert backup == f"  backup via {PEER_D}  metric 60  hops 2"
    assert cli.format_routes({"routes": []}) == "no routes"


# ------------------------------------------------------------------------------------ traceroute


def test_route_traces_the_hops_with_their_latency(
    api: AdminThread, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["--admin", api.admin, "route", PEER_C.to_text(), "--json"], capsys)
    assert code == 0
    answer = json.loads(out)
    assert answer["peer_id"] == PEER_C.to_text() and answer["reached"] is True
    assert answer["hops"] == [
        {"hop": 1, "peer_id": PEER_B.to_text(), "rtt_ms": 1.25},
        {"hop": 2, "peer_id": PEER_C.to_text(), "rtt_ms": 2.5},
    ]
    assert answer["elapsed_ms"] >= 0
    assert node_of(api).traces[-1] == (PEER_C, 5.0)  # the documented default

    code, out, _ = run(["--admin", api.admin, "route", PEER_C.to_text(), "--timeout", "0.5"], capsys)
    assert code == 0 and node_of(api).traces[-1] == (PEER_C, 0.5)
    assert out.splitlines() == [
        f"route to {PEER_C}: 3 hops (destination not reached)",
        f"  1  {PEER_B}  1.250 ms",
        "  2  *",
        "  3  *",
    ]
    status, answer = api.request("POST", "/v1/route", {"peer": PEER_C.to_text(), "timeout": 0.5})
    assert status == 200 and answer["reached"] is False and answer["hops"][-1]["peer_id"] is None


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [(None, 404, "peer_not_found"), (TimeoutError(), 504, "timeout")],
)
def test_route_failures_are_json_errors(
    api: AdminThread, capsys: pytest.CaptureFixture[str], error: BaseException | None, status: int, code: str
) -> None:
    node_of(api).trace_error = error
    got_status, body = api.request("POST", "/v1/route", {"peer": PEER_D.to_text()})
    assert (got_status, body["code"]) == (status, code)
    exit_code, out, err = run(["--admin", api.admin, "route", PEER_D.to_text()], capsys)
    assert exit_code == 1 and out == ""
    assert_one_error_line(err)


# ----------------------------------------------------------------------------------- ping's hops


def test_ping_gives_the_hops_of_a_routed_path(api: AdminThread, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--admin", api.admin, "ping", PEER_C.to_text(), "--json"], capsys)
    assert code == 0
    answer = json.loads(out)
    assert (answer["path"], answer["via"], answer["hops"]) == ("routed", "routed", [PEER_B.to_text()])
    code, out, _ = run(["--admin", api.admin, "ping", PEER_C.to_text()], capsys)
    assert f"ping {PEER_C} via routed:" in out and f"\n  routed through {PEER_B}\n" in out

    code, out, _ = run(["--admin", api.admin, "ping", PEER_B.to_text(), "--json"], capsys)
    assert json.loads(out)["hops"] == [] and json.loads(out)["path"] == "direct"
    code, out, _ = run(["--admin", api.admin, "ping", PEER_B.to_text()], capsys)
    assert "routed through" not in out


def test_ping_connects_through_the_routing_table_without_a_dht(api: AdminThread) -> None:
    status, answer = api.request("POST", "/v1/ping", {"peer": PEER_D.to_text()})
    assert (status, answer["code"]) == (404, "peer_not_found")  # no connection, no DHT, no route
    node_of(api).route_to_d = True
    status, answer = api.request("POST", "/v1/ping", {"peer": PEER_D.to_text()})
    assert status == 200 and answer["received"] == 1
    assert node_of(api).connect_paths == ["routed"]
    status, _ = api.request("POST", "/v1/ping", {"peer": PEER_D.to_text()})  # connected now
    assert status == 200 and node_of(api).connect_paths == ["routed"]


# ------------------------------------------------------------------------- broadcast and multicast


def test_broadcast_text_and_bytes_reach_the_node(
    api: AdminThread, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["--admin", api.admin, "broadcast", "héllo"], capsys)
    assert code == 0 and out == "broadcast 6 bytes (sent to 1 neighbours)\n"
    code, out, _ = run(["--admin", api.admin, "broadcast", "--base64", "/wA=", "--json"], capsys)
    assert code == 0 and json.loads(out) == {"bytes": 2, "neighbours": 1}
    code, _, _ = run(["--admin", api.admin, "broadcast", "-dash"], capsys)  # TEXT may start with '-'
    assert code == 0
    status, _ = api.request("POST", "/v1/broadcast", {"data": "AAEC", "encoding": "base64"})
    assert status == 200
    assert node_of(api).broadcasts == ["héllo".encode(), b"\xff\x00", b"-dash", b"\x00\x01\x02"]


def test_multicast_reaches_the_node_with_its_group(
    api: AdminThread, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["--admin", api.admin, "multicast", "chat", "hello, group"], capsys)
    assert code == 0 and out == "multicast 12 bytes to group chat (sent to 2 neighbours)\n"
    code, out, _ = run(["--admin", api.admin, "multicast", "room/1", "-x", "--json"], capsys)
    assert code == 0 and json.loads(out) == {"group": "room/1", "bytes": 2, "neighbours": 2}
    assert node_of(api).multicasts == [("chat", b"hello, group"), ("room/1", b"-x")]


def test_too_large_for_one_packet_is_413(api: AdminThread, capsys: pytest.CaptureFixture[str]) -> None:
    big = "x" * (MAX_PACKET + 1)
    for path, body in (("/v1/broadcast", {"data": big}), ("/v1/multicast", {"group": "g", "data": big})):
        status, answer = api.request("POST", path, body)
        assert (status, answer["code"]) == (413, "message_too_large") and str(MAX_PACKET) in answer["error"]
    code, _, err = run(["--admin", api.admin, "broadcast", big], capsys)
    assert code == 1
    assert_one_error_line(err, str(MAX_PACKET))
    assert node_of(api).broadcasts == [] and node_of(api).multicasts == []


def test_join_leave_and_groups(api: AdminThread, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--admin", api.admin, "groups"], capsys)
    assert code == 0 and out == "no groups\n"
    code, out, _ = run(["--admin", api.admin, "join", "chat"], capsys)
    assert code == 0 and out == "joined chat (member of: chat)\n"
    code, out, _ = run(["--admin", api.admin, "join", "alerts.v1", "--json"], capsys)
    assert json.loads(out) == {"group": "alerts.v1", "groups": ["alerts.v1", "chat"]}
    code, out, _ = run(["--admin", api.admin, "groups"], capsys)
    assert out.splitlines() == ["alerts.v1", "chat"]
    code, out, _ = run(["--admin", api.admin, "leave", "chat"], capsys)
    assert code == 0 and out == "left chat (member of: alerts.v1)\n"
    code, out, _ = run(["--admin", api.admin, "leave", "chat"], capsys)  # not a member: no error
    assert code == 0
    assert api.request("GET", "/v1/groups") == (200, {"groups": ["alerts.v1"]})


# ---------------------------------------------------------------------------------------- bad input

BAD_GROUPS = ["", "a b", "-x", ".hidden", "é", "x" * (nodeapi.GROUP_NAME_MAX + 1), "tab\there", "a\nb"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/broadcast", {}),
        ("/v1/broadcast", {"data": 5}),
        ("/v1/broadcast", {"data": "x", "data_b64": "eA=="}),
        ("/v1/broadcast", {"data": "!!", "encoding": "base64"}),
        ("/v1/broadcast", {"data": "x", "encoding": "latin-1"}),
        ("/v1/broadcast", {"data_b64": "eA==", "encoding": "base64"}),
        ("/v1/broadcast", [1]),
        ("/v1/multicast", {"data": "x"}),
        ("/v1/multicast", {"group": "g"}),
        ("/v1/join", {}),
        ("/v1/join", {"group": 5}),
        ("/v1/leave", {"group": None}),
        ("/v1/route", {}),
        ("/v1/route", {"peer": PEER_C.to_text(), "timeout": "soon"}),
        ("/v1/route", {"peer": PEER_C.to_text(), "timeout": True}),
        *[("/v1/join", {"group": g}) for g in BAD_GROUPS],
        *[("/v1/multicast", {"group": g, "data": "x"}) for g in BAD_GROUPS],
    ],
)
def test_api_refuses_bad_input_with_one_line(api: AdminThread, path: str, body: Any) -> None:
    status, answer = api.request("POST", path, body)
    assert (status, answer["code"]) == (400, "bad_request"), answer
    assert "\n" not in answer["error"] and "Traceback" not in answer["error"]
    node = node_of(api)
    assert node.broadcasts == node.multicasts == node.joined == node.traces == []


def test_api_refuses_a_bad_peer_id(api: AdminThread) -> None:
    status, answer = api.request("POST", "/v1/route", {"peer": "nope"})
    assert (status, answer["code"]) == (400, "invalid_peer_id")


@pytest.mark.parametrize(
    "argv",
    [
        *[["join", g] for g in BAD_GROUPS if not g.startswith("-")],
        *[["leave", g] for g in BAD_GROUPS if not g.startswith("-")],
        *[["multicast", g, "text"] for g in BAD_GROUPS],
        ["route", "nope"],
        ["route", PEER_C.to_text(), "--timeout", "0.05"],
        ["route", PEER_C.to_text(), "--timeout", "10.5"],
        ["broadcast", "--base64", "!!"],
        ["multicast", "g", "--base64", "!!"],
    ],
)
def test_cli_refuses_bad_input_before_any_request(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    with canned_server() as (admin, canned):
        try:
            code = cli.main(["--admin", admin, *argv], env={})
        except SystemExit as exit:
            code = exit.code
        assert code == 2 and canned.requests == []
    assert_one_error_line(capsys.readouterr().err)


def test_route_timeout_limits_are_the_same_in_the_cli_and_the_api(
    api: AdminThread, capsys: pytest.CaptureFixture[str]
) -> None:
    low, high = nodeapi.ROUTE_TIMEOUT_RANGE
    for value, ok in ((low, True), (high, True), (low - 0.001, False), (high + 0.001, False)):
        status, _ = api.request("POST", "/v1/route", {"peer": PEER_B.to_text(), "timeout": value})
        assert (status == 200) is ok, value
        code: Any
        try:
            code = cli.main(
                ["--admin", api.admin, "route", PEER_B.to_text(), "--timeout", f"{value:g}"], env={}
            )
        except SystemExit as exit:
            code = exit.code
        assert code == (0 if ok else 2), value
        capsys.readouterr()


def test_the_trace_bound_is_the_nodes() -> None:
    from coremesh.mesh.overlay import MAX_TRACE_HOPS

    assert nodeapi.ROUTE_MAX_HOPS == MAX_TRACE_HOPS


def test_a_group_name_at_the_limit_is_accepted_and_fits_the_wire() -> None:
    longest = "a" * nodeapi.GROUP_NAME_MAX
    for name in (longest, "Room-1.eu:west/2_b", "0"):
        assert nodeapi.group_name_error(name) is None
        assert group_bytes(name) == name.encode()  # what the API accepts, multicast records carry
    assert nodeapi.GROUP_NAME_MAX <= MAX_GROUP_LEN
    assert all(nodeapi.group_name_error(g) for g in BAD_GROUPS)


def test_joining_too_many_groups_is_409(api: AdminThread, capsys: pytest.CaptureFixture[str]) -> None:
    for group in ("a", "b", "c"):
        assert api.request("POST", "/v1/join", {"group": group})[0] == 200
    status, body = api.request("POST", "/v1/join", {"group": "d"})
    assert (status, body["code"]) == (409, "too_many_groups") and "at most 3" in body["error"]
    code, _, err = run(["--admin", api.admin, "join", "d"], capsys)
    assert code == 1
    assert_one_error_line(err, "at most 3 groups")


# ----------------------------------------------------------------------------- recv: kind and group


def test_recv_shows_the_kind_and_the_group(api: AdminThread, capsys: pytest.CaptureFixture[str]) -> None:
    api.call(api.inbox.append, PEER_B, b"direct one", 1.0)
    assert api.call(lambda: api.inbox.offer(PEER_C, b"to all", kind="broadcast", ts=2.0))
    assert api.call(lambda: api.inbox.offer(PEER_D, b"\xff", kind="multicast", group="chat", ts=3.0))
    # The inbox holds 3 messages: a fourth delivery is dropped and counted, never waited for.
    assert not api.call(lambda: api.inbox.offer(PEER_D, b"late", kind="multicast", group="chat"))
    inbox = api.request("GET", "/v1/status")[1]["inbox"]
    assert (inbox["queued"], inbox["dropped"], inbox["deliveries_dropped"]) == (3, 1, 1)
    code, out, _ = run(["--admin", api.admin, "recv", "--count", "3", "--timeout", "0", "--json"], capsys)
    assert code == 0
    assert [json.loads(line) for line in out.splitlines()] == [
        {"from": PEER_B.to_text(), "data": "direct one", "ts": 1.0, "kind": "direct"},
        {"from": PEER_C.to_text(), "data": "to all", "ts": 2.0, "kind": "broadcast"},
        {
            "from": PEER_D.to_text(),
            "data": base64.b64encode(b"\xff").decode(),
            "encoding": "base64",
            "ts": 3.0,
            "kind": "multicast",
            "group": "chat",
        },
    ]
    assert cli.format_message({"from": "P", "data": "x", "kind": "broadcast"}) == "P (broadcast): x"
    assert cli.format_message({"from": "P", "data": "x", "kind": "multicast", "group": "g"}) == (
        "P (multicast g): x"
    )
    assert cli.format_message(
        {"from": "P", "data": "eA==", "kind": "multicast", "group": "g", "encoding": "base64"}
    ) == ("P (multicast g, base64): eA==")
    assert cli.format_message({"from": "P", "data": "x", "kind": "direct"}) == "P: x"
    assert cli.format_message({"from": "P", "data": "x", "kind": "\x1b[2J"}) == "P (\\x1b[2J): x"


# -------------------------------------------------------------------------------- help, other roles


@pytest.mark.parametrize("command", ["routes", "route", "broadcast", "join", "leave", "multicast", "groups"])
def test_help_on_every_routing_command(capsys: pytest.CaptureFixture[str], command: str) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"], env={})
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "--json" in out


@pytest.mark.parametrize(
    ("argv", "lacks"),
    [(["routes"], "it does not route"), (["join", "chat"], "it has no multicast groups")],
)
def test_a_relay_says_it_does_not_route(
    capsys: pytest.CaptureFixture[str], argv: list[str], lacks: str
) -> None:
    with canned_server() as (admin, canned):
        canned.routes[("GET", "/v1/status")] = (200, {"role": "relay", "services": {}})
        for method, path in (("GET", "/v1/routes"), ("POST", "/v1/join")):
            canned.routes[(method, path)] = (
                404,
                {"error": f"{method} {path}: Not Found", "code": "not_found"},
            )
        code, out, err = run(["--admin", admin, *argv], capsys)
    assert code == 1 and out == ""
    assert_one_error_line(err, "this is a coremesh-relay, not a coremesh-node", lacks)


def test_status_shows_the_routes_and_the_dropped_deliveries(
    api: AdminThread, capsys: pytest.CaptureFixture[str]
) -> None:
    api.call(lambda: api.inbox.close())  # every delivery is dropped now
    api.call(lambda: api.inbox.offer(PEER_C, b"x", kind="broadcast"))
    code, out, _ = run(["--admin", api.admin, "status"], capsys)
    assert code == 0
    assert "routes       2 destinations (coremesh routes)" in out
    assert "inbox        0 queued (0 B of 64.0 MiB), 1 dropped (1 broadcasts/multicasts)" in out
