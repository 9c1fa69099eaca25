"""A real ``coremesh-relay`` process on loopback: readiness, a STUN Binding over a raw UDP socket, the
Prometheus metrics, ``coremesh status --json`` against it, one-line config errors, clean SIGTERM.

Every process is started with ``sys.executable -m coremesh_relay``, waited on with a timeout, and
stopped by PID in teardown, also when a test fails.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from coremesh.addr import Address
from coremesh.turn import Allocated, TurnClient

from ..certs import make_cert
from .daemons import stop_process

pytestmark = pytest.mark.integration

START_TIMEOUT = 20.0
MAGIC_COOKIE = 0x2112A442
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
XOR_MAPPED_ADDRESS = 0x0020
OTHER_ADDRESS = 0x802C
RESPONSE_ORIGIN = 0x802B


def free_port(kind: int) -> int:
    """A port that was free a moment ago (bind to 0, read it, close)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_udp_tcp_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (STUN/TURN listens on both)."""
    for _ in range(50):
        port = free_port(socket.SOCK_DGRAM)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no port free for both UDP and TCP")


def http_get(admin: str, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://{admin}{path}", timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@dataclass
class RelayProcess:
    proc: subprocess.Popen[bytes]
    listen: str
    admin: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
        return out


class Relays:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[RelayProcess] = []

    def start(self, *extra: str, listen: str | None = None) -> RelayProcess:
        listen = listen or f"127.0.0.1:{free_udp_tcp_port()}"
        admin = f"127.0.0.1:{free_port(socket.SOCK_STREAM)}"
        log_path = self.tmp_path / f"relay{len(self.started)}.log"
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "coremesh_relay",
                    "--listen",
                    listen,
                    "--admin",
                    admin,
                    "--min-port",
                    "40000",
                    "--max-port",
                    "40999",
                    *extra,
                ],
                stdout=subprocess.DEVNULL,
                stderr=log_file,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        relay = RelayProcess(proc, listen, admin, log_path)
        self.started.append(relay)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"relay exited with {proc.returncode} before ready:\n{relay.log()}")
            with contextlib.suppress(OSError):
                status, _ = http_get(admin, "/readyz", timeout=1.0)
                if status == 200:
                    return relay
            if time.monotonic() > deadline:
                pytest.fail(f"relay not ready within {START_TIMEOUT}s:\n{relay.log()}")
            time.sleep(0.05)

    def stop_all(self) -> None:
        for relay in self.started:
            stop_process(relay.proc)


@pytest.fixture
def relays(tmp_path: Path) -> Iterator[Relays]:
    manager = Relays(tmp_path)
    try:
        yield manager
    finally:
        manager.stop_all()


def run_relay(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coremesh_relay", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


def assert_one_error_line(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("coremesh-relay: error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


# ----------------------------------------------------------------------------------- STUN by hand


def binding_request() -> tuple[bytes, bytes]:
    txid = os.urandom(12)
    return struct.pack("!HHI", BINDING_REQUEST, 0, MAGIC_COOKIE) + txid, txid


def attributes(response: bytes, txid: bytes) -> dict[int, bytes]:
    """The attributes of a Binding success response, after checking its header."""
    msg_type, length, cookie = struct.unpack_from("!HHI", response)
    assert msg_type == BINDING_SUCCESS, hex(msg_type)
    assert cookie == MAGIC_COOKIE and response[8:20] == txid
    assert len(response) == 20 + length and length % 4 == 0
    out: dict[int, bytes] = {}
    offset = 20
    while offset + 4 <= len(response):
        attr_type, attr_len = struct.unpack_from("!HH", response, offset)
        out.setdefault(attr_type, response[offset + 4 : offset + 4 + attr_len])
        offset += 4 + (attr_len + 3) // 4 * 4
    return out


def xor_address(value: bytes, txid: bytes) -> tuple[str, int]:
    """Decode an XOR-MAPPED-ADDRESS value (RFC 8489 §14.2)."""
    family = value[1]
    port = struct.unpack_from("!H", value, 2)[0] ^ (MAGIC_COOKIE >> 16)
    if family == 0x01:
        raw = struct.unpack_from("!I", value, 4)[0] ^ MAGIC_COOKIE
        return str(ipaddress.IPv4Address(raw)), port
    key = struct.pack("!I", MAGIC_COOKIE) + txid
    raw6 = bytes(a ^ b for a, b in zip(value[4:20], key, strict=True))
    return str(ipaddress.IPv6Address(raw6)), port


def plain_address(value: bytes) -> tuple[str, int]:
    """Decode a MAPPED-ADDRESS-style value (OTHER-ADDRESS, RESPONSE-ORIGIN): IPv4 only here."""
    assert value[1] == 0x01
    return str(ipaddress.IPv4Address(value[4:8])), struct.unpack_from("!H", value, 2)[0]


@dataclass
class Binding:
    ours: tuple[str, int]  # our socket's address
    mapped: tuple[str, int]  # the XOR-MAPPED-ADDRESS: the address the relay saw
    source: tuple[str, int]  # where the response came from
    attrs: dict[int, bytes]


def stun_binding(target: str) -> Binding:
    host, _, port = target.rpartition(":")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(1.0)
        request, txid = binding_request()
        for _ in range(5):
            s.sendto(request, (host, int(port)))
            try:
                response, source = s.recvfrom(2048)
            except TimeoutError:
                continue
            attrs = attributes(response, txid)
            assert XOR_MAPPED_ADDRESS in attrs, response.hex()
            return Binding(s.getsockname(), xor_address(attrs[XOR_MAPPED_ADDRESS], txid), source, attrs)
    raise AssertionError(f"no STUN Binding response from {target}")


# ----------------------------------------------------------------------------------------- tests


def listening_lines(relay: RelayProcess) -> list[str]:
    return [str(e["msg"]) for e in relay.events() if str(e.get("msg", "")).startswith("STUN/TURN listening")]


def credential_warnings(relay: RelayProcess) -> list[dict[str, Any]]:
    return [e for e in relay.events() if "no credentials" in str(e.get("msg", ""))]


def test_relay_without_credentials_warns_once_and_names_its_transports(relays: Relays) -> None:
    relay = relays.start()  # neither --user nor --static-auth-secret: TURN is unusable
    (warning,) = credential_warnings(relay)
    assert warning["level"] == "warning"
    assert "--user" in warning["msg"] and "--static-auth-secret" in warning["msg"], warning
    assert listening_lines(relay) == [f"STUN/TURN listening on udp {relay.listen}, tcp {relay.listen}"]
    secret = relays.start("--static-auth-secret", "s3cret", "--no-tcp")
    assert credential_warnings(secret) == []
    assert listening_lines(secret) == [f"STUN/TURN listening on udp {secret.listen}"]


def test_binding_metrics_status_and_clean_stop(relays: Relays) -> None:
    relay = relays.start("--realm", "test.example", "--user", "alice:secret")
    assert credential_warnings(relay) == []
    binding = stun_binding(relay.listen)
    assert binding.mapped == binding.ours
    assert OTHER_ADDRESS not in binding.attrs  # no --alt-address

    status, body = http_get(relay.admin, "/healthz")
    assert status == 200 and json.loads(body) == {"ok": True}

    status, body = http_get(relay.admin, "/metrics")
    assert status == 200
    text = body.decode()
    for name in (
        "coremesh_relay_build_info",
        'coremesh_relay_service_up{service="stun_turn"} 1.0',
        "coremesh_relay_allocations 0.0",
        "coremesh_relay_allocations_created_total 0.0",
        'coremesh_relay_relayed_bytes_total{direction="to_peer"} 0.0',
        'coremesh_relay_auth_failures_total{service="stun_turn"} 0.0',
        "coremesh_relay_stun_binding_requests_total 1.0",
        "process_resident_memory_bytes",
    ):
        assert name in text, f"{name!r} missing from /metrics:\n{text}"

    result = subprocess.run(
        [sys.executable, "-m", "coremesh", "--admin", relay.admin, "status", "--json"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    st = json.loads(result.stdout)
    assert st["role"] == "relay" and st["admin"] == relay.admin
    assert st["listen"] == [relay.listen] and "stun_turn" in st["services"]
    assert "keyed" not in st["services"]  # off unless --keyed-listen

    result = subprocess.run(
        [sys.executable, "-m", "coremesh", "--admin", relay.admin, "status"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0 and "relay" in result.stdout, result.stderr

    relay.proc.send_signal(signal.SIGTERM)
    assert relay.proc.wait(15) == 0, relay.log()
    events = [e.get("event") for e in relay.events()]
    assert "relay.ready" in events and "relay.stopping" in events and "relay.stopped" in events
    assert "Traceback" not in relay.log()


def test_keyed_relay_with_identity_and_tls(relays: Relays, tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    keyed = f"127.0.0.1:{free_port(socket.SOCK_STREAM)}"
    data_dir = tmp_path / "relay-id"
    args = ("--keyed-listen", keyed, "--data-dir", str(data_dir), "--cert", str(cert), "--pkey", str(key))
    relay = relays.start(*args, "--log-format", "text")
    status, body = http_get(relay.admin, "/v1/status")
    assert status == 200
    st = json.loads(body)
    peer_id = st["peer_id"]
    assert isinstance(peer_id, str) and len(peer_id) == 56
    assert (data_dir / "identity.key").is_file()
    assert st["listen"] == [relay.listen, keyed] and st["services"]["keyed"]["tls"] is True
    assert st["services"]["keyed"]["urls"] == [f"tls://{keyed}", f"wss://{keyed}/v1/relay"]
    status, body = http_get(relay.admin, "/metrics")
    text = body.decode()
    assert 'coremesh_relay_service_up{service="keyed"} 1.0' in text
    assert (
        "coremesh_relay_keyed_sessions 0.0" in text and "coremesh_relay_keyed_forwarded_bytes_total" in text
    )

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", int(keyed.rpartition(":")[2])), timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        assert tls.version() is not None  # the keyed relay speaks TLS with --cert/--pkey

    relay.proc.send_signal(signal.SIGINT)
    assert relay.proc.wait(15) == 0, relay.log()
    again = relays.start(*args)  # the identity is kept across restarts
    status, body = http_get(again.admin, "/readyz")
    assert status == 200 and json.loads(body)["peer_id"] == peer_id


def test_turn_allocate_without_credentials_is_challenged_and_counted(relays: Relays) -> None:
    relay = relays.start("--user", "alice:secret")
    host, _, port = relay.listen.rpartition(":")
    txid = os.urandom(12)
    requested_transport = struct.pack("!HHI", 0x0019, 4, 17 << 24)  # UDP
    allocate = (
        struct.pack("!HHI", 0x0003, len(requested_transport), MAGIC_COOKIE) + txid + requested_transport
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(2.0)
        s.sendto(allocate, (host, int(port)))
        response, _ = s.recvfrom(2048)
    assert struct.unpack_from("!H", response)[0] == 0x0113 and response[8:20] == txid  # Allocate error
    _, body = http_get(relay.admin, "/metrics")
    text = body.decode()
    assert "coremesh_relay_auth_challenges_total 1.0" in text, text
    assert 'coremesh_relay_auth_failures_total{service="stun_turn"} 0.0' in text  # a challenge, no failure


def drive_turn(
    client: TurnClient, sock: socket.socket, server: tuple[str, int], done: Callable[[], bool]
) -> None:
    """A blocking shell for the TURN client core: send its datagrams, feed it replies, run its timer."""
    deadline = time.monotonic() + 10.0
    while not done():
        assert time.monotonic() < deadline, "the TURN client did not finish in time"
        for data in client.datagrams_to_send():
            sock.sendto(data, server)
        with contextlib.suppress(TimeoutError):
            data, _ = sock.recvfrom(4096)
            got = client.on_datagram(data, time.monotonic())
            if got is not None:
                turn_inbox.append(got)
        timer = client.get_timer()
        if timer is not None and timer <= time.monotonic():
            client.handle_timer(time.monotonic())


turn_inbox: list[tuple[Address, bytes]] = []


def test_external_ip_is_advertised_while_the_relay_port_is_bound_locally(relays: Relays) -> None:
    """coturn's -X: the allocation reports 192.0.2.50:PORT (a documentation address, never sent to),
    and PORT is really bound on 127.0.0.1: a peer sending there reaches the client."""
    relay = relays.start(
        "--external-ip", "192.0.2.50/127.0.0.1", "--user", "alice:secret", "--allow-loopback-peers"
    )
    host, _, port = relay.listen.rpartition(":")
    server = (host, int(port))
    turn_inbox.clear()
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer,
    ):
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(0.05)
        peer.bind(("127.0.0.1", 0))
        peer.settimeout(2.0)
        client = TurnClient(Address(host, int(port)), "alice", "secret", random_bytes=os.urandom)
        client.allocate(time.monotonic())
        events: list[object] = []

        def allocated() -> bool:
            while (ev := client.next_event()) is not None:
                events.append(ev)
            return bool(events)

        drive_turn(client, sock, server, allocated)
        ev = events[0]
        assert isinstance(ev, Allocated), ev
        assert ev.relayed_address.host == "192.0.2.50" and 40000 <= ev.relayed_address.port <= 40999
        assert ev.mapped_address == Address(*sock.getsockname())
        peer_addr = Address(*peer.getsockname())
        client.create_permission(peer_addr, time.monotonic())
        drive_turn(client, sock, server, lambda: not client._txns)  # the CreatePermission answered
        peer.sendto(b"hello through the NAT", ("127.0.0.1", ev.relayed_address.port))
        drive_turn(client, sock, server, lambda: bool(turn_inbox))
        assert turn_inbox == [(peer_addr, b"hello through the NAT")]
        sock.sendto(client.wrap(b"and back", peer_addr), server)
        data, src = peer.recvfrom(2048)
        assert data == b"and back" and src == ("127.0.0.1", ev.relayed_address.port)
    _, body = http_get(relay.admin, "/v1/status")
    assert json.loads(body)["settings"]["external_ip"] == "192.0.2.50/127.0.0.1"


def free_rfc5780_port() -> int:
    """PORT such that PORT and PORT+1 are free for UDP on 127.0.0.1 and 127.0.0.2, and PORT for TCP."""
    for _ in range(100):
        port = free_port(socket.SOCK_DGRAM)
        if port >= 65535:
            continue
        socks: list[socket.socket] = []
        try:
            for host, p, kind in (
                ("127.0.0.1", port + 1, socket.SOCK_DGRAM),
                ("127.0.0.2", port, socket.SOCK_DGRAM),
                ("127.0.0.2", port + 1, socket.SOCK_DGRAM),
                ("127.0.0.1", port, socket.SOCK_STREAM),
            ):
                sock = socket.socket(socket.AF_INET, kind)
                socks.append(sock)
                sock.bind((host, p))
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
        return port
    raise RuntimeError("no free port pair for RFC 5780")


def test_alt_address_answers_rfc5780(relays: Relays) -> None:
    port = free_rfc5780_port()
    relay = relays.start("--alt-address", "127.0.0.2", listen=f"127.0.0.1:{port}")
    primary = stun_binding(relay.listen)
    assert primary.mapped == primary.ours and primary.source == ("127.0.0.1", port)
    assert plain_address(primary.attrs[OTHER_ADDRESS]) == ("127.0.0.2", port + 1)
    assert plain_address(primary.attrs[RESPONSE_ORIGIN]) == ("127.0.0.1", port)
    for target in (f"127.0.0.2:{port + 1}", f"127.0.0.2:{port}", f"127.0.0.1:{port + 1}"):
        binding = stun_binding(target)
        host, _, p = target.rpartition(":")
        assert binding.mapped == binding.ours and binding.source == (host, int(p)), target
    status, body = http_get(relay.admin, "/v1/status")
    assert status == 200
    services = json.loads(body)["services"]
    assert services["stun_turn"]["alt_address"] == "127.0.0.2"
    assert f"127.0.0.2:{port + 1}" in services["stun_turn"]["addresses"]


@pytest.mark.parametrize(
    ("args", "env", "words"),
    [
        (["--bogus"], {}, ["--bogus"]),
        (["--min-port", "x"], {}, ["--min-port"]),
        (["--listen", "127.0.0.1"], {}, ["--listen", "HOST:PORT"]),
        (["--no-udp", "--no-tcp"], {}, ["--no-udp", "--no-tcp"]),
        (["--admin", "192.0.2.1:9641"], {}, ["loopback"]),
        ([], {"COREMESH_RELAY_MAX_BPS": "fast"}, ["COREMESH_RELAY_MAX_BPS"]),
        (["--config", "/nonexistent/relay.toml"], {}, ["not found"]),
    ],
)
def test_bad_configuration_is_one_line_and_exit_2(
    args: list[str], env: dict[str, str], words: list[str]
) -> None:
    assert_one_error_line(run_relay(*args, env=env), *words)


def test_listen_address_in_use_is_one_line_and_exit_1(relays: Relays) -> None:
    relay = relays.start()
    admin = f"127.0.0.1:{free_port(socket.SOCK_STREAM)}"
    result = run_relay("--listen", relay.listen, "--admin", admin)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("coremesh-relay: error: ")]
    assert len(errors) == 1 and "in use" in errors[0], result.stderr


def test_help_and_version() -> None:
    result = run_relay("--help")
    assert result.returncode == 0
    for flag in ("--listen", "--alt-address", "--realm", "--user", "--static-auth-secret", "--keyed-listen"):
        assert flag in result.stdout
    result = run_relay("--version")
    assert result.returncode == 0 and result.stdout.startswith("coremesh-relay ")
