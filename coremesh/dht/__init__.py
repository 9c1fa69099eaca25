"""Kademlia DHT (sans-IO): signed peer records, routing table, iterative lookups, the node core.

Its asyncio shell is :mod:`coremesh.aio.dht`. See docs/dht.md for the protocol, the configuration
and the simulator figures.
"""

from __future__ import annotations

from .config import DhtConfig
from .events import BootstrapFinished, Event, LookupFinished, OwnRecordRenewed, PublishFinished
from .lookup import FINISHED, WAITING_AT_CAPACITY, ClosestPeersIter, Waiting
from .node import DhtNode
from .records import ADDRESS_KINDS, InvalidRecord, PeerRecord, RecordRejected
from .routing import RoutingTable, Update

__all__ = [
    "ADDRESS_KINDS",
    "FINISHED",
    "WAITING_AT_CAPACITY",
    "BootstrapFinished",
    "ClosestPeersIter",
    "DhtConfig",
    "DhtNode",
    "Event",
    "InvalidRecord",
    "LookupFinished",
    "OwnRecordRenewed",
    "PeerRecord",
    "PublishFinished",
    "RecordRejected",
    "RoutingTable",
    "Update",
    "Waiting",
]
