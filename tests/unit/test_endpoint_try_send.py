"""``Endpoint.try_send``, the one call a Connection's send makes into the core: it checks the
connection once, queues the message or reports back-pressure, and raises the typed errors."""

from __future__ import annotations

import pytest

from coremesh.endpoint import events as ev
from coremesh.errors import ConnectionClosed, MessageTooLarge, PeerNotFound

from .test_endpoint import connect, pair


def test_unknown_peer_is_peer_not_found() -> None:
    _, a, b = pair()
    with pytest.raises(PeerNotFound):
        a.endpoint.try_send(b.endpoint.peer_id, b"x", 0.0)


def test_queues_until_the_send_buffer_is_full_then_waits_for_send_ready() -> None:
    net, a, b = pair(send_buffer_size=64 * 1024)
    connect(net, a, b)
    peer = b.endpoint.peer_id
    chunk = bytes(8 * 1024)
    queued = 0
    while a.endpoint.try_send(peer, chunk, net.clock.now):
        queued += 1
    assert queued == 8  # 64 KiB of 8 KiB messages: the eighth fills the buffer
    sent = a.endpoint.snapshot(peer)
    assert sent is not None and sent.messages_sent == queued  # the refused one was not queued
    assert not a.endpoint.try_send(peer, chunk, net.clock.now)
    net.flush()
    assert net.run_until(lambda: bool(a.of(ev.SendReady)), timeout=10)
    assert a.endpoint.try_send(peer, b"after the drain", net.clock.now)
    assert net.run_until(lambda: len(b.messages()) == queued + 1, timeout=10)
    assert b.messages()[-1] == b"after the drain"


def test_a_message_above_max_message_size_is_refused_typed() -> None:
    net, a, b = pair(max_message_size=1000)
    connect(net, a, b)
    with pytest.raises(MessageTooLarge):
        a.endpoint.try_send(b.endpoint.peer_id, bytes(1001), net.clock.now)


def test_a_closing_connection_is_connection_closed() -> None:
    net, a, b = pair()
    connect(net, a, b)
    a.endpoint.close(b.endpoint.peer_id, net.clock.now)
    with pytest.raises(ConnectionClosed) as info:
        a.endpoint.try_send(b.endpoint.peer_id, b"x", net.clock.now)
    assert info.value.reason == "closing"
