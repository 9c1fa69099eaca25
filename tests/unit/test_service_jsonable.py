"""One conversion to JSON for the services' logs and admin APIs (coremesh.service.jsonable)."""

from __future__ import annotations

import io
import json
import logging

from coremesh_node.admin import peer_info_json

from coremesh import ConnectionState, PeerInfo
from coremesh.addr import Address
from coremesh.endpoint.paths import DirectAddress, RelayAddress
from coremesh.identity import Identity
from coremesh.service.jsonable import BinaryEncoding, jsonable
from coremesh.service.logs import EventLogger, configure

PEER = Identity(bytes(range(32))).peer_id


def test_bytes_are_hex_or_base64_as_the_caller_says() -> None:
    assert jsonable(b"\xff\x00ab", binary="hex") == "ff006162"
    assert jsonable(b"\xff\x00ab", binary="base64") == "/wBhYg=="
    assert jsonable({"k": [b"\x01"]}, binary="hex") == {"k": ["01"]}


def test_library_values_become_their_text() -> None:
    value = {
        1: ConnectionState.CONNECTED,
        "peer": PEER,
        "address": Address("127.0.0.1", 7946),
        "paths": (DirectAddress(Address("::1", 5)), RelayAddress("tcp://127.0.0.1:1", PEER)),
        "set": frozenset({None}),
        "other": 1.5j,
    }
    binaries: tuple[BinaryEncoding, ...] = ("hex", "base64")
    for binary in binaries:
        got = jsonable(value, binary=binary)
        assert got == {
            "1": "connected",
            "peer": PEER.to_text(),
            "address": "127.0.0.1:7946",
            "paths": [str(DirectAddress(Address("::1", 5))), str(RelayAddress("tcp://127.0.0.1:1", PEER))],
            "set": [None],
            "other": "1.5j",
        }
        json.dumps(got)


def test_a_log_line_writes_bytes_in_hex() -> None:
    stream = io.StringIO()
    handler = configure("json", "info", stream)
    try:
        EventLogger("coremesh_test").info("test.event", data=b"\xab\xcd", address=Address("127.0.0.1", 1))
    finally:
        logging.getLogger().removeHandler(handler)
    line = json.loads(stream.getvalue())
    assert line["data"] == "abcd" and line["address"] == "127.0.0.1:1"


def test_the_admin_api_writes_a_peer_as_text() -> None:
    info = PeerInfo(
        peer_id=PEER,
        address=Address("127.0.0.1", 7946),
        state=ConnectionState.CONNECTED,
        path="direct",
        rtt=0.0125,
        initiator=True,
        connected_at=1.0,
        datagram_size=1200,
        bytes_sent=1,
        bytes_received=2,
        messages_sent=3,
        messages_received=4,
    )
    got = peer_info_json(info)
    assert got["peer_id"] == PEER.to_text() and got["address"] == "127.0.0.1:7946"
    assert got["state"] == "connected" and got["rtt_ms"] == 12.5 and "rtt" not in got
