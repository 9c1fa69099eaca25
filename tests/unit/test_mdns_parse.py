"""mDNS announcements from the network are hints from strangers: any TXT, port and address set is
parsed into a DiscoveredPeer or dropped and counted, never raised."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from zeroconf import ServiceInfo

from coremesh.addr import Address
from coremesh.discovery.mdns import SERVICE_TYPE, MdnsDiscovery
from coremesh.identity import Identity

PEER = Identity.generate().peer_id


def info(props: dict[bytes, bytes | None], port: int | None, addresses: list[str]) -> ServiceInfo:
    return ServiceInfo(
        SERVICE_TYPE, f"x.{SERVICE_TYPE}", port=port, properties=props, parsed_addresses=addresses
    )


def test_a_good_announcement() -> None:
    service = MdnsDiscovery()
    peer = service._parse(
        info({b"id": PEER.to_text().encode(), b"v": b"1"}, 7946, ["192.0.2.7", "2001:db8::7"])
    )
    assert peer is not None and peer.peer_id == PEER and peer.source == "mdns"
    assert peer.addresses == (Address("192.0.2.7", 7946), Address("2001:db8::7", 7946))


def test_bad_announcements_are_counted() -> None:
    service = MdnsDiscovery()
    assert service._parse(info({b"v": b"1"}, 7946, ["192.0.2.7"])) is None
    assert service._parse(info({b"id": b"typo"}, 7946, ["192.0.2.7"])) is None
    assert service._parse(info({b"id": PEER.to_text().encode()}, 0, ["192.0.2.7"])) is None
    assert service._parse(info({b"id": PEER.to_text().encode()}, 7946, [])) is None
    assert dict(service.counters) == {
        "drop_no_id": 1,
        "drop_bad_id": 1,
        "drop_bad_port": 1,
        "drop_no_address": 1,
    }


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.binary(min_size=1, max_size=12), st.none() | st.binary(max_size=80), max_size=5),
    st.none() | st.integers(0, 65535),
    st.lists(st.ip_addresses().map(str), max_size=20),
)
def test_fuzz_any_announcement_is_parsed_or_dropped(
    props: dict[bytes, bytes | None], port: int | None, addresses: list[str]
) -> None:
    service = MdnsDiscovery()
    peer = service._parse(info(props, port, addresses))
    if peer is not None:
        assert len(peer.addresses) <= 16 and all(a.port == port for a in peer.addresses)
    else:
        assert sum(service.counters.values()) == 1
