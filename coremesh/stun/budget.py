"""Anti-amplification for STUN and TURN replies to addresses nobody has validated (issue 14).

A datagram's source address can be forged. A server that answers one request with many bytes lets an
attacker aim those bytes at a victim (a reflection attack). The rule, after QUIC's (RFC 9000 §8.1):
a reply to an unvalidated address is at most :data:`AMPLIFICATION_FACTOR` times the bytes of the
request that caused it. Over TCP the handshake has validated the address and there is no limit.

:func:`encode_within` encodes a reply within that budget by shedding optional attributes in the
order the caller gives (the least useful first: SOFTWARE, then FINGERPRINT when the request did
not carry one, an error's reason phrase, RFC 5780's RESPONSE-ORIGIN ...), and returns ``None``
when even the reply without them is too large: the caller drops it and counts
``drop_amplification``. A client that wants the full reply sends a request large enough for it
(ours do; see docs/stun.md and docs/turn.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from .attributes import Attr
from .message import StunMessage, encode

AMPLIFICATION_FACTOR: Final = 3
"""A reply to an unvalidated address: at most this many times the bytes received from it."""


def encode_within(
    msg: StunMessage, received: int, shed: Sequence[int], *, fingerprint: bool, validated: bool = False
) -> bytes | None:
    """``msg`` encoded in at most ``AMPLIFICATION_FACTOR * received`` bytes, or ``None``.

    ``shed`` lists the attribute types that may go, in order; ``Attr.FINGERPRINT`` there means
    "encode without FINGERPRINT" and ``Attr.ERROR_CODE`` "without the error's reason phrase" (the
    code stays). Each other step removes every instance of one type. ``validated`` (the
    request came over TCP or TLS) encodes everything. ``msg`` keeps what was removed removed.
    """
    data = encode(msg, fingerprint=fingerprint)
    if validated:
        return data
    budget = AMPLIFICATION_FACTOR * received
    for attr in shed:
        if len(data) <= budget:
            return data
        if attr == Attr.FINGERPRINT:
            fingerprint = False
        elif attr == Attr.ERROR_CODE:  # the code stays; its reason phrase (for humans) goes
            msg.attributes = [(t, v[:4] if t == attr else v) for t, v in msg.attributes]
        else:
            msg.attributes = [(t, v) for t, v in msg.attributes if t != attr]
        data = encode(msg, fingerprint=fingerprint)
    return data if len(data) <= budget else None
