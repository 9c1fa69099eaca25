"""Why a connect failed reaches the caller: a node with another identity at the address
(``AuthenticationFailed``), no path through the NATs (``NatTraversalFailed``), a TURN relay's refusal
(its 403, by name), and a timeout that bounds the whole call.

In-process nodes and relay services on 127.0.0.1 (real sockets, public API), then the same over real
``coremesh-relay`` / ``coremesh-node`` processes and the ``coremesh`` CLI.
"""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any, TypeVar

import pytest
from coremesh_relay.keyed import KeyedRelayConfig, KeyedRelayServer
from coremesh_relay.stunturn import StunTurnService
from coremesh_relay.stunturn_config import StunTurnConfig

from coremesh import (
    AuthenticationFailed,
    ConnectionEvent,
    ConnectionFailed,
    ConnectionState,
    Identity,
    MeshConfig,
    MeshNode,
    NatTraversalFailed,
)
from coremesh.discovery import StaticDiscovery

from .aio import eventually, run
from .daemons import Node, Nodes, assert_one_error_line, cli, cli_json, free_port

T = TypeVar("T")
LOOP = "127.0.0.1:0"


def refusal(turn_port: int) -> str:
    """What the node says when the relay's default peer policy refuses a loopback peer."""
    return (
        f"TURN relay 127.0.0.1:{turn_port} refused permission for 127.0.0.1: "
        "403 Forbidden (peer address not allowed)"
    )


class Silent:
    """A UDP port that takes every datagram and answers none: a peer hidden behind a NAT that drops
    unsolicited packets, as seen from outside."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def silent() -> Iterator[Silent]:
    port = Silent()
    try:
        yield port
    finally:
        port.close()


# -- another identity at the address --------------------------------------------------------------


def test_a_node_with_another_identity_at_the_address_fails_authentication() -> None:
    async def body() -> None:
        config = MeshConfig(listen_addr=LOOP)
        async with MeshNode(config) as a, MeshNode(config) as b, MeshNode(config) as c:
            with pytest.raises(AuthenticationFailed) as caught:
                await a.connect(c.peer_id, b.local_address, timeout=5.0)
            message = str(caught.value)
            assert f"the node at {b.local_address} is {b.peer_id}, not {c.peer_id}" in message
            assert isinstance(caught.value, ConnectionFailed)  # code catching a failed connect still does
            assert a.get_peers() == [] and b.get_peers() == []
            # The address's real identity still connects afterwards.
            assert (await a.connect(b.peer_id, b.local_address)).peer_id == b.peer_id

    run(body)


def test_a_connect_by_peer_id_skips_an_address_now_used_by_another_node() -> None:
    """Discovered addresses go stale: the one another node now listens at is skipped, named, and
    when it is the only one the connect fails authentication."""

    async def body() -> None:
        config = MeshConfig(listen_addr=LOOP)
        async with MeshNode(config) as b, MeshNode(config) as c:
            stale_first = StaticDiscovery([(c.peer_id, [b.local_address, c.local_address])])
            async with MeshNode(config).with_discovery(stale_first) as a:
                assert (await a.connect(c.peer_id, timeout=5.0)).peer_id == c.peer_id
            only_stale = StaticDiscovery([(c.peer_id, [b.local_address])])
            async with MeshNode(config).with_discovery(only_stale) as a:
                with pytest.raises(AuthenticationFailed) as caught:
                    await a.connect(c.peer_id, timeout=5.0)
                assert f"the node at {b.local_address} is {b.peer_id}, not {c.peer_id}" in str(caught.value)

    run(body)


def test_with_a_relay_a_stale_address_does_not_end_the_connect() -> None:
    """Another node now listens at the address we have for the peer, but a keyed relay reaches the
    peer: path=auto goes on through the relay, and says why it is relayed."""

    async def body() -> None:
        keyed = KeyedRelayServer(KeyedRelayConfig(listen=LOOP))
        await keyed.start()
        try:
            url = f"tcp://{keyed.address}"
            config = MeshConfig(listen_addr=LOOP, keyed_relays=(url,), dht=False)
            async with (
                MeshNode(config) as a,
                MeshNode(config) as c,
                MeshNode(MeshConfig(listen_addr=LOOP, dht=False)) as other,
            ):
                await eventually(
                    lambda: all(n.relay_status()["keyed"][url]["registered"] for n in (a, c)),
                    what="both nodes registered at the keyed relay",
                )
                conn = await a.connect(c.peer_id, other.local_address, timeout=5.0)
                assert conn.peer_id == c.peer_id and conn.path == "relay"
                ping = await a.ping(c.peer_id)
                assert ping.reason is not None, ping
                assert f"the node at {other.local_address} is {other.peer_id}" in ping.reason
                # Without a relay to fall back on, the same stale address is an authentication failure.
                async with MeshNode(MeshConfig(listen_addr=LOOP, dht=False)) as lone:
                    with pytest.raises(AuthenticationFailed):
                        await lone.connect(c.peer_id, other.local_address, timeout=5.0)
        finally:
            await keyed.stop()

    run(body)


# -- the timeout bounds the whole call ------------------------------------------------------------


def test_connect_gives_up_at_its_timeout_with_every_relay_tried(silent: Silent) -> None:
    """Direct, then TURN (channel bound), then the keyed relay: nobody answers. The call ends at its
    own timeout, not at the node's (much longer) connect_timeout, and leaves no attempt running."""

    async def body() -> None:
        turn = StunTurnService(
            StunTurnConfig(listen=LOOP, users={"alice": "s3cret"}, allow_loopback_peers=True)
        )
        keyed = KeyedRelayServer(KeyedRelayConfig(listen=LOOP))
        await turn.start()
        await keyed.start()
        try:
            config = MeshConfig(
                listen_addr=LOOP,
                connect_timeout=60.0,
                relays=(f"alice:s3cret@127.0.0.1:{turn.addresses[0].port}",),
                keyed_relays=(f"tcp://{keyed.address}",),
            )
            async with MeshNode(config) as a:
                assert a.relay_status()["turn"] and a.relay_status()["keyed"]
                nobody = Identity.generate().peer_id
                events: list[ConnectionEvent] = []
                a.on_connection(events.append)
                loop = asyncio.get_running_loop()
                timeout = 6.0
                started = loop.time()
                with pytest.raises(ConnectionFailed) as caught:
                    await a.connect(nobody, silent.address, timeout=timeout)
                elapsed = loop.time() - started
                # The attempt is over when the call returns: its end was announced, nothing lingers
                # (it used to go on retrying through the relays until connect_timeout).
                assert [e.state for e in events if e.peer_id == nobody][-1] is ConnectionState.FAILED
                assert a.get_connection(nobody) is None
                assert "within 6s" in str(caught.value)
                # Never early. That it ends at the deadline to the instant is shown in virtual time
                # (tests/unit/test_connect_deadline.py): no wall-time bound on a loaded machine.
                assert elapsed >= timeout, elapsed
        finally:
            await keyed.stop()
            await turn.stop()

    run(body)


