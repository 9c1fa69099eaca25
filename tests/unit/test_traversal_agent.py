"""The traversal agent alone, with time advanced by hand."""

from __future__ import annotations

import contextlib
import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coremesh.addr import Address
from coremesh.errors import DecodeError
from coremesh.traversal import (
    Candidate,
    Candidates,
    CandidateType,
    Mode,
    PathChallenge,
    PathResponse,
    SendCandidates,
    SendChallenge,
    TraversalAction,
    TraversalAgent,
    TraversalConfig,
    UseDirect,
    UseRelay,
    candidate_priority,
    decode_path_frames,
    encode_path_frames,
    pair_priority,
)

HOST = Candidate(CandidateType.HOST, Address("10.0.0.2", 4000))
SRFLX = Candidate(CandidateType.SRFLX, Address("192.0.2.10", 4000))
R_HOST = Candidate(CandidateType.HOST, Address("10.0.1.2", 5000))
R_SRFLX = Candidate(CandidateType.SRFLX, Address("192.0.2.20", 5000))
R_RELAY = Candidate(CandidateType.RELAY, Address("198.51.100.1", 49152))
CFG = TraversalConfig()


def agent(controlling: bool = True, **kw: object) -> TraversalAgent:
    cfg = TraversalConfig(**kw) if kw else CFG  # type: ignore[arg-type]
    a = TraversalAgent(cfg, controlling=controlling, rng=random.Random(1), now=0.0)
    a.set_local([HOST, SRFLX], "", 0.0)
    return a


def drain(a: TraversalAgent) -> list[TraversalAction]:
    out = []
    while (x := a.next_action()) is not None:
        out.append(x)
    return out


def run(a: TraversalAgent, until: float, oldest: float | None = None) -> list[TraversalAction]:
    """Fire every timer up to ``until``; returns the actions in order."""
    out: list[TraversalAction] = []
    while (t := a.get_timer(oldest)) is not None and t <= until:
        a.handle_timer(t, oldest)
        out.extend(drain(a))
    return out


def test_priorities_follow_rfc_8445() -> None:
    assert candidate_priority(HOST) > candidate_priority(SRFLX) > candidate_priority(R_RELAY)
    v6 = Candidate(CandidateType.HOST, Address("2001:db8::1", 1))
    assert candidate_priority(v6) > candidate_priority(HOST)
    g, d = candidate_priority(HOST), candidate_priority(SRFLX)
    assert pair_priority(g, d) == (min(g, d) << 32) + 2 * max(g, d) + 1
    assert pair_priority(d, g) == pair_priority(g, d) - 1


def test_start_announces_and_resends_until_answered() -> None:
    a = agent()
    a.start(0.0)
    assert drain(a) == [SendCandidates(1, False)]
    assert run(a, 1.0) == [SendCandidates(1, False)]
    a.on_candidates(1, True, False, "", (R_SRFLX,), 1.5)
    acts = drain(a)
    assert SendCandidates(1, True) not in acts  # an answer is not answered
    assert SendCandidates(1, False) not in run(a, 10.0)  # answered: round 1 is not sent again


def test_candidates_are_answered_and_checks_paced_best_first() -> None:
    a = agent()
    a.on_candidates(7, False, False, "", (R_SRFLX, R_HOST, R_RELAY), 0.0)
    assert drain(a) == [SendCandidates(7, True)]
    assert set(a.pairs) == {R_HOST.address, R_SRFLX.address}  # never a check to a relayed address
    acts = run(a, 0.05)
    checks = [x for x in acts if isinstance(x, SendChallenge)]
    assert [c.address for c in checks[:2]] == [R_HOST.address, R_SRFLX.address]
    times = []
    b = agent()
    b.on_candidates(1, False, False, "", (R_SRFLX, R_HOST), 0.0)
    drain(b)
    while (t := b.get_timer(None)) is not None and t < 4.0:
        b.handle_timer(t, None)
        if any(isinstance(x, SendChallenge) for x in drain(b)):
            times.append(t)
    gaps = [y - x for x, y in itertools.pairwise(times)]
    assert min(gaps) >= CFG.check_interval - 1e-9  # paced
    assert len(times) == 2 * CFG.check_tries  # bounded per pair
    assert b.reason is not None and "direct checks failed" in b.reason


def test_controlling_side_nominates_the_best_validated_pair_after_a_delay() -> None:
    a = agent()
    a.on_candidates(1, False, False, "", (R_SRFLX, R_HOST), 0.0)
    drain(a)
    checks = [x for x in run(a, 0.03) if isinstance(x, SendChallenge)]
    srflx_check = next(c for c in checks if c.address == R_SRFLX.address)
    assert a.on_response(srflx_check.token, 0.04) == R_SRFLX.address
    assert a.on_response(srflx_check.token, 0.04) is None  # a token validates once
    acts = run(a, 0.04 + CFG.nomination_delay)
    assert UseDirect(R_SRFLX.address) in acts
    assert a.mode is Mode.DIRECT and a.direct == R_SRFLX.address and a.reason is None


def test_controlled_side_never_nominates() -> None:
    a = agent(controlling=False)
    a.on_candidates(1, False, False, "", (R_SRFLX,), 0.0)
    drain(a)
    check = next(x for x in run(a, 0.01) if isinstance(x, SendChallenge))
    a.on_response(check.token, 0.02)
    assert not [x for x in run(a, 5.0) if isinstance(x, UseDirect)]
    assert a.is_validated(R_SRFLX.address)


