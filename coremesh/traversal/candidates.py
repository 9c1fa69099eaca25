"""Candidates and candidate pairs, with the priorities of RFC 8445 §5.1.2 and §6.1.2.3.

A node's checks leave from its one UDP socket (the birthday approach's probe sockets aside, see
``birthday.py``), so every local candidate shares one base: a pair is identified by the remote
address alone, and the local side only chooses the type preference that enters the pair's
priority (our best candidate of the same address family).
"""

from __future__ import annotations

import enum
import ipaddress
from typing import NamedTuple

from ..addr import Address


class CandidateType(enum.IntEnum):
    """Wire values of the candidate types."""

    HOST = 0
    SRFLX = 1  # server-reflexive: our address as a STUN/TURN server saw it
    PRFLX = 2  # peer-reflexive: the address a peer's check came from
    RELAY = 3  # a TURN relayed address
    PREDICTED = 4  # a guessed port of a sequential symmetric NAT


# RFC 8445 §5.1.2.2 recommended type preferences (predicted ports rank just above relayed).
TYPE_PREFERENCE = {
    CandidateType.HOST: 126,
    CandidateType.PRFLX: 110,
    CandidateType.SRFLX: 100,
    CandidateType.PREDICTED: 10,
    CandidateType.RELAY: 0,
}


class Candidate(NamedTuple):
    kind: CandidateType
    address: Address

    def __str__(self) -> str:
        return f"{self.kind.name.lower()} {self.address}"


def local_preference(address: Address) -> int:
    """IPv6 before IPv4 (RFC 8421 in spirit): a v6 path often needs no NAT at all."""
    return 65535 if address.is_ipv6 else 65534


def candidate_priority(candidate: Candidate) -> int:
    """RFC 8445 §5.1.2.1 with one component: 2^24·type + 2^8·local + (256 − 1)."""
    return (TYPE_PREFERENCE[candidate.kind] << 24) + (local_preference(candidate.address) << 8) + 255


def pair_priority(controlling: int, controlled: int) -> int:
    """RFC 8445 §6.1.2.3: both sides compute the same order for the same pair."""
    g, d = controlling, controlled
    return (min(g, d) << 32) + 2 * max(g, d) + (1 if g > d else 0)


def is_usable_remote(address: Address) -> bool:
    """Addresses worth probing: not unspecified, multicast or a port 0."""
    if address.port == 0:
        return False
    try:
        ip = ipaddress.ip_address(address.host)
    except ValueError:
        return False
    return not (ip.is_unspecified or ip.is_multicast)