# -- TURN refusals and NAT traversal --------------------------------------------------------------


def test_a_turn_refusal_is_named_in_the_error_of_a_relayed_connect() -> None:
    async def body() -> None:
        turn = StunTurnService(StunTurnConfig(listen=LOOP, users={"alice": "s3cret"}))  # default policy
        await turn.start()
        try:
            port = turn.addresses[0].port
            config = MeshConfig(listen_addr=LOOP, relays=(f"alice:s3cret@127.0.0.1:{port}",))
            async with MeshNode(config) as a, MeshNode(MeshConfig(listen_addr=LOOP)) as b:
                assert [t["allocated"] for t in a.relay_status()["turn"].values()] == [True]
                with pytest.raises(ConnectionFailed) as caught:
                    await a.connect(b.peer_id, b.local_address, path="relay", timeout=3.0)
                assert refusal(port) in str(caught.value)
                assert turn.stats().get("forbidden_peers", 0) >= 1
        finally:
            await turn.stop()

    run(body)


def test_no_direct_answer_and_a_refusing_relay_is_a_failed_nat_traversal(silent: Silent) -> None:
    """The peer does not answer directly (its address drops our packets, as a NAT would) and the
    only relay refuses the peer: no path remains, and the error says why."""

    async def body() -> None:
        turn = StunTurnService(StunTurnConfig(listen=LOOP, users={"alice": "s3cret"}))
        await turn.start()
        try:
            port = turn.addresses[0].port
            config = MeshConfig(listen_addr=LOOP, relays=(f"alice:s3cret@127.0.0.1:{port}",))
            async with MeshNode(config) as a, MeshNode(MeshConfig(listen_addr=LOOP)) as b:
                with pytest.raises(NatTraversalFailed) as caught:
                    await a.connect(b.peer_id, silent.address, timeout=2.0)
                assert f"no handshake response from {silent.address} within 2s" in str(caught.value)
                assert refusal(port) in str(caught.value)
        finally:
            await turn.stop()

    run(body)


def test_an_attempt_turn_carried_is_not_a_failed_nat_traversal(silent: Silent) -> None:
    """TURN carried the initiation (a permission and a channel for the peer) and nobody answered:
    the peer may just be offline, so this is a plain failed connect, not a NAT verdict, even when
    the keyed relay is down; and the TURN route carries the attempt until the deadline."""

    async def body() -> None:
        turn = StunTurnService(
            StunTurnConfig(listen=LOOP, users={"alice": "s3cret"}, allow_loopback_peers=True)
        )
        await turn.start()
        try:
            config = MeshConfig(
                listen_addr=LOOP,
                relays=(f"alice:s3cret@127.0.0.1:{turn.addresses[0].port}",),
                keyed_relays=(f"tcp://127.0.0.1:{free_port(socket.SOCK_STREAM)}",),  # nothing listens there
            )
            async with MeshNode(config) as a:
                with pytest.raises(ConnectionFailed) as caught:
                    await a.connect(Identity.generate().peer_id, silent.address, timeout=3.0)
                assert not isinstance(caught.value, NatTraversalFailed), caught.value
                assert "nor through the relay" in str(caught.value)
                assert turn.stats()["channels_current"] == 1  # TURN did carry it
        finally:
            await turn.stop()

    run(body)


