"""The STUN Binding server core (RFC 8489, RFC 5780, and RFC 3489 clients), sans-IO.

:meth:`BindingServer.handle` takes one datagram (or one TCP frame) with the address it came from
and the local address it arrived on, and returns the replies to send: each says which of our local
sockets to send from (``via``) and where to (``dst``). The shell owns the sockets.

Behaviour:

- Binding request: success response with XOR-MAPPED-ADDRESS (the source as we saw it), SOFTWARE and
  FINGERPRINT, sent back from the socket it arrived on.
- RFC 5780, when the server has an alternate address (``other_address``, e.g. ``--alt-address``
  with PORT+1): the shell listens on four sockets, primary/alternate IP x primary/alternate port,
  and feeds :meth:`~BindingServer.handle` from all of them. Responses then carry OTHER-ADDRESS (the
  socket that differs from the receiving one in both IP and port) and RESPONSE-ORIGIN (the socket
  the response leaves from). CHANGE-REQUEST picks that socket: change IP and/or change port
  relative to the receiving one. RESPONSE-PORT sends the response to that port of the source IP.
  PADDING in a request is answered with PADDING of the same length, so a response is never much
  larger than its request.
- Without an alternate address CHANGE-REQUEST, RESPONSE-PORT and PADDING are not understood: like
  any other unknown comprehension-required attribute they earn a 420 (Unknown Attribute) error
  listing them in UNKNOWN-ATTRIBUTES, as RFC 5780 section 6 asks of a server that cannot honour
  CHANGE-REQUEST.
- Classic RFC 3489 requests (no magic cookie, 16-byte transaction id) are answered the RFC 3489
  way, because old clients such as pystun3 speak nothing else: MAPPED-ADDRESS and, with an
  alternate address, SOURCE-ADDRESS and CHANGED-ADDRESS; CHANGE-REQUEST is honoured; no SOFTWARE
  and no FINGERPRINT (pystun3 walks the attributes without padding, so every attribute must be a
  multiple of four bytes long). Their 420 responses pad the reason phrase with spaces and repeat
  an unknown attribute to keep UNKNOWN-ATTRIBUTES a multiple of four bytes, as RFC 3489 asks.
- Requests of another method: 400 (Bad Request). Binding indications (keepalives): no reply.
  Responses and indications of other methods, and anything malformed: dropped.
- Anti-amplification (:mod:`.budget`): a reply over UDP is at most 3x its request. A reply that
  would be larger sheds, in this order, SOFTWARE, FINGERPRINT (unless the request carried one),
  RESPONSE-ORIGIN, SOURCE-ADDRESS, CHANGED-ADDRESS and OTHER-ADDRESS: the mapped address always
  fits, and a client that wants the RFC 5780 attributes of an IPv6 server sends a request of 28
  bytes or more (ours carry FINGERPRINT). A reply that still does not fit is dropped
  (``drop_amplification``). Replies over TCP (``validated``) are never cut.

Nothing raises: every refused datagram is counted in :attr:`BindingServer.counters` under
``drop_malformed``, ``drop_not_request``, ``drop_oversize`` (longer than ``max_message_size``) or
``drop_amplification``;
answered ones under ``binding_success``, ``error_400``,
``error_420``, and ``rfc3489`` for the classic ones; ``binding_indication`` for keepalives.
"""

from __future__ import annotations

from collections import Counter
from typing import Final, NamedTuple

from ..addr import Address
from ..errors import ConfigError, DecodeError
from .attributes import NAT_DISCOVERY_REQUIRED, STUN_REQUIRED, Attr
from .budget import encode_within
from .message import Method, StunClass, StunMessage, decode

# What a reply sheds to stay within its amplification budget, least useful first (FINGERPRINT only
# when the request carried none: a client that multiplexes STUN sends one, and so gets one).
_SHED: Final = (
    Attr.SOFTWARE,
    Attr.FINGERPRINT,
    Attr.RESPONSE_ORIGIN,
    Attr.SOURCE_ADDRESS,
    Attr.CHANGED_ADDRESS,
    Attr.OTHER_ADDRESS,
)
_SHED_KEEP_FINGERPRINT: Final = tuple(a for a in _SHED if a != Attr.FINGERPRINT)

DEFAULT_MAX_MESSAGE_SIZE: Final = 9216
"""Room for RFC 5780 PADDING up to a jumbo-frame MTU; anything larger is not a Binding request."""


class Reply(NamedTuple):
    """A datagram to send: ``data`` from our local socket ``via`` to ``dst``."""

    data: bytes
    via: Address
    dst: Address


class _Answer(NamedTuple):
    """A reply before encoding (the amplification budget may still shed attributes)."""

    message: StunMessage
    via: Address
    dst: Address
    rfc3489: bool = False  # classic replies carry no FINGERPRINT


