"""The `coremesh` CLI (parsing, local checks, output, errors) and the node's admin API, in-process.

Two servers stand in for a node: a canned stdlib HTTP server (what the CLI sends, how it prints what
it gets back), and the real admin app (``coremesh_node.admin``) over a fake node, run on a thread.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from coremesh.addr import Address
from coremesh.cli import main as cli
from coremesh.errors import ConnectionClosed, ConnectionFailed, PeerNotFound
from coremesh.identity import Identity, PeerId
from coremesh.service import nodeapi

PEER_A = Identity(bytes(range(32))).peer_id
PEER_B = Identity(bytes(range(1, 33))).peer_id
PEER_C = Identity(bytes(range(2, 34))).peer_id


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(
    argv: list[str], capsys: pytest.CaptureFixture[str], env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    code = cli.main(argv, env=env or {})
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(err: str, *words: str) -> None:
    assert err.startswith("coremesh: error: "), err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in err, err


# ------------------------------------------------------------------------------ canned fake server


@dataclass
class Canned:
    routes: dict[tuple[str, str], tuple[int, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, list[str]], Any]] = field(default_factory=list)


@contextlib.contextmanager
def canned_server() -> Iterator[tuple[str, Canned]]:
    """A stdlib HTTP server answering what ``Canned.routes`` says and recording every request."""
    canned = Canned()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            canned.requests.append((self.command, url.path, parse_qs(url.query), body))
            status, payload = canned.routes.get((self.command, url.path), (404, {"error": "no route"}))
            raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        do_GET = do_POST = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", canned
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def fake() -> Iterator[tuple[str, Canned]]:
    with canned_server() as server:
        yield server


STATUS = {
    "role": "node",
    "peer_id": PEER_A.to_text(),
    "addresses": ["127.0.0.1:7946"],
    "listen": ["127.0.0.1:7946"],
    "admin": "127.0.0.1:7947",
    "version": "0.1.0",
    "uptime_s": 12.5,
    "connections": 1,
    "stats": {"datagrams_sent": 3},
    "inbox": {"queued": 0, "received": 0, "dropped": 0},
}


def test_status_json_and_text(fake: tuple[str, Canned], capsys: pytest.CaptureFixture[str]) -> None:
    admin, canned = fake
    canned.routes[("GET", "/v1/status")] = (200, STATUS)
    code, out, err = run(["--admin", admin, "status", "--json"], capsys)
    assert code == 0 and err == ""
    assert json.loads(out) == STATUS
    code, out, _ = run(["--admin", admin, "--json", "status"], capsys)  # --json before the command too
    assert code == 0 and json.loads(out) == STATUS
    code, out, _ = run(["--admin", admin, "status"], capsys)
    assert code == 0
    assert f"peer_id      {PEER_A}" in out and "addresses    127.0.0.1:7946" in out and "12.5s" in out


def test_admin_address_from_environment(fake: tuple[str, Canned], capsys: pytest.CaptureFixture[str]) -> None:
    admin, canned = fake
    canned.routes[("GET", "/v1/status")] = (200, STATUS)
    code, _, _ = run(["status"], capsys, env={"COREMESH_ADMIN": admin})
    assert code == 0 and len(canned.requests) == 1


def test_connect_sends_the_peer_and_prints(
    fake: tuple[str, Canned], capsys: pytest.CaptureFixture[str]
) -> None:
    admin, canned = fake
    answer = {"peer_id": PEER_B.to_text(), "address": "127.0.0.1:9", "path": "direct", "connect_ms": 1.5}
    canned.routes[("POST", "/v1/connect")] = (200, answer)
    code, out, _ = run(["--admin", admin, "connect", f"{PEER_B}@127.0.0.1:9"], capsys)
    assert code == 0
    assert out == f"connected to {PEER_B} at 127.0.0.1:9 (path direct, 1.500 ms)\n"
    assert canned.requests[-1][3]["peer"] == f"{PEER_B}@127.0.0.1:9"
    code, out, _ = run(["--admin", admin, "connect", f"{PEER_B}@127.0.0.1:9", "--json"], capsys)
    assert json.loads(out) == answer


def test_ping(fake: tuple[str, Canned], capsys: pytest.CaptureFixture[str]) -> None:
    admin, canned = fake
    answer = {
        "peer_id": PEER_B.to_text(),
        "path": "direct",
        "rtt_ms": 0.5,
        "rtts_ms": [0.4, 0.6],
        "min_ms": 0.4,
        "max_ms": 0.6,
        "sent": 2,
        "received": 2,
    }
    canned.routes[("POST", "/v1/ping")] = (200, answer)
    code, out, _ = run(["--admin", admin, "ping", PEER_B.to_text(), "--count", "2", "--json"], capsys)
    assert code == 0 and json.loads(out) == answer
    assert canned.requests[-1][3]["count"] == 2 and canned.requests[-1][3]["peer"] == PEER_B.to_text()
    code, out, _ = run(["--admin", admin, "ping", PEER_B.to_text()], capsys)
    assert "2 sent, 2 received, 0% loss" in out and "0.400/0.500/0.600 ms" in out and "via direct" in out


def test_send_text_and_base64(fake: tuple[str, Canned], capsys: pytest.CaptureFixture[str]) -> None:
    admin, canned = fake
    canned.routes[("POST", "/v1/send")] = (200, {"peer_id": PEER_B.to_text(), "bytes": 5, "path": "direct"})
    code, out, _ = run(["--admin", admin, "send", PEER_B.to_text(), "héllo"], capsys)
    assert code == 0 and out == f"sent 5 bytes to {PEER_B}\n"
    assert canned.requests[-1][3] == {"peer": PEER_B.to_text(), "data": "héllo"}
    code, _, _ = run(["--admin", admin, "send", PEER_B.to_text(), "--base64", "AAEC"], capsys)
    assert code == 0 and canned.requests[-1][3] == {"peer": PEER_B.to_text(), "data_b64": "AAEC"}
    code, _, err = run(["--admin", admin, "send", PEER_B.to_text(), "--base64", "!!"], capsys)
    assert code == 2
    assert_one_error_line(err, "base64")


MESSAGES = [
    {"from": PEER_B.to_text(), "data": "one", "ts": 1.0},
    {"from": PEER_C.to_text(), "data": "AAEC", "encoding": "base64", "ts": 2.0},
]


def test_recv_prints_one_object_per_line(
    fake: tuple[str, Canned], capsys: pytest.CaptureFixture[str]
) -> None:
    admin, canned = fake
    canned.routes[("GET", "/v1/messages")] = (200, {"messages": MESSAGES})
    code, out, err = run(["--admin", admin, "recv", "--count", "2", "--timeout", "3", "--json"], capsys)
    assert code == 0 and err == ""
    assert [json.loads(line) for line in out.splitlines()] == MESSAGES
    assert canned.requests[-1][2] == {"count": ["2"], "timeout": ["3"]}
    code, out, _ = run(["--admin", admin, "recv", "--count", "2"], capsys)
    assert out.splitlines() == [f"{PEER_B}: one", f"{PEER_C} (base64): AAEC"]


def test_recv_count_zero_takes_everything(
    fake: tuple[str, Canned], capsys: pytest.CaptureFixture[str]
) -> None:
    admin, canned = fake
    canned.routes[("GET", "/v1/messages")] = (200, {"messages": []})
    code, out, _ = run(["--admin", admin, "recv", "--count", "0", "--timeout", "0"], capsys)
    assert code == 0 and out == ""
    assert canned.requests[-1][2] == {"timeout": ["0"]}


def test_recv_shortfall_prints_what_came_then_fails(
    fake: tuple[str, Canned], capsys: pytest.CaptureFixture[str]
) -> None:
    admin, canned = fake
    canned.routes[("GET", "/v1/messages")] = (200, {"messages": MESSAGES[:1]})
    code, out, err = run(["--admin", admin, "recv", "--count", "3", "--timeout", "1", "--json"], capsys)
    assert code == 1
    assert [json.loads(line) for line in out.splitlines()] == MESSAGES[:1]
    assert_one_error_line(err, "received 1 of 3")


def test_peers(fake: tuple[str, Canned], capsys: pytest.CaptureFixture[str]) -> None:
    admin, canned = fake
    peer = {"peer_id": PEER_B.to_text(), "address": "127.0.0.1:9", "state": "connected", "path": "direct"}
    canned.routes[("GET", "/v1/peers")] = (200, {"peers": [{**peer, "rtt_ms": 0.25}]})
    code, out, _ = run(["--admin", admin, "peers", "--json"], capsys)
    assert code == 0 and json.loads(out)["peers"][0]["peer_id"] == PEER_B.to_text()
    code, out, _ = run(["--admin", admin, "peers"], capsys)
    header, row = out.splitlines()
    assert header.split() == ["PEER_ID", "ADDRESS", "STATE", "PATH", "RTT"]
    assert row.split() == [PEER_B.to_text(), "127.0.0.1:9", "connected", "direct", "0.250", "ms"]
    canned.routes[("GET", "/v1/peers")] = (200, {"peers": []})
    assert run(["--admin", admin, "peers"], capsys)[1] == "no peers\n"


# ---------------------------------------------------------------------------------------- errors


def test_server_error_is_one_line(fake: tuple[str, Canned], capsys: pytest.CaptureFixture[str]) -> None:
    admin, canned = fake
    canned.routes[("POST", "/v1/ping")] = (
        404,
        {"error": f"not connected to {PEER_B}", "code": "peer_not_found"},
    )
    code, out, err = run(["--admin", admin, "ping", PEER_B.to_text(), "--json"], capsys)
    assert code == 1 and out == ""
    assert_one_error_line(err, "not connected to")


def test_non_json_answer(fake: tuple[str, Canned], capsys: pytest.CaptureFixture[str]) -> None:
    admin, canned = fake
    canned.routes[("GET", "/v1/status")] = (200, b"<html>hello</html>")
    code, _, err = run(["--admin", admin, "status"], capsys)
    assert code == 1
    assert_one_error_line(err, "not JSON")


@pytest.mark.parametrize(
    "argv",
    [
        ["ping", "not-a-peer-id"],
        ["ping", PEER_B.to_text()[:-1] + ("a" if PEER_B.to_text()[-1] != "a" else "b")],  # checksum
        ["send", "nope", "hi"],
        ["connect", PEER_B.to_text()[:-1] + ("a" if PEER_B.to_text()[-1] != "a" else "b")],  # id alone
        ["lookup", "nope"],
        ["connect", f"{PEER_B}@127.0.0.1"],  # no port
        ["connect", "zz@127.0.0.1:9"],
    ],
)
def test_bad_input_is_refused_before_any_request(
    fake: tuple[str, Canned], capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    admin, canned = fake
    code, out, err = run(["--admin", admin, *argv], capsys)
    assert code == 2 and out == ""
    assert_one_error_line(err)
    assert canned.requests == []


def test_node_not_running(capsys: pytest.CaptureFixture[str]) -> None:
    admin = f"127.0.0.1:{free_tcp_port()}"
    code, _, err = run(["--admin", admin, "status", "--json"], capsys)
    assert code == 1
    assert_one_error_line(err, "connection refused", "is coremesh-node running")


def test_bad_admin_address(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["--admin", "127.0.0.1", "status"], capsys)
    assert code == 2
    assert_one_error_line(err, "--admin")


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["ping"],
        ["ping", "x", "--count", "0"],
        ["recv", "--timeout", "soon"],
        ["status", "-x"],
    ],
)
def test_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(argv, env={})
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("coremesh: error: ") and err.count("\n") == 1


@pytest.mark.parametrize("command", [[], ["status"], ["peers"], ["connect"], ["ping"], ["send"], ["recv"]])
def test_help_on_every_command(capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main([*command, "--help"], env={})
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "--json" in out


# ------------------------------------------------------ ranges, TEXT starting with '-', escaping


# Just outside what the admin API accepts: refused locally (exit 2, one line), before any request.
OUT_OF_RANGE = [
    ["recv", "--timeout", "301"],
    ["recv", "--timeout", "-1"],
    ["recv", "--count", "1000001"],
    ["ping", PEER_B.to_text(), "--count", "1001"],
    ["ping", PEER_B.to_text(), "--timeout", "60.5"],
    ["ping", PEER_B.to_text(), "--timeout", "0.001"],
    ["ping", PEER_B.to_text(), "--interval", "10.5"],
    ["ping", PEER_B.to_text(), "--timeout", "nan"],
    ["connect", f"{PEER_B}@127.0.0.1:9", "--timeout", "0.05"],
    ["connect", f"{PEER_B}@127.0.0.1:9", "--timeout", "301"],
]


@pytest.mark.parametrize("argv", OUT_OF_RANGE)
def test_out_of_range_values_are_refused_locally(
    fake: tuple[str, Canned], capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    admin, canned = fake
    with pytest.raises(SystemExit) as info:
        cli.main(["--admin", admin, *argv], env={})
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert_one_error_line(err, argv[-2], "expected")
    assert canned.requests == []


SENT = {"peer_id": PEER_B.to_text(), "bytes": 6, "path": "direct"}


def test_send_text_starting_with_a_dash(fake: tuple[str, Canned], capsys: pytest.CaptureFixture[str]) -> None:
    admin, canned = fake
    canned.routes[("POST", "/v1/send")] = (200, SENT)
    peer = PEER_B.to_text()
    for argv, data, as_json in [
        (["send", peer, "-hello"], "-hello", False),
        (["send", peer, "--", "-hello"], "-hello", False),
        (["send", peer, "-h x"], "-h x", False),
        (["send", peer, "-hello", "--json"], "-hello", True),  # --json after TEXT is still the option
        (["--json", "send", "--", peer, "--json"], "--json", True),
        (["send", peer, "-"], "-", False),
    ]:
        code, out, err = run(["--admin", admin, *argv], capsys)
        assert (code, err) == (0, ""), argv
        assert canned.requests[-1][3] == {"peer": peer, "data": data}, argv
        assert out == (json.dumps(SENT) + "\n" if as_json else f"sent 6 bytes to {PEER_B}\n"), argv
    code, _, _ = run(["--admin", admin, "send", peer, "--base64", "-_8="], capsys)
    assert code == 2  # "-_8=" is TEXT (invalid base64), --base64 still the option
    with pytest.raises(SystemExit) as info:
        cli.main(["--admin", admin, "send", peer, "-hello", "extra"], env={})
    assert info.value.code == 2


def test_recv_text_output_escapes_control_characters(
    fake: tuple[str, Canned], capsys: pytest.CaptureFixture[str]
) -> None:
    admin, canned = fake
    hostile = [
        {"from": PEER_B.to_text(), "data": "line1\nPEER: forged\r\x1b[2J\x1b]0;title\x07", "ts": 1.0},
        {"from": PEER_C.to_text(), "data": "a\\n\u202etxt.exe\x9b\u2028 \ttab héllo 👍", "ts": 2.0},
    ]
    canned.routes[("GET", "/v1/messages")] = (200, {"messages": hostile})
    code, out, _ = run(["--admin", admin, "recv", "--count", "2"], capsys)
    assert code == 0
    assert out.splitlines() == [
        f"{PEER_B}: line1\\nPEER: forged\\r\\x1b[2J\\x1b]0;title\\x07",
        f"{PEER_C}: a\\\\n\\u202etxt.exe\\x9b\\u2028 \\ttab héllo 👍",
    ]
    assert all(ch.isprintable() or ch == "\n" for ch in out)
    code, out, _ = run(["--admin", admin, "recv", "--count", "2", "--json"], capsys)
    assert [json.loads(line) for line in out.splitlines()] == hostile  # --json: the exact values
    assert all(ch.isprintable() or ch == "\n" for ch in out) and "héllo 👍" in out
    assert cli.json_line({"a": "\U000e0001"}) == '{"a": "\\udb40\\udc01"}'
    assert json.loads(cli.json_line({"a": "\U000e0001"})) == {"a": "\U000e0001"}


def test_status_shows_inbox_bytes(fake: tuple[str, Canned], capsys: pytest.CaptureFixture[str]) -> None:
    admin, canned = fake
    inbox = {
        "queued": 2,
        "bytes": 3 * 1024 * 1024,
        "max_bytes": 64 * 1024 * 1024,
        "received": 2,
        "dropped": 0,
    }
    canned.routes[("GET", "/v1/status")] = (200, {**STATUS, "inbox": inbox})
    code, out, _ = run(["--admin", admin, "status"], capsys)
    assert code == 0 and "inbox        2 queued (3.0 MiB of 64.0 MiB), 0 dropped" in out


# -------------------------------------------------------------- the real admin app over a fake node


class FakeConnection:
    def __init__(self, peer_id: PeerId, address: Address) -> None:
        self.peer_id = peer_id
        self.remote_address = address
        self.path = "direct"
        self.is_closed = False
        self.sent: list[bytes] = []

    async def send(self, data: bytes) -> None:
        if self.is_closed:
            raise ConnectionClosed("closed")
        self.sent.append(data)


@dataclass(frozen=True)
class FakePeerInfo:
    peer_id: PeerId
    address: Address
    state: str
    path: str
    rtt: float | None


@dataclass(frozen=True)
class FakePing:
    rtt: float
    path: str
    hops: tuple[PeerId, ...] = ()


class FakeNode:
    def __init__(self) -> None:
        self.peer_id = PEER_A
        self.listen_addresses = [Address("127.0.0.1", 7946)]
        self.connections: dict[PeerId, FakeConnection] = {}
        self.unreachable: set[PeerId] = set()
        self.connect_timeouts: list[float | None] = []
        self.connect_paths: list[str] = []

    async def connect(
        self, peer: Any, addr: Any = None, *, timeout: float | None = None, path: str = "auto"
    ) -> FakeConnection:
        self.connect_timeouts.append(timeout)
        self.connect_paths.append(path)
        if peer in self.unreachable:
            raise ConnectionFailed(f"connecting to {peer} at {addr} timed out")
        conn = self.connections.setdefault(peer, FakeConnection(peer, addr))
        return conn

    def get_connection(self, peer: PeerId) -> FakeConnection | None:
        return self.connections.get(peer)

    def get_peers(self) -> list[FakePeerInfo]:
        return [
            FakePeerInfo(c.peer_id, c.remote_address, "connected", "direct", 0.002)
            for c in self.connections.values()
        ]

    async def ping(self, peer: PeerId, *, timeout: float = 5.0) -> FakePing:
        if peer not in self.connections:
            raise PeerNotFound(f"not connected to {peer}")
        return FakePing(0.001, "direct")

    def stats(self) -> dict[str, int]:
        return {"datagrams_sent": 1}

    def routes(self) -> list[dict[str, Any]]:
        return []  # no overlay routes (tests/unit/test_cli_routing.py has a node with some)


class AdminThread:
    """The admin app of coremesh_node, served from an event loop on a background thread."""

    def __init__(self, node: FakeNode | None = None) -> None:
        from coremesh_node.admin import STATE, AdminServer, create_admin_app
        from coremesh_node.inbox import Inbox

        self.node = FakeNode() if node is None else node
        self.loop = asyncio.new_event_loop()
        self.inbox = Inbox(maxlen=3)
        self.app = create_admin_app(self.node, self.inbox, listen="127.0.0.1:7946")
        self.state = self.app[STATE]
        self.server = AdminServer(self.app)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def call(self, fn: Any, *args: Any) -> Any:
        async def wrapper() -> Any:
            result = fn(*args)
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(10)

    def __enter__(self) -> AdminThread:
        self.thread.start()
        bound = self.call(self.server.start, Address("127.0.0.1", 0))
        self.state.ready = True
        self.admin = str(bound)
        return self

    def __exit__(self, *exc: object) -> None:
        self.call(self.server.stop)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
        import http.client

        host, port = self.admin.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            payload = raw if raw is not None else (None if body is None else json.dumps(body).encode())
            conn.request(method, path, body=payload)
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()


@pytest.fixture
def api() -> Iterator[AdminThread]:
    with AdminThread() as server:
        yield server


def test_recv_base64_for_binary_payloads(api: AdminThread, capsys: pytest.CaptureFixture[str]) -> None:
    api.call(api.inbox.append, PEER_B, b"\xff\x00binary", 1.0)
    api.call(api.inbox.append, PEER_C, "héllo".encode(), 2.0)
    code, out, _ = run(["--admin", api.admin, "recv", "--count", "2", "--timeout", "2", "--json"], capsys)
    assert code == 0
    first, second = (json.loads(line) for line in out.splitlines())
    assert first == {
        "from": PEER_B.to_text(),
        "data": base64.b64encode(b"\xff\x00binary").decode(),
        "encoding": "base64",
        "ts": 1.0,
        "kind": "direct",
    }
    assert second == {"from": PEER_C.to_text(), "data": "héllo", "ts": 2.0, "kind": "direct"}
    assert len(api.inbox) == 0  # taken out


def test_messages_long_poll_waits_and_takes_in_order(api: AdminThread) -> None:
    def later() -> None:
        api.loop.call_later(0.2, api.inbox.append, PEER_B, b"late")

    api.call(api.inbox.append, PEER_B, b"early")
    api.call(later)
    status, body = api.request("GET", "/v1/messages?count=2&timeout=5")
    assert status == 200 and [m["data"] for m in body["messages"]] == ["early", "late"]
    status, body = api.request("GET", "/v1/messages?count=1&timeout=0.2")
    assert status == 200 and body["messages"] == []


def test_messages_count_takes_only_that_many(api: AdminThread) -> None:
    for i in range(3):
        api.call(api.inbox.append, PEER_B, f"m{i}".encode())
    assert [m["data"] for m in api.request("GET", "/v1/messages?count=2")[1]["messages"]] == ["m0", "m1"]
    assert [m["data"] for m in api.request("GET", "/v1/messages")[1]["messages"]] == ["m2"]


def test_inbox_overflow_drops_oldest_and_counts(api: AdminThread) -> None:
    for i in range(5):
        api.call(api.inbox.append, PEER_B, f"m{i}".encode())
    status = api.request("GET", "/v1/status")[1]
    assert status["inbox"] == {
        "queued": 3,
        "bytes": 6,
        "max_bytes": 64 * 1024 * 1024,
        "max_messages": 3,
        "received": 5,
        "dropped": 2,
        "deliveries_dropped": 0,
    }
    assert [m["data"] for m in api.request("GET", "/v1/messages")[1]["messages"]] == ["m2", "m3", "m4"]


def test_api_status_connect_ping_send_peers(api: AdminThread, capsys: pytest.CaptureFixture[str]) -> None:
    status, body = api.request("GET", "/v1/status")
    assert status == 200
    assert body["role"] == "node" and body["peer_id"] == PEER_A.to_text()
    assert body["addresses"] == ["127.0.0.1:7946"] and body["admin"] == api.admin
    assert body["connections"] == 0 and body["stats"] == {"datagrams_sent": 1}

    code, out, _ = run(["--admin", api.admin, "connect", f"{PEER_B}@127.0.0.1:9", "--json"], capsys)
    assert code == 0
    answer = json.loads(out)
    assert answer["peer_id"] == PEER_B.to_text() and answer["address"] == "127.0.0.1:9"
    assert answer["path"] == "direct" and answer["connect_ms"] >= 0

    code, out, _ = run(["--admin", api.admin, "ping", PEER_B.to_text(), "--count", "3", "--json"], capsys)
    assert code == 0
    ping = json.loads(out)
    assert ping["rtt_ms"] == 1.0 and ping["rtts_ms"] == [1.0, 1.0, 1.0] and ping["path"] == "direct"
    assert (ping["sent"], ping["received"]) == (3, 3)

    code, _, _ = run(["--admin", api.admin, "send", PEER_B.to_text(), "hi"], capsys)
    assert code == 0 and api.node.connections[PEER_B].sent == [b"hi"]
    status, body = api.request("POST", "/v1/send", {"peer": PEER_B.to_text(), "data_b64": "/wA="})
    assert status == 200 and body["bytes"] == 2 and api.node.connections[PEER_B].sent[-1] == b"\xff\x00"

    code, out, _ = run(["--admin", api.admin, "peers", "--json"], capsys)
    (peer,) = json.loads(out)["peers"]
    assert peer == {
        "peer_id": PEER_B.to_text(),
        "address": "127.0.0.1:9",
        "state": "connected",
        "path": "direct",
        "rtt_ms": 2.0,
    }


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/v1/ping", {"peer": PEER_C.to_text()}, 404, "peer_not_found"),
        ("POST", "/v1/send", {"peer": PEER_C.to_text(), "data": "x"}, 404, "peer_not_found"),
        ("POST", "/v1/ping", {"peer": "nope"}, 400, "invalid_peer_id"),
        ("POST", "/v1/ping", {}, 400, "bad_request"),
        ("POST", "/v1/ping", {"peer": PEER_C.to_text(), "count": "many"}, 400, "bad_request"),
        ("POST", "/v1/ping", [1, 2], 400, "bad_request"),
        ("POST", "/v1/connect", {"peer": f"{PEER_C}@127.0.0.1"}, 400, "invalid_address"),
        ("POST", "/v1/connect", {"peer": "127.0.0.1:9"}, 400, "bad_request"),
        ("POST", "/v1/send", {"peer": PEER_C.to_text()}, 400, "bad_request"),
        ("POST", "/v1/send", {"peer": PEER_C.to_text(), "data_b64": "!!"}, 400, "bad_request"),
        ("GET", "/v1/messages?count=-1", None, 400, "bad_request"),
        ("GET", "/v1/messages?timeout=x", None, 400, "bad_request"),
        ("GET", "/v1/nothing", None, 404, "not_found"),
        ("GET", "/v1/ping", None, 405, "method_not_allowed"),
    ],
)
def test_api_errors_are_json(
    api: AdminThread, method: str, path: str, body: Any, status: int, code: str
) -> None:
    got_status, got = api.request(method, path, body)
    assert (got_status, got["code"]) == (status, code)
    assert isinstance(got["error"], str) and "\n" not in got["error"] and "Traceback" not in got["error"]


def test_api_refuses_bad_json(api: AdminThread) -> None:
    status, body = api.request("POST", "/v1/connect", raw=b"{nope")
    assert (status, body["code"]) == (400, "bad_request")


def test_api_connect_failure(api: AdminThread, capsys: pytest.CaptureFixture[str]) -> None:
    api.node.unreachable.add(PEER_C)
    status, body = api.request("POST", "/v1/connect", {"peer": f"{PEER_C}@127.0.0.1:9"})
    assert (status, body["code"]) == (502, "connect_failed") and "timed out" in body["error"]
    code, _, err = run(["--admin", api.admin, "connect", f"{PEER_C}@127.0.0.1:9"], capsys)
    assert code == 1
    assert_one_error_line(err, "timed out")


def test_connect_timeout_reaches_the_node(api: AdminThread, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = run(["--admin", api.admin, "connect", f"{PEER_B}@127.0.0.1:9", "--timeout", "2.5"], capsys)
    assert code == 0 and api.node.connect_timeouts[-1] == 2.5
    code, _, _ = run(["--admin", api.admin, "connect", f"{PEER_C}@127.0.0.1:9"], capsys)
    assert code == 0 and api.node.connect_timeouts[-1] == 10.0  # the documented default
    assert api.node.connect_paths[-1] == "auto"


def test_connect_path_reaches_the_node(api: AdminThread, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = run(["--admin", api.admin, "connect", f"{PEER_B}@127.0.0.1:9", "--path", "relay"], capsys)
    assert code == 0 and api.node.connect_paths[-1] == "relay"
    with pytest.raises(SystemExit) as refused:
        cli.main(
            ["--admin", api.admin, "connect", f"{PEER_B}@127.0.0.1:9", "--path", "carrier-pigeon"], env={}
        )
    assert refused.value.code == 2 and "invalid choice" in capsys.readouterr().err
    code, _, _ = run(["--admin", api.admin, "connect", PEER_B.to_text(), "--path", "routed"], capsys)
    assert code == 0 and api.node.connect_paths[-1] == "routed"


def test_cli_and_api_ranges_are_the_same() -> None:
    from coremesh_node import admin

    assert admin.MAX_POLL_TIMEOUT == nodeapi.RECV_TIMEOUT_RANGE[1] == 300
    assert admin.MAX_PING_COUNT == nodeapi.PING_COUNT_RANGE[1] == 1000
    assert nodeapi.PING_TIMEOUT_RANGE == (0.01, 60) and nodeapi.PING_INTERVAL_RANGE == (0, 10)
    assert nodeapi.CONNECT_TIMEOUT_RANGE == (0.1, 300) and nodeapi.MAX_RECV_COUNT == 1_000_000


@pytest.mark.parametrize(
    ("argv", "method", "path", "body"),
    [
        (["recv", "--timeout", "{}"], "GET", "/v1/messages?timeout={}", None),
        (["recv", "--count", "{}", "--timeout", "0"], "GET", "/v1/messages?count={}", None),
        (["ping", PEER_B.to_text(), "--count", "{}"], "POST", "/v1/ping", {"count": "{}", "interval": "0"}),
        (["ping", PEER_B.to_text(), "--timeout", "{}"], "POST", "/v1/ping", {"timeout": "{}"}),
        (["ping", PEER_B.to_text(), "--interval", "{}"], "POST", "/v1/ping", {"interval": "{}"}),
        (["connect", f"{PEER_B}@127.0.0.1:9", "--timeout", "{}"], "POST", "/v1/connect", {"timeout": "{}"}),
    ],
)
def test_cli_refuses_exactly_what_the_api_refuses(
    api: AdminThread,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    method: str,
    path: str,
    body: dict[str, str] | None,
) -> None:
    """At each limit and just beyond it, the CLI (exit 2 before any request) and the API (400) agree."""
    flag = argv[argv.index("{}") - 1]
    low, high = {
        ("recv", "--timeout"): nodeapi.RECV_TIMEOUT_RANGE,
        ("recv", "--count"): (1, nodeapi.MAX_RECV_COUNT),
        ("ping", "--count"): nodeapi.PING_COUNT_RANGE,
        ("ping", "--timeout"): nodeapi.PING_TIMEOUT_RANGE,
        ("ping", "--interval"): nodeapi.PING_INTERVAL_RANGE,
        ("connect", "--timeout"): nodeapi.CONNECT_TIMEOUT_RANGE,
    }[(argv[0], flag)]
    step = 1 if isinstance(low, int) and isinstance(high, int) else 0.001
    api.node.connections[PEER_B] = FakeConnection(PEER_B, Address("127.0.0.1", 9))
    for value, ok in ((low, True), (high, True), (low - step, False), (high + step, False)):
        text = f"{value:g}" if isinstance(value, float) else str(value)
        if argv[0] == "recv" and flag == "--count" and value == low - step:
            continue  # the CLI's --count 0 means "all" (no count sent)
        if body is None:
            api.call(api.inbox.append, PEER_B, b"x")  # so that a long poll returns at once
            status, _ = api.request(method, path.format(text))
        else:
            request = {"peer": f"{PEER_B}@127.0.0.1:9" if argv[0] == "connect" else PEER_B.to_text()}
            request.update({k: v.format(text) for k, v in body.items()})
            status, _ = api.request(method, path, {k: _num(v) for k, v in request.items()})
        assert (status == 200) is ok, (value, status)
        if ok:
            continue
        with pytest.raises(SystemExit) as info:
            cli.main(["--admin", api.admin, *(a.format(text) for a in argv)], env={})
        assert info.value.code == 2, value
        assert_one_error_line(capsys.readouterr().err, flag)


def _num(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def test_health_and_readiness(api: AdminThread) -> None:
    assert api.request("GET", "/healthz") == (200, {"ok": True})
    assert api.request("GET", "/readyz") == (200, {"ready": True, "peer_id": PEER_A.to_text()})
    api.state.ready = False
    status, body = api.request("GET", "/readyz")
    assert (status, body["code"]) == (503, "not_ready")


def test_advertised_addresses_expand_wildcards() -> None:
    from coremesh_node.admin import advertised_addresses

    got = advertised_addresses([Address("0.0.0.0", 5)])
    assert got[0] == "127.0.0.1:5" and "0.0.0.0:5" not in got
    assert advertised_addresses([Address("192.0.2.1", 5)]) == ["192.0.2.1:5"]
    six = advertised_addresses([Address("::", 5)])
    assert "127.0.0.1:5" in six and "[::1]:5" in six and "[::]:5" not in six


# ------------------------------------------------------------------ a relay or a bootstrap behind --admin

RELAY_STATUS = {
    "role": "relay",
    "peer_id": None,
    "addresses": ["127.0.0.1:3478"],
    "listen": ["127.0.0.1:3478"],
    "admin": "127.0.0.1:9090",
    "version": "0.1.0",
    "uptime_s": 3.0,
    "connections": 2,
    "ready": True,
    "services": {
        "stun_turn": {
            "addresses": ["127.0.0.1:3478"],
            "udp": True,
            "tcp": True,
            "tls": False,
            "stats": {"allocations_current": 2},
        }
    },
    "stats": {"stun_turn.allocations_current": 2},
}
NOT_FOUND = (404, {"error": "GET /v1/peers: Not Found", "code": "not_found"})


def test_status_of_a_relay_shows_its_services_not_a_missing_peer_id(
    fake: tuple[str, Canned], capsys: pytest.CaptureFixture[str]
) -> None:
    admin, canned = fake
    canned.routes[("GET", "/v1/status")] = (200, RELAY_STATUS)
    code, out, err = run(["--admin", admin, "status"], capsys)
    assert code == 0 and err == ""
    assert "None" not in out and "peer_id" not in out
    assert "role         relay (stun_turn)" in out
    assert "stun/turn    127.0.0.1:3478 (udp, tcp)" in out and "allocations  2" in out
    with_id = {**RELAY_STATUS, "peer_id": PEER_A.to_text()}
    canned.routes[("GET", "/v1/status")] = (200, with_id)
    code, out, _ = run(["--admin", admin, "status"], capsys)
    assert code == 0 and f"peer_id      {PEER_A.to_text()} (the keyed relay's identity)" in out


@pytest.mark.parametrize(
    ("role", "argv", "lacks"),
    [
        ("relay", ["peers"], "it has no peers"),
        ("relay", ["lookup", PEER_B.to_text()], "it has no DHT"),
        ("relay", ["recv"], "it has no inbox"),
        ("bootstrap", ["netcheck"], "it does not run netcheck"),
        ("bootstrap", ["send", PEER_B.to_text(), "hi"], "it does not send messages"),
    ],
)
def test_a_command_the_service_does_not_offer_names_the_service(
    fake: tuple[str, Canned], capsys: pytest.CaptureFixture[str], role: str, argv: list[str], lacks: str
) -> None:
    admin, canned = fake
    canned.routes[("GET", "/v1/status")] = (200, {**RELAY_STATUS, "role": role})
    for method in ("GET", "POST"):
        for path in ("/v1/peers", "/v1/lookup", "/v1/messages", "/v1/netcheck", "/v1/send"):
            canned.routes[(method, path)] = NOT_FOUND
    code, out, err = run(["--admin", admin, *argv], capsys)
    assert code == 1 and out == ""
    assert_one_error_line(err, f"this is a coremesh-{role}, not a coremesh-node", lacks, "coremesh status")


def test_a_missing_endpoint_on_a_node_keeps_the_api_message(
    fake: tuple[str, Canned], capsys: pytest.CaptureFixture[str]
) -> None:
    admin, canned = fake
    canned.routes[("GET", "/v1/status")] = (200, STATUS)
    missing = {"error": "this node does not run netcheck", "code": "not_found"}
    canned.routes[("GET", "/v1/netcheck")] = (404, missing)
    code, _, err = run(["--admin", admin, "netcheck"], capsys)
    assert code == 1
    assert_one_error_line(err, "this node does not run netcheck")
