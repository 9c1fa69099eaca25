"""TURN server core and client core in pairs, in memory, with time moved by hand."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from coremesh.addr import Address
from coremesh.stun.attributes import Attr
from coremesh.stun.credentials import rest_api_credentials
from coremesh.stun.message import Method, StunClass, StunMessage, decode, encode
from coremesh.turn import (
    Allocated,
    AllocationFailed,
    AllocationLost,
    CloseRelay,
    Effect,
    OpenRelay,
    PeerPolicy,
    PermissionFailed,
    SendFromRelay,
    SendToClient,
    TurnClient,
    TurnClientEvent,
    TurnServer,
    TurnServerConfig,
)

T0 = 5_000.0  # monotonic seconds: what lifetimes and timers are measured in
WALL0 = 1_700_000_000.0  # POSIX seconds at T0: what nonces and REST API expiries are measured in
SERVER = Address("198.51.100.1", 3478)
CLIENT = Address("192.0.2.10", 40000)
PEER = Address("203.0.113.77", 5000)
PEER2 = Address("203.0.113.78", 6000)


@dataclass
class Net:
    """A fake shell: binds relays (unless told a port is taken), delivers effects, keeps time."""

    server: TurnServer
    now: float = T0
    wall_offset: float = WALL0 - T0  # moved by hand to step the wall clock
    taken: set[int] = field(default_factory=set)
    open_relays: set[Address] = field(default_factory=set)
    to_peers: list[SendFromRelay] = field(default_factory=list)
    to_clients: list[SendToClient] = field(default_factory=list)

    @property
    def wall(self) -> float:
        return self.now + self.wall_offset

    def run(self, effects: list[Effect]) -> None:
        queue = list(effects)
        while queue:
            e = queue.pop(0)
            if isinstance(e, OpenRelay):
                ok = e.relay.port not in self.taken
                if ok:
                    self.open_relays.add(e.relay)
                queue.extend(self.server.confirm_relay(e.relay, ok, self.now))
            elif isinstance(e, CloseRelay):
                self.open_relays.discard(e.relay)
            elif isinstance(e, SendFromRelay):
                self.to_peers.append(e)
            else:
                self.to_clients.append(e)


@dataclass
class Pair:
    net: Net
    client: TurnClient
    addr: Address = CLIENT
    events: list[TurnClientEvent] = field(default_factory=list)
    received: list[tuple[Address, bytes]] = field(default_factory=list)

    @property
    def server(self) -> TurnServer:
        return self.net.server

    def pump(self) -> None:
        """Move datagrams both ways until quiet."""
        for _ in range(50):
            out = self.client.datagrams_to_send()
            mine = [s for s in self.net.to_clients if s.client == self.addr]
            self.net.to_clients = [s for s in self.net.to_clients if s.client != self.addr]
            if not out and not mine:
                break
            for data in out:
                self.net.run(
                    self.server.handle_client(
                        data, self.addr, SERVER, "udp", self.net.now, wall=self.net.wall
                    )
                )
            for s in mine:
                got = self.client.on_datagram(s.data, self.net.now)
                if got is not None:
                    self.received.append(got)
        while (ev := self.client.next_event()) is not None:
            self.events.append(ev)

    def advance(self, seconds: float, step: float = 1.0) -> None:
        end = self.net.now + seconds
        while self.net.now < end:
            targets = [t for t in (self.client.get_timer(), self.server.get_timer()) if t is not None]
            nxt = min([end, self.net.now + step, *targets])
            self.net.now = max(self.net.now, nxt)
            if (t := self.client.get_timer()) is not None and t <= self.net.now:
                self.client.handle_timer(self.net.now)
            if (t := self.server.get_timer()) is not None and t <= self.net.now:
                self.net.run(self.server.handle_timer(self.net.now))
            self.pump()

    def allocate(self) -> Allocated:
        self.client.allocate(self.net.now)
        self.pump()
        ev = self.events[-1]
        assert isinstance(ev, Allocated), ev
        return ev


_SEEDS = itertools.count(1)


def make_server(**kw: object) -> TurnServer:
    defaults: dict[str, object] = {"realm": "example.org", "users": {"alice": "secret", "bob": "hunter2"}}
    defaults.update(kw)
    config = TurnServerConfig(**defaults)  # type: ignore[arg-type]
    return TurnServer(config, rng=random.Random(7))


def make_pair(
    server: TurnServer | None = None,
    user: str = "alice",
    password: str = "secret",
    addr: Address = CLIENT,
    net: Net | None = None,
    **client_kw: object,
) -> Pair:
    net = net or Net(server or make_server(relay_ipv4="198.51.100.1", min_port=50000, max_port=50099))
    rng = random.Random(next(_SEEDS))
    client = TurnClient(SERVER, user, password, random_bytes=rng.randbytes, **client_kw)  # type: ignore[arg-type]
    return Pair(net, client, addr)


def peer_send(pair: Pair, data: bytes, peer: Address = PEER) -> None:
    relay = pair.client.relayed_address
    assert relay is not None
    pair.net.run(pair.server.handle_peer(data, relay, peer, pair.net.now))
    pair.pump()


# ------------------------------------------------------------------------------------ allocate


def test_allocate_with_401_nonce_dance() -> None:
    pair = make_pair()
    pair.client.allocate(pair.net.now)
    first = decode(pair.client.datagrams_to_send()[0])
    assert first.method == Method.ALLOCATE and not first.has(Attr.MESSAGE_INTEGRITY)
    effects = pair.server.handle_client(
        encode(first), CLIENT, SERVER, "udp", pair.net.now, wall=pair.net.wall
    )
    (challenge,) = effects
    assert isinstance(challenge, SendToClient)
    err = decode(challenge.data)
    assert err.msg_class is StunClass.ERROR and err.get_error() is not None
    assert err.get_error().code == 401  # type: ignore[union-attr]
    assert err.get_text(Attr.REALM) == "example.org" and err.get_text(Attr.NONCE)
    pair.client.on_datagram(challenge.data, pair.net.now)
    pair.pump()
    (ev,) = pair.events
    assert isinstance(ev, Allocated)
    assert ev.relayed_address.host == "198.51.100.1" and 50000 <= ev.relayed_address.port <= 50099
    assert ev.mapped_address == CLIENT and ev.lifetime == 600
    assert ev.relayed_address in pair.net.open_relays
    st = pair.server.stats()
    assert st["allocations_current"] == 1 and st["allocations_total"] == 1
    assert st["auth_challenges"] == 1 and st.get("auth_failures", 0) == 0


def test_wrong_password_is_401_and_counted() -> None:
    pair = make_pair(password="nope")
    pair.client.allocate(pair.net.now)
    pair.pump()
    (ev,) = pair.events
    assert isinstance(ev, AllocationFailed) and ev.code == 401
    assert pair.server.stats()["auth_failures"] == 1
    assert not pair.server.allocations


def test_unknown_user_is_401() -> None:
    pair = make_pair(user="mallory")
    pair.client.allocate(pair.net.now)
    pair.pump()
    assert isinstance(pair.events[0], AllocationFailed) and pair.events[0].code == 401


def test_rest_api_credentials_valid_and_expired() -> None:
    server = make_server(users={}, static_auth_secret="s3cret", relay_ipv4="198.51.100.1")
    net = Net(server)
    user, password = rest_api_credentials("s3cret", WALL0, 3600, "carol")
    good = make_pair(net=net, user=user, password=password)
    good.allocate()
    user2, password2 = rest_api_credentials("s3cret", WALL0, -10, "dave")  # expired 10 s ago
    bad = make_pair(net=net, user=user2, password=password2, addr=Address("192.0.2.11", 1))
    bad.client.allocate(net.now)
    bad.pump()
    assert isinstance(bad.events[0], AllocationFailed) and bad.events[0].code == 401
    forged = make_pair(net=net, user=user, password="forged", addr=Address("192.0.2.12", 1))
    forged.client.allocate(net.now)
    forged.pump()
    assert isinstance(forged.events[0], AllocationFailed) and forged.events[0].code == 401


def test_retransmitted_allocate_gets_the_same_answer_and_other_txn_437() -> None:
    pair = make_pair()
    pair.client.allocate(pair.net.now)
    (probe,) = pair.client.datagrams_to_send()
    (challenge,) = pair.server.handle_client(probe, CLIENT, SERVER, "udp", pair.net.now, wall=pair.net.wall)
    assert isinstance(challenge, SendToClient)
    pair.client.on_datagram(challenge.data, pair.net.now)
    (request,) = pair.client.datagrams_to_send()
    pair.net.run(pair.server.handle_client(request, CLIENT, SERVER, "udp", pair.net.now, wall=pair.net.wall))
    (answer,) = pair.net.to_clients
    # The same request again (a retransmission, the answer was lost): the same answer, no new relay.
    pair.net.to_clients.clear()
    pair.net.run(
        pair.server.handle_client(
            request, CLIENT, SERVER, "udp", pair.net.now + 0.5, wall=pair.net.wall + 0.5
        )
    )
    assert pair.net.to_clients == [answer] and len(pair.net.open_relays) == 1
    pair.net.to_clients.clear()
    pair.client.on_datagram(answer.data, pair.net.now)
    assert isinstance(pair.client.next_event(), Allocated)
    # Another Allocate on the same 5-tuple: 437.
    second = make_pair(net=pair.net)
    second.client.allocate(pair.net.now)
    second.pump()
    ev = second.events[-1]
    assert isinstance(ev, AllocationFailed) and ev.code == 437


def test_requested_transport_must_be_udp() -> None:
    pair = make_pair()
    msg = StunMessage(Method.ALLOCATE, StunClass.REQUEST, b"x" * 12)
    msg.add_uint(Attr.REQUESTED_TRANSPORT, 6)
    answer = _authenticated(pair, msg, Address("192.0.2.20", 1))
    assert answer.get_error() is not None and answer.get_error().code == 442  # type: ignore[union-attr]


def _authenticated(pair: Pair, msg: StunMessage, addr: Address, user: str = "alice") -> StunMessage:
    """Send ``msg`` with valid credentials from ``addr`` (getting a nonce first)."""
    from coremesh.stun.credentials import long_term_key

    probe = StunMessage(msg.method, StunClass.REQUEST, b"p" * 12)
    probe.add_text(Attr.SOFTWARE, "as long as a real client's")  # a 401 is at most 3x its request
    (ch,) = pair.server.handle_client(encode(probe), addr, SERVER, "udp", pair.net.now, wall=pair.net.wall)
    assert isinstance(ch, SendToClient)
    chal = decode(ch.data)
    nonce = chal.get_text(Attr.NONCE)
    assert nonce is not None
    msg.add_text(Attr.USERNAME, user)
    msg.add_text(Attr.REALM, "example.org")
    msg.add_text(Attr.NONCE, nonce)
    password = {"alice": "secret", "bob": "hunter2"}[user]
    key = long_term_key(user, "example.org", password)
    effects = pair.server.handle_client(
        encode(msg, integrity_key=key), addr, SERVER, "udp", pair.net.now, wall=pair.net.wall
    )
    pair.net.run(effects)
    replies = [e for e in pair.net.to_clients if e.client == addr]
    pair.net.to_clients = [e for e in pair.net.to_clients if e.client != addr]
    return decode(replies[-1].data)


def test_unknown_comprehension_required_attribute_is_420() -> None:
    pair = make_pair()
    msg = StunMessage(Method.ALLOCATE, StunClass.REQUEST, b"u" * 12)
    msg.add_uint(Attr.REQUESTED_TRANSPORT, 17)
    msg.add(0x7F01, b"\x00\x00\x00\x00")
    (reply,) = pair.server.handle_client(encode(msg), CLIENT, SERVER, "udp", pair.net.now, wall=pair.net.wall)
    assert isinstance(reply, SendToClient)
    answer = decode(reply.data)
    assert answer.get_error().code == 420  # type: ignore[union-attr]
    assert answer.get_unknown_attributes() == [0x7F01]
    # DONT-FRAGMENT is not supported: 420 too (RFC 8656 §7.2), and the client may retry without it.
    msg2 = StunMessage(Method.ALLOCATE, StunClass.REQUEST, b"v" * 12)
    msg2.add_uint(Attr.REQUESTED_TRANSPORT, 17)
    msg2.add(Attr.DONT_FRAGMENT)
    (reply2,) = pair.server.handle_client(
        encode(msg2), CLIENT, SERVER, "udp", pair.net.now, wall=pair.net.wall
    )
    assert isinstance(reply2, SendToClient)
    assert decode(reply2.data).get_unknown_attributes() == [Attr.DONT_FRAGMENT]


def test_stale_nonce_438_then_success() -> None:
    pair = make_pair(lifetime=3600)
    pair.allocate()
    # 650 s later the nonce (600 s) is stale: the permission refresh gets 438, then succeeds.
    pair.client.create_permission(PEER, pair.net.now)
    pair.pump()
    pair.net.now += 650
    pair.client.handle_timer(pair.net.now)  # the permission refresh is due (240 s)
    pair.pump()
    st = pair.server.stats()
    assert st["stale_nonces"] >= 1
    assert not any(isinstance(e, (AllocationLost, PermissionFailed)) for e in pair.events)
    assert pair.client.state.value == "allocated"


def test_wall_clock_steps_move_only_nonces_and_rest_api_expiry() -> None:
    """Lifetimes and the timer follow ``now`` (monotonic); ``wall`` only dates nonces and REST API
    usernames. A step of the wall clock neither expires the allocation nor extends its permission."""
    server = make_server(users={}, static_auth_secret="s3cret", relay_ipv4="198.51.100.1")
    net = Net(server)
    user, password = rest_api_credentials("s3cret", WALL0, 3600, "carol")
    pair = make_pair(net=net, user=user, password=password)
    ev = pair.allocate()
    pair.client.create_permission(PEER, net.now)
    pair.pump()
    timer = server.get_timer()
    # A day forward on the wall clock, nothing on the monotonic one: all lives on, same timer.
    net.wall_offset += 86_400
    assert server.get_timer() == timer
    net.run(server.handle_timer(net.now))
    peer_send(pair, b"after the step")
    assert pair.received[-1] == (PEER, b"after the step")
    assert server.stats()["allocations_current"] == 1
    # The hour-long REST API username is expired by the wall clock now: a new Allocate is refused.
    late = make_pair(net=net, user=user, password=password, addr=Address("192.0.2.13", 1))
    late.client.allocate(net.now)
    late.pump()
    assert isinstance(late.events[-1], AllocationFailed) and late.events[-1].code == 401
    # Two days back on the wall clock: the permission still ends 300 s (monotonic) after it was made
    # and the allocation 600 s after it was made, with nobody refreshing them.
    net.wall_offset -= 2 * 86_400
    net.now += 301
    net.run(server.handle_timer(net.now))
    assert server.handle_peer(b"late", ev.relayed_address, PEER, net.now) == []
    assert server.stats()["drop_no_permission"] == 1
    net.now += 300
    assert server.get_timer() is not None and server.get_timer() <= net.now  # type: ignore[operator]
    net.run(server.handle_timer(net.now))
    assert server.stats()["allocations_expired"] == 1 and ev.relayed_address not in net.open_relays


# ------------------------------------------------------------------------------ refresh, expiry


def test_refresh_keeps_allocation_alive_and_close_deletes() -> None:
    pair = make_pair(lifetime=600)
    ev = pair.allocate()
    pair.advance(3 * 600)
    assert pair.server.stats()["allocations_current"] == 1
    assert ev.relayed_address in pair.net.open_relays
    pair.client.close(pair.net.now)
    pair.pump()
    assert isinstance(pair.events[-1], AllocationLost)
    assert pair.server.stats()["allocations_current"] == 0
    assert ev.relayed_address not in pair.net.open_relays


def test_allocation_expires_without_refresh() -> None:
    pair = make_pair()
    ev = pair.allocate()
    server = pair.server
    assert server.get_timer() is not None
    pair.net.run(server.handle_timer(T0 + 599))
    assert server.stats()["allocations_current"] == 1
    pair.net.run(server.handle_timer(T0 + 601))
    assert server.stats()["allocations_current"] == 0 and server.stats()["allocations_expired"] == 1
    assert ev.relayed_address not in pair.net.open_relays


def test_lifetime_is_clamped() -> None:
    pair = make_pair(lifetime=100000)
    assert pair.allocate().lifetime == 3600
    small = make_pair(net=pair.net, addr=Address("192.0.2.30", 9), lifetime=10)
    assert small.allocate().lifetime == 600


# ----------------------------------------------------------------------- permissions, channels


def test_send_and_data_indications_both_ways() -> None:
    pair = make_pair()
    ev = pair.allocate()
    # Without a permission the server drops both ways.
    pair.net.run(
        pair.server.handle_client(
            pair.client.wrap(b"early", PEER), CLIENT, SERVER, "udp", pair.net.now, wall=pair.net.wall
        )
    )
    assert not pair.net.to_peers
    peer_send(pair, b"unsolicited")
    assert not pair.received
    pair.client.create_permission(PEER, pair.net.now)
    pair.pump()
    data = pair.client.wrap(b"hello peer", PEER)
    assert decode(data).method == Method.SEND
    pair.net.run(pair.server.handle_client(data, CLIENT, SERVER, "udp", pair.net.now, wall=pair.net.wall))
    (out,) = pair.net.to_peers
    assert out == SendFromRelay(b"hello peer", ev.relayed_address, PEER)
    peer_send(pair, b"hello client")
    assert pair.received == [(PEER, b"hello client")]
    # Permissions are per IP: another port of the same IP may send too.
    peer_send(pair, b"other port", Address(PEER.host, 9999))
    assert pair.received[-1] == (Address(PEER.host, 9999), b"other port")
    st = pair.server.stats()
    assert st["drop_no_permission"] == 2
    assert st["packets_to_peer"] == 1 and st["bytes_to_peer"] == 10
    assert st["packets_to_client"] == 2


def test_permission_expires_after_300s_unless_refreshed() -> None:
    pair = make_pair()
    pair.allocate()
    pair.client.create_permission(PEER, pair.net.now)
    pair.pump()
    # The client refreshes at 240 s; after 900 s the permission still holds.
    pair.advance(900, step=10)
    peer_send(pair, b"still here")
    assert pair.received == [(PEER, b"still here")]
    # A server-side permission without client refreshes ends after 300 s.
    raw = make_pair(net=pair.net, addr=Address("192.0.2.40", 1))
    raw.allocate()
    raw.client.create_permission(PEER2, raw.net.now)
    raw.pump()
    alloc = pair.server.allocations[next(k for k in pair.server.allocations if k.client == raw.addr)]
    assert alloc.has_permission(PEER2.host, raw.net.now + 299)
    assert not alloc.has_permission(PEER2.host, raw.net.now + 300)


def test_channel_bind_and_channel_data_both_ways() -> None:
    pair = make_pair()
    ev = pair.allocate()
    number = pair.client.bind_channel(PEER, pair.net.now)
    assert number == 0x4000
    assert decode(pair.client.wrap(b"x", PEER)).method == Method.SEND  # not confirmed yet
    pair.pump()
    assert pair.client.channel_for(PEER) == 0x4000
    data = pair.client.wrap(b"via channel", PEER)
    assert data[:2] == b"\x40\x00"
    pair.net.run(pair.server.handle_client(data, CLIENT, SERVER, "udp", pair.net.now, wall=pair.net.wall))
    assert pair.net.to_peers[-1] == SendFromRelay(b"via channel", ev.relayed_address, PEER)
    # From the peer: ChannelData to the client (the binding installed the permission).
    pair.net.run(pair.server.handle_peer(b"back", ev.relayed_address, PEER, pair.net.now))
    cd = pair.net.to_clients[-1]
    assert cd.data == b"\x40\x00\x00\x04back"
    pair.pump()
    assert pair.received == [(PEER, b"back")]
    # Channel bindings are refreshed by the client: still good after 30 minutes.
    pair.advance(1800, step=10)
    peer_send(pair, b"later")
    assert pair.received[-1] == (PEER, b"later")
    assert pair.server.stats()["channels_current"] == 1


def test_channel_expires_after_600s_then_data_indications() -> None:
    pair = make_pair(lifetime=3600)
    ev = pair.allocate()
    t = pair.net.now
    pair.client.bind_channel(PEER, t)
    pair.pump()
    alloc = next(iter(pair.server.allocations.values()))
    assert alloc.live_channel(0x4000, t + 599) is not None
    assert alloc.live_channel(0x4000, t + 600) is None
    # Refresh the permission by hand (not the channel): the peer's data comes as a Data indication.
    alloc.install_permission(PEER.host, t + 601)
    (out,) = pair.server.handle_peer(b"p", ev.relayed_address, PEER, t + 601)
    assert isinstance(out, SendToClient) and decode(out.data).method == Method.DATA
    # The number stays reserved for that peer for 5 minutes after it expired.
    assert alloc.bind_channel(0x4000, PEER2, t + 700) is not None
    alloc.expire(t + 901)
    assert alloc.bind_channel(0x4000, PEER2, t + 901) is None


def test_channel_bind_conflicts_and_range() -> None:
    pair = make_pair()
    pair.allocate()
    for number, peer, code in ((0x3FFF, PEER, 400), (0x8000, PEER, 400)):
        msg = StunMessage(Method.CHANNEL_BIND, StunClass.REQUEST, b"c" * 12)
        msg.add_uint(Attr.CHANNEL_NUMBER, number)
        msg.add_address(Attr.XOR_PEER_ADDRESS, peer)
        assert _authenticated(pair, msg, CLIENT).get_error().code == code  # type: ignore[union-attr]
    pair.client.bind_channel(PEER, pair.net.now)
    pair.pump()
    msg = StunMessage(Method.CHANNEL_BIND, StunClass.REQUEST, b"d" * 12)
    msg.add_uint(Attr.CHANNEL_NUMBER, 0x4000)
    msg.add_address(Attr.XOR_PEER_ADDRESS, PEER2)
    assert _authenticated(pair, msg, CLIENT).get_error().code == 400  # type: ignore[union-attr]


def test_requests_on_a_missing_allocation_are_437_and_other_user_441() -> None:
    pair = make_pair()
    msg = StunMessage(Method.CREATE_PERMISSION, StunClass.REQUEST, b"m" * 12)
    msg.add_address(Attr.XOR_PEER_ADDRESS, PEER)
    assert _authenticated(pair, msg, CLIENT).get_error().code == 437  # type: ignore[union-attr]
    pair.allocate()
    msg = StunMessage(Method.REFRESH, StunClass.REQUEST, b"n" * 12)
    assert _authenticated(pair, msg, CLIENT, user="bob").get_error().code == 441  # type: ignore[union-attr]


# --------------------------------------------------------------------------------- peer policy


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.1.1", "0.0.0.0", "224.0.0.1", "::1"],
)
def test_forbidden_peers_get_403(host: str) -> None:
    pair = make_pair()
    pair.allocate()
    pair.client.create_permission(host, pair.net.now)
    pair.pump()
    failed = [e for e in pair.events if isinstance(e, PermissionFailed)]
    if ":" in host:  # an IPv6 peer on an IPv4 allocation: 443 comes first
        assert failed and failed[0].code == 443
    else:
        assert failed and failed[0].code == 403
    assert pair.server.stats().get("forbidden_peers", 0) == (0 if ":" in host else 1)


def test_allowed_when_configured_and_denied_wins() -> None:
    policy = PeerPolicy.build(
        allow_loopback_peers=True, allowed_peer_ips=["10.0.0.0/8"], denied_peer_ips=["10.9.9.0-10.9.9.255"]
    )
    server = make_server(policy=policy, relay_ipv4="198.51.100.1")
    pair = make_pair(server=server)
    pair.allocate()
    for host in ("127.0.0.1", "10.1.2.3"):
        pair.client.create_permission(host, pair.net.now)
    pair.client.create_permission("10.9.9.9", pair.net.now)
    pair.pump()
    failed = [e for e in pair.events if isinstance(e, PermissionFailed)]
    assert [f.peer for f in failed] == ["10.9.9.9"] and failed[0].code == 403
    assert policy.reason("203.0.113.5") is None
    assert policy.reason("192.168.1.1") is not None
    assert PeerPolicy.build(denied_peer_ips=["203.0.113.0/24"]).reason("203.0.113.5") is not None


def test_policy_own_addresses() -> None:
    policy = PeerPolicy.build(own_ips=["203.0.113.1"])
    assert policy.reason("203.0.113.1") == "the relay's own address"
    assert policy.reason("::ffff:127.0.0.1") == "loopback"
    assert PeerPolicy.build(allow_loopback_peers=True).reason("127.0.0.5") is None


# ------------------------------------------------------------------------- quotas and capacity


def test_user_quota_486() -> None:
    net = Net(make_server(relay_ipv4="198.51.100.1", user_quota=2))
    for i in range(2):
        make_pair(net=net, addr=Address("192.0.2.50", 1000 + i)).allocate()
    third = make_pair(net=net, addr=Address("192.0.2.50", 1002))
    third.client.allocate(net.now)
    third.pump()
    assert isinstance(third.events[-1], AllocationFailed) and third.events[-1].code == 486
    make_pair(net=net, addr=Address("192.0.2.50", 1003), user="bob", password="hunter2").allocate()


def test_total_quota_486() -> None:
    net = Net(make_server(relay_ipv4="198.51.100.1", total_quota=1))
    make_pair(net=net).allocate()
    other = make_pair(net=net, addr=Address("192.0.2.60", 1), user="bob", password="hunter2")
    other.client.allocate(net.now)
    other.pump()
    assert isinstance(other.events[-1], AllocationFailed) and other.events[-1].code == 486


def test_port_range_exhaustion_508_and_reuse_after_delete() -> None:
    net = Net(make_server(relay_ipv4="198.51.100.1", min_port=50000, max_port=50002))
    pairs = [make_pair(net=net, addr=Address("192.0.2.70", 1 + i)) for i in range(3)]
    ports = {p.allocate().relayed_address.port for p in pairs}
    assert ports == {50000, 50001, 50002}
    extra = make_pair(net=net, addr=Address("192.0.2.70", 99))
    extra.client.allocate(net.now)
    extra.pump()
    assert isinstance(extra.events[-1], AllocationFailed) and extra.events[-1].code == 508
    pairs[0].client.close(net.now)
    pairs[0].pump()
    again = make_pair(net=net, addr=Address("192.0.2.70", 100))
    assert again.allocate().relayed_address.port in ports


def test_port_taken_by_another_process_is_retried() -> None:
    net = Net(
        make_server(relay_ipv4="198.51.100.1", min_port=50000, max_port=50003), taken={50000, 50001, 50002}
    )
    pair = make_pair(net=net)
    assert pair.allocate().relayed_address.port == 50003
    assert pair.server.stats()["relay_bind_failures"] >= 1
    net2 = Net(make_server(relay_ipv4="198.51.100.1", min_port=50000, max_port=50001), taken={50000, 50001})
    pair2 = make_pair(net=net2)
    pair2.client.allocate(net2.now)
    pair2.pump()
    assert isinstance(pair2.events[-1], AllocationFailed) and pair2.events[-1].code == 508
    assert not net2.server.allocations and not net2.open_relays


def test_even_port_and_reservation_token() -> None:
    net = Net(make_server(relay_ipv4="198.51.100.1", min_port=50000, max_port=50099))
    pair = make_pair(net=net)
    pair.allocate()
    msg = StunMessage(Method.ALLOCATE, StunClass.REQUEST, b"e" * 12)
    msg.add_uint(Attr.REQUESTED_TRANSPORT, 17)
    msg.add_even_port(True)
    addr = Address("192.0.2.80", 1)
    ok = _authenticated(pair, msg, addr)
    relay = ok.get_address(Attr.XOR_RELAYED_ADDRESS)
    token = ok.get(Attr.RESERVATION_TOKEN)
    assert relay is not None and relay.port % 2 == 0 and token is not None
    msg2 = StunMessage(Method.ALLOCATE, StunClass.REQUEST, b"f" * 12)
    msg2.add_uint(Attr.REQUESTED_TRANSPORT, 17)
    msg2.add(Attr.RESERVATION_TOKEN, token)
    ok2 = _authenticated(pair, msg2, Address("192.0.2.80", 2))
    assert ok2.get_address(Attr.XOR_RELAYED_ADDRESS) == Address(relay.host, relay.port + 1)
    msg3 = StunMessage(Method.ALLOCATE, StunClass.REQUEST, b"g" * 12)
    msg3.add_uint(Attr.REQUESTED_TRANSPORT, 17)
    msg3.add(Attr.RESERVATION_TOKEN, token)  # used up
    assert _authenticated(pair, msg3, Address("192.0.2.80", 3)).get_error().code == 508  # type: ignore[union-attr]


def test_failed_even_port_allocate_frees_its_reserved_port() -> None:
    # Two ports: 50000 (even, held by another process) and 50001. The EVEN-PORT Allocate (R bit)
    # reserves 50001 for its token, cannot bind 50000 and ends in 508: the token was never handed
    # out, so 50001 must be free for the next Allocate at once, not 30 s later.
    net = Net(make_server(relay_ipv4="198.51.100.1", min_port=50000, max_port=50001), taken={50000})
    pair = make_pair(net=net)
    msg = StunMessage(Method.ALLOCATE, StunClass.REQUEST, b"e" * 12)
    msg.add_uint(Attr.REQUESTED_TRANSPORT, 17)
    msg.add_even_port(True)
    err = _authenticated(pair, msg, Address("192.0.2.81", 1))
    assert err.get_error() is not None and err.get_error().code == 508  # type: ignore[union-attr]
    assert net.server.stats()["reservations_current"] == 0
    other = make_pair(net=net, addr=Address("192.0.2.81", 2))
    assert other.allocate().relayed_address.port == 50001


def test_even_port_allocate_ended_by_its_connection_frees_its_reserved_port() -> None:
    # Over TCP: the connection closes while the relay is still being bound (no answer sent yet).
    from coremesh.stun.credentials import long_term_key

    server = make_server(relay_ipv4="198.51.100.1", min_port=50000, max_port=50001)
    net = Net(server)
    probe = StunMessage(Method.ALLOCATE, StunClass.REQUEST, b"p" * 12)
    (ch,) = server.handle_client(encode(probe), CLIENT, SERVER, "tcp", net.now, wall=net.wall)
    assert isinstance(ch, SendToClient)
    msg = StunMessage(Method.ALLOCATE, StunClass.REQUEST, b"t" * 12)
    msg.add_uint(Attr.REQUESTED_TRANSPORT, 17)
    msg.add_even_port(True)
    msg.add_text(Attr.USERNAME, "alice")
    msg.add_text(Attr.REALM, "example.org")
    msg.add_text(Attr.NONCE, decode(ch.data).get_text(Attr.NONCE) or "")
    data = encode(msg, integrity_key=long_term_key("alice", "example.org", "secret"))
    (opened,) = server.handle_client(data, CLIENT, SERVER, "tcp", net.now, wall=net.wall)
    assert isinstance(opened, OpenRelay) and opened.port == 50000
    assert server.stats()["reservations_current"] == 1
    assert server.connection_closed(CLIENT, SERVER, "tcp", net.now) == []  # nothing was bound yet
    assert server.stats()["reservations_current"] == 0
    # Too late: the allocation is forgotten, so the socket the shell bound for it is closed again.
    assert server.confirm_relay(opened.relay, True, net.now) == [CloseRelay(opened.relay)]
    assert server.confirm_relay(opened.relay, False, net.now) == []


def test_dual_stack_allocation_and_family_errors() -> None:
    server = make_server(relay_ipv4="198.51.100.1", relay_ipv6="2001:db8::1", min_port=50000, max_port=50099)
    pair = make_pair(server=server, additional_ipv6=True)
    ev = pair.allocate()
    assert {a.host for a in ev.relayed_addresses} == {"198.51.100.1", "2001:db8::1"}
    v6only = make_pair(net=Net(make_server(relay_ipv4="198.51.100.1")), family=2)
    v6only.client.allocate(v6only.net.now)
    v6only.pump()
    assert isinstance(v6only.events[-1], AllocationFailed) and v6only.events[-1].code == 440
    half = make_pair(net=Net(make_server(relay_ipv4="198.51.100.1")), additional_ipv6=True)
    ev2 = half.allocate()
    assert len(ev2.relayed_addresses) == 1  # and an ADDRESS-ERROR-CODE for IPv6


# ---------------------------------------------------------------------------------- bandwidth


def test_bandwidth_cap_drops_and_counts() -> None:
    server = make_server(relay_ipv4="198.51.100.1", max_bps=100_000)
    pair = make_pair(server=server)
    ev = pair.allocate()
    pair.client.create_permission(PEER, pair.net.now)
    pair.pump()
    payload = bytes(1000)
    sent = 0
    for _ in range(200):  # 200 kB at one instant: the 100 kB burst passes, the rest is dropped
        effects = server.handle_client(
            pair.client.wrap(payload, PEER), CLIENT, SERVER, "udp", pair.net.now, wall=pair.net.wall
        )
        sent += sum(1 for e in effects if isinstance(e, SendFromRelay))
    assert 95 <= sent <= 101
    assert server.stats()["drop_bandwidth"] == 200 - sent
    # One second later the bucket has refilled by max_bps.
    later = pair.net.now + 1.0
    effects = server.handle_peer(payload, ev.relayed_address, PEER, later)
    assert effects and isinstance(effects[0], SendToClient)


# ---------------------------------------------------------------------------------- TCP shape


def test_channel_data_is_padded_over_tcp() -> None:
    server = make_server(relay_ipv4="198.51.100.1")
    net = Net(server)
    client = TurnClient(SERVER, "alice", "secret", random_bytes=random.Random(1).randbytes, transport="tcp")
    client.allocate(net.now)
    for _ in range(10):
        for data in client.datagrams_to_send():
            net.run(server.handle_client(data, CLIENT, SERVER, "tcp", net.now, wall=net.wall))
        for s in net.to_clients:
            client.on_datagram(s.data, net.now)
        net.to_clients.clear()
    ev = client.next_event()
    assert isinstance(ev, Allocated)
    client.bind_channel(PEER, net.now)
    for _ in range(3):
        for data in client.datagrams_to_send():
            net.run(server.handle_client(data, CLIENT, SERVER, "tcp", net.now, wall=net.wall))
        for s in net.to_clients:
            client.on_datagram(s.data, net.now)
        net.to_clients.clear()
    net.run(server.handle_peer(b"abcde", ev.relayed_address, PEER, net.now))
    assert net.to_clients[-1].data == b"\x40\x00\x00\x05abcde\x00\x00\x00"
    assert client.on_datagram(net.to_clients[-1].data, net.now) == (PEER, b"abcde")
    assert len(client.wrap(b"abcde", PEER)) == 12
    # A closed TCP connection ends the allocation.
    net.run(server.connection_closed(CLIENT, SERVER, "tcp", net.now))
    assert not server.allocations and not net.open_relays


# ------------------------------------------------------------------------------ client timing


def test_client_retransmits_then_gives_up_after_39_5_s() -> None:
    client = TurnClient(SERVER, "alice", "secret", random_bytes=random.Random(1).randbytes)
    client.allocate(0.0)
    sends = [0.0] if client.datagrams_to_send() else []
    now = 0.0
    while (t := client.get_timer()) is not None:
        now = t
        client.handle_timer(now)
        if client.datagrams_to_send():
            sends.append(now)
    assert sends == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert now == 39.5
    ev = client.next_event()
    assert isinstance(ev, AllocationFailed) and "timed out" in ev.reason


# --------------------------------------------------------------- caps on permissions and timers


class Signed:
    """Sends requests from ``addr`` with valid credentials, reusing one nonce (time by hand)."""

    def __init__(self, pair: Pair, addr: Address = CLIENT, user: str = "alice") -> None:
        from coremesh.stun.credentials import long_term_key

        self.pair, self.addr, self.user = pair, addr, user
        self.key = long_term_key(user, "example.org", {"alice": "secret", "bob": "hunter2"}[user])
        probe = StunMessage(Method.REFRESH, StunClass.REQUEST, b"p" * 12)
        probe.add_text(Attr.SOFTWARE, "as long as a real client's")  # a 401 is at most 3x its request
        (ch,) = pair.server.handle_client(
            encode(probe), addr, SERVER, "udp", pair.net.now, wall=pair.net.wall
        )
        assert isinstance(ch, SendToClient)
        nonce = decode(ch.data).get_text(Attr.NONCE)
        assert nonce is not None
        self.nonce = nonce
        self.rng = random.Random(99)

    def request(self, method: Method, *, peers: Sequence[Address] = (), **uints: int) -> StunMessage:
        msg = StunMessage(method, StunClass.REQUEST, self.rng.randbytes(12))
        for name, value in uints.items():
            msg.add_uint(Attr[name], value)
        for peer in peers:
            msg.add_address(Attr.XOR_PEER_ADDRESS, peer)
        msg.add_text(Attr.USERNAME, self.user)
        msg.add_text(Attr.REALM, "example.org")
        msg.add_text(Attr.NONCE, self.nonce)
        data = encode(msg, integrity_key=self.key)
        net = self.pair.net
        net.run(self.pair.server.handle_client(data, self.addr, SERVER, "udp", net.now, wall=net.wall))
        replies = [e for e in net.to_clients if e.client == self.addr]
        net.to_clients = [e for e in net.to_clients if e.client != self.addr]
        (reply,) = replies
        return decode(reply.data)


def _code(answer: StunMessage) -> int:
    err = answer.get_error()
    return 0 if err is None else err.code


def _hosts(start: int, n: int) -> list[Address]:
    return [Address(f"20.0.{i // 256}.{i % 256}", 1000) for i in range(start, start + n)]


def test_create_permission_with_too_many_peer_addresses_is_400() -> None:
    pair = make_pair()
    pair.allocate()
    signed = Signed(pair)
    assert _code(signed.request(Method.CREATE_PERMISSION, peers=_hosts(0, 16))) == 0
    assert _code(signed.request(Method.CREATE_PERMISSION, peers=_hosts(16, 17))) == 400
    stats = pair.server.stats()
    assert stats["peer_limit_refusals"] == 1 and stats["permissions_current"] == 16
    # A hundred in one request (the decoder itself stops at 128 attributes) installs nothing either.
    assert _code(signed.request(Method.CREATE_PERMISSION, peers=_hosts(100, 100))) == 400
    assert pair.server.stats()["permissions_current"] == 16


def test_permissions_per_allocation_are_capped_with_508() -> None:
    pair = make_pair(lifetime=3600)
    ev = pair.allocate()
    signed = Signed(pair)
    for start in range(0, 256, 16):
        assert _code(signed.request(Method.CREATE_PERMISSION, peers=_hosts(start, 16))) == 0
    assert pair.server.stats()["permissions_current"] == 256
    # One more host: 508 (capacity, RFC 8656 §9.2), nothing installed, counted.
    assert _code(signed.request(Method.CREATE_PERMISSION, peers=_hosts(256, 1))) == 508
    # A request mixing known and new hosts is refused as a whole.
    assert _code(signed.request(Method.CREATE_PERMISSION, peers=[*_hosts(0, 3), *_hosts(300, 1)])) == 508
    # ChannelBind installs a permission too, so a new host is refused the same way.
    answer = signed.request(Method.CHANNEL_BIND, peers=_hosts(400, 1), CHANNEL_NUMBER=0x4001)
    assert _code(answer) == 508
    stats = pair.server.stats()
    assert stats["permission_limit_refusals"] == 3 and stats["error_508"] == 3
    assert stats["permissions_current"] == 256 and stats["channels_current"] == 0
    # Refreshing (or binding a channel to) hosts that already have a permission still works.
    assert _code(signed.request(Method.CREATE_PERMISSION, peers=_hosts(0, 16))) == 0
    assert _code(signed.request(Method.CHANNEL_BIND, peers=_hosts(5, 1), CHANNEL_NUMBER=0x4000)) == 0
    assert not pair.server.handle_peer(b"x", ev.relayed_address, _hosts(256, 1)[0], pair.net.now)
    # Once permissions expire (300 s) there is room again.
    pair.net.now += 301
    assert _code(signed.request(Method.CREATE_PERMISSION, peers=_hosts(256, 1))) == 0
    assert pair.server.stats()["permissions_current"] <= 256


def test_permission_caps_are_configurable() -> None:
    server = make_server(relay_ipv4="198.51.100.1", max_permissions=2, max_peers_per_request=1)
    pair = make_pair(server=server)
    pair.allocate()
    signed = Signed(pair)
    assert _code(signed.request(Method.CREATE_PERMISSION, peers=_hosts(0, 2))) == 400
    assert _code(signed.request(Method.CREATE_PERMISSION, peers=_hosts(0, 1))) == 0
    assert _code(signed.request(Method.CREATE_PERMISSION, peers=_hosts(1, 1))) == 0
    assert _code(signed.request(Method.CREATE_PERMISSION, peers=_hosts(2, 1))) == 508
    with pytest.raises(ValueError, match="max_permissions"):
        TurnServerConfig(max_permissions=0)


def test_twenty_thousand_refreshes_keep_the_expiry_heap_bounded() -> None:
    pair = make_pair(lifetime=3600)
    pair.allocate()
    server = pair.server
    signed = Signed(pair)
    for i in range(20_000):
        pair.net.now += 0.01  # 200 s in all: the nonce (600 s) stays valid
        # Alternate long and short lifetimes: the expiry moves later, then earlier, again and again.
        answer = signed.request(Method.REFRESH, LIFETIME=600 if i % 2 else 3600)
        assert _code(answer) == 0
    live = len(server.allocations)
    assert live == 1
    assert len(server._expiries) <= 2 * live + 16  # was 20,001
    assert server.stats()["expiry_entries"] == len(server._expiries)
    # The last Refresh (600 s) wins, although earlier ones asked for 3600 s: expiry is exact.
    last = pair.net.now
    pair.net.run(server.handle_timer(last + 599))
    assert server.stats()["allocations_current"] == 1
    pair.net.run(server.handle_timer(last + 600))
    assert server.stats()["allocations_current"] == 0 and server.stats()["allocations_expired"] == 1
    pair.net.run(server.handle_timer(last + 3600))  # a stale entry left over fires harmlessly
    assert not server._expiries and server.get_timer() is None


def test_refresh_later_then_expiry_fires_at_the_new_time() -> None:
    pair = make_pair()
    pair.allocate()
    server = pair.server
    signed = Signed(pair)
    pair.net.now += 100
    assert _code(signed.request(Method.REFRESH, LIFETIME=3600)) == 0
    assert len(server._expiries) == 1  # no second entry for a later expiry
    pair.net.run(server.handle_timer(T0 + 600))  # the old entry fires, the allocation lives on
    assert server.stats()["allocations_current"] == 1 and len(server._expiries) == 1
    assert server.get_timer() is not None and server.get_timer() <= T0 + 100 + 3600  # type: ignore[operator]
    pair.net.run(server.handle_timer(T0 + 100 + 3599))
    assert server.stats()["allocations_current"] == 1
    pair.net.run(server.handle_timer(T0 + 100 + 3600))
    assert server.stats()["allocations_current"] == 0


def test_deleted_allocations_leave_no_heap_entries_behind() -> None:
    net = Net(make_server(relay_ipv4="198.51.100.1", min_port=50000, max_port=50099))
    for _ in range(300):
        pair = make_pair(net=net)
        pair.allocate()
        pair.client.close(net.now)
        pair.pump()
        assert isinstance(pair.events[-1], AllocationLost)
        net.now += 1
    assert not net.server.allocations
    assert len(net.server._expiries) <= 16  # was 300 until each one's lifetime passed


# ------------------------------------------------------------------------ garbage challenges


def _challenge_client(code: int, attrs: list[tuple[int, bytes]]) -> tuple[TurnClient, bytes]:
    client = TurnClient(SERVER, "alice", "secret", random_bytes=random.Random(3).randbytes)
    client.allocate(0.0)
    (request,) = client.datagrams_to_send()
    err = decode(request).response(StunClass.ERROR)
    err.add_error(code, "Unauthorized" if code == 401 else "Stale Nonce")
    err.attributes.extend(attrs)
    return client, encode(err)


def test_401_with_a_prohibited_realm_fails_the_allocation() -> None:
    # U+0001 is a control character SASLprep prohibits: long_term_key raises CredentialError.
    client, data = _challenge_client(401, [(Attr.REALM, b"ex\x01ample"), (Attr.NONCE, b"n0nce")])
    assert client.on_datagram(data, 0.1) is None  # used to raise CredentialError
    ev = client.next_event()
    assert isinstance(ev, AllocationFailed) and ev.code == 401 and "U+0001" in ev.reason
    assert client.state.value == "failed" and client.get_timer() is None
    assert client.realm is None and not client.datagrams_to_send()


def test_401_with_a_realm_too_long_to_send_back_fails_the_allocation() -> None:
    # 200 characters decode (at most 763 bytes) but cannot be encoded (at most 128 characters):
    # this used to leave the client ALLOCATING for ever with nothing pending.
    client, data = _challenge_client(401, [(Attr.REALM, b"r" * 200), (Attr.NONCE, b"n0nce")])
    client.on_datagram(data, 0.1)
    ev = client.next_event()
    assert isinstance(ev, AllocationFailed) and ev.code == 401
    assert client.state.value == "failed"


def test_malformed_error_response_is_dropped_and_the_request_still_times_out() -> None:
    # REALM not UTF-8: the response is dropped, the transaction stays and retransmits/times out.
    client2, data = _challenge_client(401, [(Attr.REALM, b"\xff\xfe"), (Attr.NONCE, b"n")])
    client2.on_datagram(data, 0.1)
    assert client2.stats()["drop_malformed"] == 1 and client2.next_event() is None
    now = 0.1
    while (t := client2.get_timer()) is not None:
        now = t
        client2.handle_timer(now)
    ev = client2.next_event()
    assert isinstance(ev, AllocationFailed) and "timed out" in ev.reason and now == 39.5


def test_external_ip_is_reported_with_the_relay_port() -> None:
    """coturn's --external-ip: the client is told PUBLIC:PORT, the relay is opened on the relay IP."""
    server = make_server(relay_ipv4="10.0.0.5", external_ipv4="192.0.2.50", min_port=50000, max_port=50099)
    pair = make_pair(server)
    ev = pair.allocate()
    (opened,) = pair.net.open_relays
    assert opened.host == "10.0.0.5"
    assert ev.relayed_address == Address("192.0.2.50", opened.port)
    assert ev.mapped_address == CLIENT


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"external_ipv4": "nope"}, ["external_ipv4", "not an IP"]),
        ({"external_ipv4": "2001:db8::1"}, ["external_ipv4", "IPv4"]),
        ({"external_ipv6": "192.0.2.1"}, ["external_ipv6", "IPv6"]),
    ],
)
def test_bad_external_ip_is_a_value_error(kw: dict[str, str], words: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        TurnServerConfig(**kw)  # type: ignore[arg-type]
    for word in words:
        assert word in str(info.value)
