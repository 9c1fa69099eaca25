"""STUN client transactions (RFC 8489 section 6.2), sans-IO.

A :class:`StunTransaction` owns one request. Over UDP it is sent at once and retransmitted after
RTO, then after each doubled interval, ``Rc`` sends in all; if no response arrives within ``Rm``
times the initial RTO after the last send, the transaction times out. With the defaults (RTO 500 ms,
Rc 7, Rm 16) the requests leave at 0, 0.5, 1.5, 3.5, 7.5, 15.5 and 31.5 s, and the timeout is at
39.5 s. Over a reliable transport (TCP, TLS) the request is sent once and the timeout is ``Ti``
(39.5 s).

The core never reads a clock: the caller passes ``now`` in, asks :meth:`~StunTransaction.next_timer`
when to call :meth:`~StunTransaction.handle_timer`, drains
:meth:`~StunTransaction.datagrams_to_send`, and feeds decoded responses to
:meth:`~StunTransaction.on_response`. Responses match by transaction id; transaction ids come from
an injected ``random_bytes`` (:func:`new_transaction_id`). Checking MESSAGE-INTEGRITY of a response
needs its raw bytes, so it is the caller's job (:func:`~coremesh.stun.message.verify_integrity`)
before :meth:`~StunTransaction.on_response`; a response that fails it is to be ignored.

:class:`TransactionTable` keeps many transactions and routes responses and timers to them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from ..addr import Address
from .message import StunClass, StunMessage, encode

RandomBytes = Callable[[int], bytes]


@dataclass(frozen=True, slots=True)
class TransactionConfig:
    """Retransmission parameters (RFC 8489 section 6.2.1). ``rto``: initial retransmission
    timeout; ``rc``: sends in all; ``rm``: the final wait, in initial RTOs; ``ti``: the timeout
    over reliable transports."""

    rto: float = 0.5
    rc: int = 7
    rm: int = 16
    ti: float = 39.5

    def __post_init__(self) -> None:
        if self.rto <= 0 or self.rc < 1 or self.rm < 1 or self.ti <= 0:
            raise ValueError("TransactionConfig: rto and ti must be > 0, rc and rm >= 1")


DEFAULT_CONFIG: Final = TransactionConfig()


@dataclass(frozen=True, slots=True)
class TransactionResult:
    """How a transaction ended: with a response (success or error class) or a timeout."""

    transaction_id: bytes
    response: StunMessage | None

    @property
    def timed_out(self) -> bool:
        return self.response is None

    @property
    def success(self) -> bool:
        return self.response is not None and self.response.msg_class is StunClass.SUCCESS


def new_transaction_id(random_bytes: RandomBytes) -> bytes:
    """A fresh 96-bit transaction id from the injected randomness source."""
    tid = random_bytes(12)
    if len(tid) != 12:
        raise ValueError("random_bytes(12) must return 12 bytes")
    return tid


class StunTransaction:
    """One client transaction. ``request`` is encoded once, with the given integrity keys."""

    def __init__(
        self,
        request: StunMessage,
        dst: Address,
        now: float,
        *,
        reliable: bool = False,
        config: TransactionConfig = DEFAULT_CONFIG,
        integrity_key: bytes | None = None,
        integrity_sha256_key: bytes | None = None,
        fingerprint: bool = True,
    ) -> None:
        if request.msg_class is not StunClass.REQUEST:
            raise ValueError("a client transaction carries a request")
        self.request = request
        self.dst = dst
        self.reliable = reliable
        self.config = config
        self.data = encode(
            request,
            integrity_key=integrity_key,
            integrity_sha256_key=integrity_sha256_key,
            fingerprint=fingerprint,
        )
        self.result: TransactionResult | None = None
        self.send_times: list[float] = [now]
        self._queue: list[bytes] = [self.data]
        self._interval = config.rto
        if reliable:
            self._deadline = now + config.ti
        elif config.rc == 1:
            self._deadline = now + config.rm * config.rto
        else:
            self._deadline = now + config.rto

    @property
    def transaction_id(self) -> bytes:
        return self.request.transaction_id

    @property
    def done(self) -> bool:
        return self.result is not None

    def datagrams_to_send(self) -> list[bytes]:
        """The request bytes due now (the first send, or a retransmission); drained."""
        out, self._queue = self._queue, []
        return out

    def next_timer(self) -> float | None:
        return None if self.result is not None else self._deadline

    def handle_timer(self, now: float) -> TransactionResult | None:
        """Retransmit or time out when the timer is due; returns the result on a timeout."""
        if self.result is not None or now < self._deadline:
            return None
        sends = len(self.send_times)
        if self.reliable or sends >= self.config.rc:
            self.result = TransactionResult(self.transaction_id, None)
            self._queue = []
            return self.result
        self.send_times.append(now)
        self._queue.append(self.data)
        if sends + 1 >= self.config.rc:
            self._deadline = now + self.config.rm * self.config.rto
        else:
            self._interval *= 2
            self._deadline = now + self._interval
        return None

    def on_response(self, msg: StunMessage) -> TransactionResult | None:
        """Complete the transaction with a response to it; ``None`` if ``msg`` is not one (another
        transaction id, not a response class, another method) or the transaction is over."""
        if (
            self.result is not None
            or msg.transaction_id != self.request.transaction_id
            or msg.msg_class not in (StunClass.SUCCESS, StunClass.ERROR)
            or msg.method != self.request.method
        ):
            return None
        self.result = TransactionResult(self.transaction_id, msg)
        self._queue = []
        return self.result


class TransactionTable:
    """The outstanding transactions of one client, by transaction id."""

    def __init__(self) -> None:
        self._by_id: dict[bytes, StunTransaction] = {}

    def start(self, txn: StunTransaction) -> StunTransaction:
        if txn.transaction_id in self._by_id:
            raise ValueError("transaction id already in use")
        self._by_id[txn.transaction_id] = txn
        return txn

    def get(self, transaction_id: bytes) -> StunTransaction | None:
        return self._by_id.get(transaction_id)

    def cancel(self, transaction_id: bytes) -> None:
        self._by_id.pop(transaction_id, None)

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, transaction_id: object) -> bool:
        return transaction_id in self._by_id

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        return [(data, t.dst) for t in self._by_id.values() for data in t.datagrams_to_send()]

    def next_timer(self) -> float | None:
        timers = [t for t in (txn.next_timer() for txn in self._by_id.values()) if t is not None]
        return min(timers) if timers else None

    def handle_timer(self, now: float) -> list[TransactionResult]:
        """Retransmissions and timeouts due at ``now``; the timed-out transactions leave the table."""
        results = []
        for tid, txn in list(self._by_id.items()):
            result = txn.handle_timer(now)
            if result is not None:
                del self._by_id[tid]
                results.append(result)
        return results

    def on_response(self, msg: StunMessage) -> TransactionResult | None:
        txn = self._by_id.get(msg.transaction_id)
        if txn is None:
            return None
        result = txn.on_response(msg)
        if result is not None:
            del self._by_id[msg.transaction_id]
        return result
