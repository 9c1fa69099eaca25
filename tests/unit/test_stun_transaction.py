"""Client transactions (RFC 8489 section 6.2.1) against a hand-advanced clock."""

from __future__ import annotations

import random

import pytest

from coremesh.addr import Address
from coremesh.stun import (
    Attr,
    Method,
    StunClass,
    StunMessage,
    StunTransaction,
    TransactionConfig,
    TransactionTable,
    decode,
    new_transaction_id,
    verify_integrity,
)

SERVER = Address("192.0.2.1", 3478)


def request(rng: random.Random, method: Method = Method.BINDING) -> StunMessage:
    return StunMessage(method, StunClass.REQUEST, new_transaction_id(rng.randbytes))


def run_to_end(txn: StunTransaction, start: float) -> tuple[list[float], float]:
    """Advance the clock from timer to timer; return the send times and the timeout time."""
    now = start
    sends: list[float] = []
    while True:
        if txn.datagrams_to_send():
            sends.append(now)
        timer = txn.next_timer()
        if timer is None:
            return sends, now
        assert timer > now
        now = timer
        result = txn.handle_timer(now)
        if result is not None:
            assert result.timed_out and not result.success
            assert txn.next_timer() is None and txn.datagrams_to_send() == []
            return sends, now


@pytest.mark.parametrize("start", [0.0, 1000.25])
def test_udp_schedule_is_exact(start: float) -> None:
    txn = StunTransaction(request(random.Random(1)), SERVER, start)
    sends, end = run_to_end(txn, start)
    assert [t - start for t in sends] == [0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert end - start == 39.5
    assert txn.send_times == sends


def test_custom_schedule() -> None:
    config = TransactionConfig(rto=0.1, rc=3, rm=4)
    sends, end = run_to_end(StunTransaction(request(random.Random(1)), SERVER, 0.0, config=config), 0.0)
    assert sends == pytest.approx([0, 0.1, 0.3])
    assert end == pytest.approx(0.7)
    one = TransactionConfig(rto=1.0, rc=1, rm=16)
    sends, end = run_to_end(StunTransaction(request(random.Random(1)), SERVER, 0.0, config=one), 0.0)
    assert (sends, end) == ([0.0], 16.0)
    with pytest.raises(ValueError):
        TransactionConfig(rto=0)


def test_reliable_sends_once_and_times_out_after_ti() -> None:
    txn = StunTransaction(request(random.Random(1)), SERVER, 5.0, reliable=True)
    sends, end = run_to_end(txn, 5.0)
    assert sends == [5.0] and end == 44.5


def test_timer_is_idle_before_deadline_and_follows_a_late_shell() -> None:
    txn = StunTransaction(request(random.Random(1)), SERVER, 0.0)
    assert len(txn.datagrams_to_send()) == 1
    assert txn.handle_timer(0.49) is None and txn.datagrams_to_send() == []
    assert txn.handle_timer(0.7) is None  # late: sends now, next interval counted from now
    assert len(txn.datagrams_to_send()) == 1
    assert txn.next_timer() == pytest.approx(1.7)


def test_response_completes_and_stops_retransmission() -> None:
    rng = random.Random(2)
    req = request(rng)
    txn = StunTransaction(req, SERVER, 0.0, integrity_key=b"key")
    assert verify_integrity(txn.datagrams_to_send()[0], b"key")
    txn.handle_timer(0.5)
    other = StunMessage(Method.BINDING, StunClass.SUCCESS, new_transaction_id(rng.randbytes))
    assert txn.on_response(other) is None
    assert txn.on_response(req.response(StunClass.INDICATION)) is None
    assert txn.on_response(StunMessage(Method.ALLOCATE, StunClass.SUCCESS, req.transaction_id)) is None
    resp = req.response()
    resp.add_address(Attr.XOR_MAPPED_ADDRESS, Address("198.51.100.7", 4000))
    result = txn.on_response(resp)
    assert result is not None and result.success and result.response is resp
    assert txn.done and txn.result is result
    assert txn.datagrams_to_send() == [] and txn.next_timer() is None
    assert txn.on_response(resp) is None  # a duplicate
    assert txn.handle_timer(100.0) is None


def test_error_response_is_a_result() -> None:
    req = request(random.Random(3), Method.ALLOCATE)
    txn = StunTransaction(req, SERVER, 0.0)
    err = req.response(StunClass.ERROR)
    err.add_error(401)
    result = txn.on_response(err)
    assert result is not None and not result.success and not result.timed_out


def test_only_requests() -> None:
    with pytest.raises(ValueError):
        StunTransaction(StunMessage(Method.SEND, StunClass.INDICATION, bytes(12)), SERVER, 0.0)
    with pytest.raises(ValueError):
        new_transaction_id(lambda n: b"short")


def test_ids_come_from_the_injected_source() -> None:
    a = [new_transaction_id(random.Random(9).randbytes) for _ in range(2)]
    assert a[0] == a[1] == random.Random(9).randbytes(12)


def test_table_routes_responses_and_timers() -> None:
    rng = random.Random(4)
    table = TransactionTable()
    fast = table.start(
        StunTransaction(request(rng), SERVER, 0.0, config=TransactionConfig(rto=0.1, rc=2, rm=1))
    )
    slow = table.start(StunTransaction(request(rng), Address("192.0.2.2", 3478), 0.0))
    with pytest.raises(ValueError):
        table.start(StunTransaction(fast.request, SERVER, 0.0))
    sent = table.datagrams_to_send()
    assert [dst for _, dst in sent] == [SERVER, Address("192.0.2.2", 3478)]
    assert decode(sent[0][0]).transaction_id == fast.transaction_id
    assert table.next_timer() == pytest.approx(0.1)
    assert table.handle_timer(0.1) == []
    assert [dst for _, dst in table.datagrams_to_send()] == [SERVER]
    results = table.handle_timer(0.2)
    assert len(results) == 1 and results[0].transaction_id == fast.transaction_id and results[0].timed_out
    assert fast.transaction_id not in table and len(table) == 1
    resp = slow.request.response()
    result = table.on_response(resp)
    assert result is not None and result.success and len(table) == 0
    assert table.on_response(resp) is None and table.next_timer() is None
    third = table.start(StunTransaction(request(rng), SERVER, 1.0))
    assert table.get(third.transaction_id) is third
    table.cancel(third.transaction_id)
    assert len(table) == 0
