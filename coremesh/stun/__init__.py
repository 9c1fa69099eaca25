"""STUN (RFC 8489) and the pieces TURN (RFC 8656) and NAT discovery (RFC 5780) build on. Sans-IO.

- :mod:`.message` — the codec: :class:`StunMessage`, :func:`encode`, :func:`decode`, integrity.
- :mod:`.attributes` — the attribute table (:class:`Attr`) and typed value codecs.
- :mod:`.credentials` — short-term and long-term keys, USERHASH, nonces, TURN REST API secrets.
- :mod:`.channeldata` — TURN ChannelData messages and TCP stream framing.
- :mod:`.transaction` — client transactions with RFC 8489 retransmission timers.
- :mod:`.binding` — the Binding server core, with RFC 5780 and RFC 3489 answers.
- :mod:`.natdiscovery` — the RFC 5780 NAT behaviour discovery client.

See ``docs/stun.md``.
"""

from .attributes import (
    ATTRIBUTES,
    MAGIC_COOKIE,
    AddressError,
    Attr,
    ChangeRequest,
    ErrorCode,
    Icmp,
    PasswordAlgorithm,
    PasswordAlgorithmEntry,
    StunDecodeError,
    StunEncodeError,
)
from .binding import BindingServer, Reply
from .channeldata import ChannelData, decode_channel_data, encode_channel_data, frame_length, is_channel_data
from .credentials import (
    CredentialError,
    NonceStatus,
    SecurityFeature,
    check_nonce,
    check_rest_api_username,
    long_term_key,
    make_nonce,
    rest_api_credentials,
    rest_api_password,
    saslprep,
    short_term_key,
    userhash,
)
from .message import (
    MAX_MESSAGE_SIZE,
    Method,
    StunClass,
    StunMessage,
    decode,
    encode,
    is_stun,
    verify_fingerprint,
    verify_integrity,
    verify_integrity_sha256,
)
from .natdiscovery import NatBehavior, NatBehaviorDiscovery
from .transaction import (
    StunTransaction,
    TransactionConfig,
    TransactionResult,
    TransactionTable,
    new_transaction_id,
)

__all__ = [
    "ATTRIBUTES",
    "MAGIC_COOKIE",
    "MAX_MESSAGE_SIZE",
    "AddressError",
    "Attr",
    "BindingServer",
    "ChangeRequest",
    "ChannelData",
    "CredentialError",
    "ErrorCode",
    "Icmp",
    "Method",
    "NatBehavior",
    "NatBehaviorDiscovery",
    "NonceStatus",
    "PasswordAlgorithm",
    "PasswordAlgorithmEntry",
    "Reply",
    "SecurityFeature",
    "StunClass",
    "StunDecodeError",
    "StunEncodeError",
    "StunMessage",
    "StunTransaction",
    "TransactionConfig",
    "TransactionResult",
    "TransactionTable",
    "check_nonce",
    "check_rest_api_username",
    "decode",
    "decode_channel_data",
    "encode",
    "encode_channel_data",
    "frame_length",
    "is_channel_data",
    "is_stun",
    "long_term_key",
    "make_nonce",
    "new_transaction_id",
    "rest_api_credentials",
    "rest_api_password",
    "saslprep",
    "short_term_key",
    "userhash",
    "verify_fingerprint",
    "verify_integrity",
    "verify_integrity_sha256",
]
