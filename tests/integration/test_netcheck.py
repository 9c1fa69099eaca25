"""Netcheck over real sockets: a real `coremesh-relay` process with an RFC 5780 alternate address
(127.0.0.2) on loopback, nodes in process and as `coremesh-node` processes driven by the `coremesh`
CLI. ("UDP blocked" behind a NAT that drops UDP: test_netcheck_natlab.py.)

Every process is stopped by its PID at teardown, also when a test fails.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from coremesh import MeshConfig, MeshNode
from coremesh.errors import NetcheckError

from .daemons import Nodes, assert_one_error_line, cli, free_port, http_get, stop_process

pytestmark = pytest.mark.integration
T = TypeVar("T")


def run(fn: Callable[[], Awaitable[T]], timeout: float = 60.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(fn(), timeout)

    return asyncio.run(bounded())


@dataclass
class Relay:
    proc: subprocess.Popen[bytes]
    stun: str  # HOST:PORT, UDP and TCP
    keyed: str  # tcp://HOST:PORT


def _free_pair() -> int:
    """A port P with P and P+1 free on UDP and TCP (the relay's RFC 5780 sockets use PORT+1)."""
    for _ in range(50):
        port = free_port(socket.SOCK_DGRAM)
        if port >= 65535:
            continue
        try:
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                for host in ("127.0.0.1", "127.0.0.2"):
                    for p in (port, port + 1):
                        with socket.socket(socket.AF_INET, kind) as s:
                            s.bind((host, p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair")


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[Relay]:
    port, keyed, admin = _free_pair(), free_port(socket.SOCK_STREAM), free_port(socket.SOCK_STREAM)
    log = (tmp_path / "relay.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "coremesh_relay",
            "--listen",
            f"127.0.0.1:{port}",
            "--alt-address",
            "127.0.0.2",
            "--keyed-listen",
            f"127.0.0.1:{keyed}",
            "--admin",
            f"127.0.0.1:{admin}",
            "--data-dir",
            str(tmp_path / "relay"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                pytest.fail(f"relay exited: {(tmp_path / 'relay.log').read_text()}")
            try:
                if http_get(f"127.0.0.1:{admin}", "/readyz", timeout=1.0)[0] == 200:
                    break
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                pytest.fail("relay not ready within 20s")
            time.sleep(0.05)
        yield Relay(proc, f"127.0.0.1:{port}", f"tcp://127.0.0.1:{keyed}")
    finally:
        stop_process(proc)
        log.close()


def test_a_node_without_nat_reports_no_nat_and_relay_latency(relay: Relay) -> None:
    async def body() -> None:
        config = MeshConfig(listen_addr="127.0.0.1:0", relays=(relay.stun,), keyed_relays=(relay.keyed,))
        async with MeshNode(config) as node:
            t0 = time.time()
            report = await node.netcheck()
            assert (report.mapping, report.filtering) == ("no-nat", "endpoint-independent")
            assert report.nat_type == "no NAT (open)"
            assert report.public_ipv4 == str(node.local_address) == report.local_address
            assert report.port_preserving is True and report.udp_blocked is False
            assert report.discovery_server == relay.stun and report.error is None
            kinds = {r.kind: r for r in report.relays}
            assert kinds["stun"].server == relay.stun and kinds["stun"].mapped == str(node.local_address)
            assert kinds["stun"].rtt_ms is not None and kinds["stun"].rtt_ms > 0
            assert kinds["keyed"].rtt_ms is not None and kinds["keyed"].rtt_ms > 0
            assert t0 - 5 <= report.ran_at <= time.time()
            # the last report comes back at once; refresh measures again
            assert await node.netcheck() is report
            fresh = await node.netcheck(refresh=True)
            assert fresh is not report and fresh.trigger == "manual" and fresh.ran_at >= report.ran_at
            assert fresh.mapping == "no-nat"

    run(body)


def test_a_dual_stack_node_measures_from_its_own_socket(relay: Relay) -> None:
    """The mapping that matters is the mesh socket's: each family's public address carries the
    node's own port (an IPv4 relay process, and an IPv6 STUN server in process on ::1)."""
    from coremesh_relay.stunturn import StunTurnService
    from coremesh_relay.stunturn_config import StunTurnConfig

    async def body() -> None:
        v6 = StunTurnService(StunTurnConfig(listen="[::1]:0"))  # type: ignore[arg-type]
        await v6.start()
        try:
            v6_server = str(v6.addresses[0])
            config = MeshConfig(listen_addr="[::]:0", stun_servers=(relay.stun, v6_server))
            async with MeshNode(config) as node:
                port = node.local_address.port
                report = await node.netcheck()
                assert report.public_ipv4 == f"127.0.0.1:{port}"
                assert report.public_ipv6 == f"[::1]:{port}"
                assert report.mapping == "no-nat" and report.port_preserving is True
                assert report.discovery_server == relay.stun  # IPv4, with RFC 5780
                assert [r.server for r in report.relays] == [relay.stun, v6_server]
                assert all(r.rtt_ms is not None and r.rtt_ms > 0 for r in report.relays)
        finally:
            await v6.stop()

    run(body)


def test_netcheck_runs_again_by_itself(relay: Relay) -> None:
    async def body() -> None:
        config = MeshConfig(listen_addr="127.0.0.1:0", stun_servers=(relay.stun,), netcheck_interval=1)
        async with MeshNode(config) as node:
            first = await node.netcheck()
            for _ in range(100):
                report = await node.netcheck()
                if report is not first:
                    break
                await asyncio.sleep(0.1)
            assert report is not first and report.trigger == "periodic"
            assert report.ran_at > first.ran_at and report.mapping == "no-nat"

    run(body)


def test_without_a_server_netcheck_says_what_to_configure() -> None:
    async def body() -> None:
        async with MeshNode(MeshConfig(listen_addr="127.0.0.1:0")) as node:
            with pytest.raises(NetcheckError, match="configure stun_servers or relays"):
                await node.netcheck()
        with pytest.raises(Exception, match="not started"):
            await node.netcheck()

    run(body)


def test_cli_netcheck_json_and_text(relay: Relay, tmp_path: Path) -> None:
    nodes = Nodes(tmp_path)
    try:
        node = nodes.start("a", "--relay", relay.stun, "--keyed-relay", relay.keyed)
        result = cli(node.admin, "netcheck", "--json")
        assert result.returncode == 0, result.stderr
        data = json.loads(result.stdout)
        assert data["nat_type"] == "no NAT (open)" and data["mapping"] == "no-nat"
        assert data["filtering"] == "endpoint-independent"
        assert data["public_ipv4"] == node.listen and data["port_preserving"] is True
        assert data["udp_blocked"] is False and data["hairpinning"] is None
        assert {r["kind"] for r in data["relays"]} == {"stun", "keyed"}
        assert all(r["rtt_ms"] > 0 for r in data["relays"])
        assert isinstance(data["ran_at"], float)
        text = cli(node.admin, "netcheck", "--refresh")
        assert text.returncode == 0, text.stderr
        assert "nat type        no NAT (open)" in text.stdout
        assert f"public ipv4     {node.listen}" in text.stdout
        assert "(manual," in text.stdout and relay.stun in text.stdout
        status, body = http_get(node.admin, "/v1/netcheck?refresh=maybe")
        assert status == 400 and "refresh" in body["error"]

        bare = nodes.start("b")
        assert_one_error_line(cli(bare.admin, "netcheck", "--json"), "needs a STUN server")
    finally:
        nodes.stop_all()
    assert_one_error_line(cli(f"127.0.0.1:{free_port(socket.SOCK_STREAM)}", "netcheck"), "cannot reach")


def test_a_dead_server_is_not_udp_blocked() -> None:
    async def body() -> None:
        dead = f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}"
        async with MeshNode(MeshConfig(listen_addr="127.0.0.1:0", stun_servers=(dead,))) as node:
            report = await node.netcheck()
            assert report.udp_blocked is None and report.nat_type == "unknown"
            assert report.public_ipv4 is None and report.error == "no STUN server answered over UDP"
            assert [(r.kind, r.rtt_ms) for r in report.relays] == [("stun", None), ("stun-tcp", None)]

    run(body)


def test_netcheck_shares_the_socket_with_a_turn_allocation() -> None:
    """Netcheck takes only its own STUN answers: the TURN client on the same socket keeps working."""
    from coremesh_relay.stunturn import StunTurnService
    from coremesh_relay.stunturn_config import StunTurnConfig

    async def body() -> None:
        service = StunTurnService(
            StunTurnConfig(
                listen="127.0.0.1:0",  # type: ignore[arg-type]
                alt_address="127.0.0.2",
                users={"alice": "s3cret"},
                allow_loopback_peers=True,
            )
        )
        await service.start()
        try:
            port = service.addresses[0].port
            config = MeshConfig(listen_addr="127.0.0.1:0", relays=(f"alice:s3cret@127.0.0.1:{port}",))
            async with MeshNode(config) as a, MeshNode(MeshConfig(listen_addr="127.0.0.1:0")) as b:
                report = await a.netcheck(refresh=True)
                assert report.mapping == "no-nat" and report.discovery_server == f"127.0.0.1:{port}"
                assert any(c["type"] == "relay" for c in a.candidates())
                conn = await a.connect(b.peer_id, b.local_address, path="relay")
                report = await a.netcheck(refresh=True)  # while TURN carries the connection
                assert report.filtering == "endpoint-independent"
                assert (await a.ping(b.peer_id)).path == "relay"
                await conn.send(b"still relayed")
                incoming = b.get_connection(a.peer_id)
                assert incoming is not None and await incoming.receive() == b"still relayed"
        finally:
            await service.stop()

    run(body)