class BindingServer:
    """Answers Binding requests. ``other_address`` (the alternate IP with the alternate port)
    turns on RFC 5780 and then needs ``primary_address``, the address of the primary socket."""

    def __init__(
        self,
        software: str,
        *,
        other_address: Address | None = None,
        primary_address: Address | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        probe = StunMessage(Method.BINDING, StunClass.SUCCESS, bytes(12))
        try:
            probe.add_text(Attr.SOFTWARE, software)
        except ValueError as exc:
            raise ConfigError(f"software: {exc}") from None
        if other_address is not None:
            if primary_address is None:
                raise ConfigError("primary_address: required with other_address (RFC 5780)")
            if other_address.host == primary_address.host or other_address.port == primary_address.port:
                raise ConfigError("other_address: must differ from primary_address in both IP and port")
            if other_address.is_ipv6 != primary_address.is_ipv6:
                raise ConfigError("other_address: must be of the same family as primary_address")
        self.software = software
        self.primary_address = primary_address
        self.other_address = other_address
        self.max_message_size = max_message_size
        self.counters: Counter[str] = Counter()
        self._software_attr = probe.attributes[0]

    @property
    def local_addresses(self) -> list[Address]:
        """The sockets the shell must listen on: the primary, or all four in RFC 5780 mode."""
        primary, other = self.primary_address, self.other_address
        if primary is None:
            return []
        if other is None:
            return [primary]
        return [
            primary,
            Address(primary.host, other.port),
            Address(other.host, primary.port),
            other,
        ]

    def handle(
        self, data: bytes, src: Address, local: Address, now: float, *, validated: bool = False
    ) -> list[Reply]:
        """The replies to one datagram from ``src`` that arrived on our socket ``local``.
        ``validated``: it came over TCP or TLS, so the reply is not limited to 3x its size."""
        if len(data) > self.max_message_size:
            self.counters["drop_oversize"] += 1
            return []
        try:
            msg = decode(data, allow_rfc3489=True)
        except DecodeError:
            self.counters["drop_malformed"] += 1
            return []
        if msg.msg_class is not StunClass.REQUEST:
            if msg.msg_class is StunClass.INDICATION and msg.method == Method.BINDING:
                self.counters["binding_indication"] += 1
            else:
                self.counters["drop_not_request"] += 1
            return []
        try:
            reply = self._request(msg, src, local)
        except DecodeError:  # a malformed CHANGE-REQUEST or RESPONSE-PORT
            self.counters["error_400"] += 1
            reply = self._error(msg, 400, None, src, local)
        fingerprint = not reply.rfc3489
        shed = _SHED_KEEP_FINGERPRINT if msg.has(Attr.FINGERPRINT) else _SHED
        out = encode_within(reply.message, len(data), shed, fingerprint=fingerprint, validated=validated)
        if out is None:
            self.counters["drop_amplification"] += 1
            return []
        return [Reply(out, reply.via, reply.dst)]

    # -- internals ---------------------------------------------------------------------------

    def _role(self, local: Address) -> tuple[bool, bool] | None:
        """(alternate IP?, alternate port?) of the receiving socket in RFC 5780 mode, else None."""
        primary, other = self.primary_address, self.other_address
        if primary is None or other is None:
            return None
        if local.host not in (primary.host, other.host) or local.port not in (primary.port, other.port):
            return None
        return local.host == other.host, local.port == other.port

    def _socket(self, alt_ip: bool, alt_port: bool) -> Address:
        assert self.primary_address is not None and self.other_address is not None
        return Address(
            (self.other_address if alt_ip else self.primary_address).host,
            (self.other_address if alt_port else self.primary_address).port,
        )

    def _request(self, msg: StunMessage, src: Address, local: Address) -> _Answer:
        if msg.is_rfc3489:
            self.counters["rfc3489"] += 1
        if msg.method != Method.BINDING:
            self.counters["error_400"] += 1
            return self._error(msg, 400, "Unsupported method", src, local)
        role = self._role(local)
        known = STUN_REQUIRED if role is None else STUN_REQUIRED | NAT_DISCOVERY_REQUIRED
        unknown = msg.comprehension_required_unknown(known)
        if unknown:
            self.counters["error_420"] += 1
            return self._error(msg, 420, None, src, local, unknown)

        via, dst = local, src
        other: Address | None = None
        resp = msg.response()
        if role is not None:
            change = msg.get_change_request()
            if change is not None:
                via = self._socket(role[0] ^ change.change_ip, role[1] ^ change.change_port)
            port = msg.get_uint(Attr.RESPONSE_PORT)
            if port is not None and not msg.is_rfc3489:
                if port == 0:
                    raise DecodeError("RESPONSE-PORT 0")
                dst = Address(src.host, port)
            other = self._socket(not role[0], not role[1])
        if msg.is_rfc3489:
            resp.add_address(Attr.MAPPED_ADDRESS, src)
            if other is not None:
                resp.add_address(Attr.SOURCE_ADDRESS, via)
                resp.add_address(Attr.CHANGED_ADDRESS, other)
            self.counters["binding_success"] += 1
            return _Answer(resp, via, dst, rfc3489=True)
        resp.add_address(Attr.XOR_MAPPED_ADDRESS, src)
        if other is not None:
            resp.add_address(Attr.OTHER_ADDRESS, other)
            resp.add_address(Attr.RESPONSE_ORIGIN, via)
            padding = msg.get(Attr.PADDING)
            if padding is not None:
                resp.add(Attr.PADDING, bytes(len(padding)))
        resp.attributes.append(self._software_attr)
        self.counters["binding_success"] += 1
        return _Answer(resp, via, dst)

    def _error(
        self,
        msg: StunMessage,
        code: int,
        reason: str | None,
        src: Address,
        local: Address,
        unknown: list[int] | None = None,
    ) -> _Answer:
        resp = msg.response(StunClass.ERROR)
        if msg.is_rfc3489:
            text = reason or {400: "Bad Request", 420: "Unknown Attribute"}[code]
            resp.add_error(code, text + " " * (-len(text) & 3))
            if unknown:
                resp.add_unknown_attributes(unknown + unknown[-1:] if len(unknown) % 2 else unknown)
            return _Answer(resp, local, src, rfc3489=True)
        resp.add_error(code, reason)
        if unknown:
            resp.add_unknown_attributes(unknown)
        resp.attributes.append(self._software_attr)
        return _Answer(resp, local, src)