def test_a_check_from_an_unknown_address_triggers_a_check_back() -> None:
    a = agent()
    a.on_candidates(1, False, False, "", (R_SRFLX,), 0.0)
    drain(a)
    prflx = Address("192.0.2.20", 61000)
    a.on_challenge(prflx, 0.001)
    assert a.remote[prflx].kind is CandidateType.PRFLX
    first = next(x for x in run(a, 0.05) if isinstance(x, SendChallenge))
    assert first.address == prflx  # triggered checks go first


def test_state_is_bounded() -> None:
    a = agent(max_pairs=4)
    a.on_candidates(1, False, False, "", (R_SRFLX,), 0.0)
    for i in range(100):
        a.on_challenge(Address("192.0.2.20", 10000 + i), 0.0)
    assert len(a.pairs) <= 4 and len(a.remote) <= 4


def test_a_silent_direct_path_falls_back_and_retries_with_backoff() -> None:
    a = agent(dead_after=1.0, retry_initial=2.0, retry_max=8.0)
    a.adopt_direct(R_SRFLX.address, 0.0)
    a.has_fallback = True
    a.on_ack_progress(1.0)
    acts = run(a, 1.9, oldest=1.0)  # data in flight since 1.0, nothing acknowledged since
    probes = [x for x in acts if isinstance(x, SendChallenge)]
    assert probes and all(p.address == R_SRFLX.address for p in probes)  # liveness probes
    assert not [x for x in acts if isinstance(x, UseRelay)]
    acts = run(a, 2.0, oldest=1.0)
    (fallback,) = [x for x in acts if isinstance(x, UseRelay)]
    assert "stopped answering" in fallback.reason and a.mode is Mode.RELAYED
    rounds = []  # a new round (candidates sent again, checks again) at growing intervals
    while (t := a.get_timer(None)) is not None and t <= 60.0:
        a.handle_timer(t, None)
        for x in drain(a):
            if isinstance(x, SendCandidates) and not x.reply:
                rounds.append(t)
                a.on_candidates(x.round, True, False, "", (R_SRFLX,), t)  # the peer answers
    gaps = [y - x for x, y in itertools.pairwise(rounds)]
    assert 1.8 <= rounds[0] - 2.0 <= 2.2  # retry_initial after the fallback
    assert gaps[0] < gaps[1] and all(g <= 8.0 * 1.1 for g in gaps)  # exponential, capped at retry_max


def test_a_direct_path_with_acks_stays() -> None:
    a = agent(dead_after=1.0)
    a.adopt_direct(R_SRFLX.address, 0.0)
    a.has_fallback = True
    t = 0.0
    while t < 10.0:
        t += 0.1
        a.on_ack_progress(t)
        a.handle_timer(t, t - 0.05)
    assert not [x for x in drain(a) if isinstance(x, UseRelay)]
    assert a.mode is Mode.DIRECT


def test_pinned_agent_never_checks() -> None:
    a = TraversalAgent(CFG, controlling=True, rng=random.Random(1), now=0.0, pinned=True)
    a.on_candidates(1, False, False, "", (R_SRFLX,), 0.0)
    assert drain(a) == [SendCandidates(1, True)]
    assert not [x for x in run(a, 60.0) if isinstance(x, SendChallenge | UseDirect)]


def test_a_pinned_peer_is_not_checked() -> None:
    a = agent()
    a.on_candidates(1, False, True, "", (R_SRFLX,), 0.0)
    assert not [x for x in run(a, 60.0) if isinstance(x, SendChallenge)]
    assert a.reason is not None and "the peer pinned this connection" in a.reason  # not "not run yet"


def test_sequential_symmetric_peer_gets_predicted_ports() -> None:
    a = agent(predict_ports=3)
    a.on_candidates(1, False, False, "symmetric (sequential)", (R_SRFLX,), 0.0)
    ports = sorted(addr.port for addr in a.pairs)
    assert ports == [5000, 5001, 5002, 5003]  # predict_ports=3 here


# -- path frames codec ------------------------------------------------------------------------------


def test_path_frames_round_trip() -> None:
    frames = [
        PathChallenge(b"12345678"),
        PathResponse(b"abcdefgh"),
        Candidates(
            9,
            True,
            False,
            "port-restricted cone",
            (HOST, R_RELAY, Candidate(CandidateType.HOST, Address("2001:db8::7", 9))),
        ),
    ]
    assert decode_path_frames(encode_path_frames(frames)) == frames


addresses = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str)).flatmap(
    lambda h: st.integers(0, 65535).map(lambda p: Address(h, p))
)
candidates = st.builds(Candidate, st.sampled_from(list(CandidateType)), addresses)


@given(
    st.lists(
        st.one_of(
            st.binary(min_size=8, max_size=8).map(PathChallenge),
            st.binary(min_size=8, max_size=8).map(PathResponse),
            st.builds(
                Candidates,
                st.integers(0, 2**32 - 1),
                st.booleans(),
                st.booleans(),
                st.text(max_size=10),
                st.lists(candidates, max_size=16).map(tuple),
            ),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_path_frames_round_trip_property(frames: list[PathChallenge | PathResponse | Candidates]) -> None:
    assert decode_path_frames(encode_path_frames(frames)) == frames


@given(st.binary(max_size=200))
def test_path_frame_decoder_only_raises_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_path_frames(b"\xff" * 8 + data)


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"\xff" * 8,
        b"\xff" * 8 + b"\x07abc",
        b"\xff" * 8 + b"\x09" + bytes(6) + b"\x11",
        b"\xff" * 8 + b"\x33",
    ],
)
def test_malformed_path_frames_are_refused(bad: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_path_frames(bad)
