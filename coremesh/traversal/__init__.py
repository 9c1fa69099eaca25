"""NAT traversal: candidates, path frames and the per-connection agent (all sans-IO)."""

from .agent import (
    CloseProbeSockets,
    Mode,
    OpenProbeSockets,
    SendCandidates,
    SendChallenge,
    Target,
    TraversalAction,
    TraversalAgent,
    TraversalConfig,
    UseDirect,
    UseRelay,
)
from .candidates import Candidate, CandidateType, candidate_priority, pair_priority
from .frames import (
    Candidates,
    PathChallenge,
    PathResponse,
    decode_path_frames,
    encode_path_frames,
    is_path_packet,
)

__all__ = [
    "Candidate",
    "CandidateType",
    "Candidates",
    "CloseProbeSockets",
    "Mode",
    "OpenProbeSockets",
    "PathChallenge",
    "PathResponse",
    "SendCandidates",
    "SendChallenge",
    "Target",
    "TraversalAction",
    "TraversalAgent",
    "TraversalConfig",
    "UseDirect",
    "UseRelay",
    "candidate_priority",
    "decode_path_frames",
    "encode_path_frames",
    "is_path_packet",
    "pair_priority",
]