def test_without_relays_a_silent_address_is_a_plain_connect_failure(silent: Silent) -> None:
    """Nothing beyond the direct attempt was possible: no claim about NATs."""

    async def body() -> None:
        async with MeshNode(MeshConfig(listen_addr=LOOP)) as a:
            with pytest.raises(ConnectionFailed) as caught:
                await a.connect(Identity.generate().peer_id, silent.address, timeout=1.0)
            assert not isinstance(caught.value, NatTraversalFailed | AuthenticationFailed)
            assert f"no handshake response from {silent.address} within 1s" in str(caught.value)

    run(body)


# -- the same over real processes and the CLI -----------------------------------------------------


def post(admin: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://{admin}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def start_relay(nodes: Nodes) -> tuple[Node, int, str]:
    """``coremesh-relay`` with its default peer policy (loopback refused), TURN user alice, and a
    keyed relay. Returns the process, its TURN port and the keyed relay's URL."""
    keyed_port = free_port(socket.SOCK_STREAM)
    relay = nodes.start(
        "relay",
        "--user",
        "alice:s3cret",
        "--keyed-listen",
        f"127.0.0.1:{keyed_port}",
        module="coremesh_relay",
    )
    return relay, int(relay.listen.rsplit(":", 1)[1]), f"tcp://127.0.0.1:{keyed_port}"


def test_cli_another_identity_at_the_address_is_an_authentication_failure(nodes: Nodes) -> None:
    a, b, c = nodes.start("a"), nodes.start("b"), nodes.start("c")
    result = cli(a.admin, "connect", "--timeout", "5", f"{c.peer_id}@{b.listen}")
    assert_one_error_line(
        result, "authentication failed", f"the node at {b.listen} is {b.peer_id}, not {c.peer_id}"
    )
    assert result.returncode == 1
    status, body = post(a.admin, "/v1/connect", {"peer": f"{c.peer_id}@{b.listen}", "timeout": 5})
    assert (status, body["code"]) == (502, "authentication_failed")


def test_cli_turn_refusal_reaches_connect_and_ping(nodes: Nodes, silent: Silent) -> None:
    _, turn_port, keyed_url = start_relay(nodes)
    turn = f"alice:s3cret@127.0.0.1:{turn_port}"
    a = nodes.start("a", "--relay", turn, "--keyed-relay", keyed_url)
    b = nodes.start("b", "--keyed-relay", keyed_url)
    only_turn = nodes.start("t", "--relay", turn)

    # TURN alone, relay path asked for: the relay's 403 is the error.
    result = cli(only_turn.admin, "connect", "--path", "relay", "--timeout", "3", f"{b.peer_id}@{b.listen}")
    assert_one_error_line(result, refusal(turn_port))

    # No direct answer (the address drops packets) and TURN refuses: a failed NAT traversal.
    result = cli(only_turn.admin, "connect", "--timeout", "2", f"{b.peer_id}@{silent.address}")
    assert_one_error_line(
        result, f"no handshake response from {silent.address} within 2s", refusal(turn_port)
    )
    status, body = post(
        only_turn.admin, "/v1/connect", {"peer": f"{b.peer_id}@{silent.address}", "timeout": 2}
    )
    assert (status, body["code"]) == (502, "nat_traversal_failed")
    assert refusal(turn_port) in body["error"]

    # TURN refuses, the keyed relay carries it: ping says why the connection is not on TURN.
    connected = cli_json(
        a.admin, "connect", "--path", "relay", "--timeout", "10", f"{b.peer_id}@{b.listen}", "--json"
    )
    assert connected["path"] == "relay"
    ping = cli_json(a.admin, "ping", b.peer_id, "--json")
    assert ping["via"] == "keyed"
    assert refusal(turn_port) in ping["reason"]


def test_cli_connect_gives_up_at_its_timeout_and_says_what_it_tried(nodes: Nodes, silent: Silent) -> None:
    """``coremesh connect --timeout 2`` to an address where nothing answers, with a keyed relay to
    fall back to: the node gives up at its 2 s deadline and says what it tried (it used to retry
    past it, for connect_timeout, and answer a bare "timed out" well after 2 s)."""
    _, _, keyed_url = start_relay(nodes)
    a = nodes.start("a", "--keyed-relay", keyed_url, "--connect-timeout", "60s")
    nobody = Identity.generate().peer_id
    status, body = post(a.admin, "/v1/connect", {"peer": f"{nobody}@{silent.address}", "timeout": 2})
    assert (status, body["code"]) == (502, "connect_failed"), body
    assert "within 2s" in body["error"]
    result = cli(a.admin, "connect", "--timeout", "2", f"{nobody}@{silent.address}")
    assert_one_error_line(result, f"no handshake response from {silent.address} within 2s")
