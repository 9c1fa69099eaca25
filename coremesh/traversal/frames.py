"""Path frames: connectivity checks and candidate exchange, inside authenticated transport packets.

They travel in their own packet-number space, outside the reliable stream: a transport plaintext
that starts with :data:`PATH_PREFIX` (the varint 2^62−1, a packet number the stream never reaches)
is followed by path frames. They are neither acknowledged nor retransmitted nor congestion
controlled: a lost check is simply the next check, and candidates are re-sent until answered::

    PATH_CHALLENGE 0x07 token:8              (QUIC's PATH_CHALLENGE, RFC 9000 §19.17)
    PATH_RESPONSE  0x08 token:8              (RFC 9000 §19.18)
    CANDIDATES     0x09 round:u32 flags:u8 nat_len:u8 nat:utf-8 count:u8
                        (kind:u8 family:u8 ip:4|16 port:u16)*

``flags`` bit 0: this CANDIDATES answers the peer's (do not answer it again); bit 1: the sender
does not take direct paths (its connection is pinned to a relay).
Every malformation raises :class:`~coremesh.errors.DecodeError`.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Final, NamedTuple

from ..addr import Address
from ..errors import DecodeError
from .candidates import Candidate, CandidateType

PATH_PREFIX: Final = b"\xff" * 8
MAX_WIRE_CANDIDATES: Final = 16
MAX_NAT_TYPE: Final = 48
FLAG_REPLY: Final = 1
FLAG_PINNED: Final = 2

_ROUND = struct.Struct(">IBB")


class PathChallenge(NamedTuple):
    token: bytes


class PathResponse(NamedTuple):
    token: bytes


class Candidates(NamedTuple):
    round: int
    reply: bool
    pinned: bool
    nat_type: str
    candidates: tuple[Candidate, ...]


PathFrame = PathChallenge | PathResponse | Candidates


def encode_path_frames(frames: list[PathFrame] | tuple[PathFrame, ...]) -> bytes:
    """The plaintext of one path packet (prefix and frames)."""
    parts = [PATH_PREFIX]
    for frame in frames:
        if isinstance(frame, PathChallenge | PathResponse):
            if len(frame.token) != 8:
                raise ValueError("a path token is 8 bytes")
            parts.append((b"\x07" if isinstance(frame, PathChallenge) else b"\x08") + frame.token)
        else:
            nat = frame.nat_type.encode("utf-8")[:MAX_NAT_TYPE]
            cands = frame.candidates[:MAX_WIRE_CANDIDATES]
            flags = (FLAG_REPLY if frame.reply else 0) | (FLAG_PINNED if frame.pinned else 0)
            parts.append(b"\x09" + _ROUND.pack(frame.round & 0xFFFFFFFF, flags, len(nat)) + nat)
            parts.append(bytes((len(cands),)))
            for cand in cands:
                packed = ipaddress.ip_address(cand.address.host).packed
                parts.append(bytes((int(cand.kind), 6 if len(packed) == 16 else 4)) + packed)
                parts.append(cand.address.port.to_bytes(2, "big"))
    return b"".join(parts)


def is_path_packet(plaintext: bytes) -> bool:
    return plaintext[:8] == PATH_PREFIX


def decode_path_frames(plaintext: bytes) -> list[PathFrame]:
    """Decode the frames after :data:`PATH_PREFIX`; hostile input raises ``DecodeError`` only."""
    if not is_path_packet(plaintext):
        raise DecodeError("not a path packet")
    data = plaintext
    pos, end = 8, len(data)
    frames: list[PathFrame] = []
    try:
        while pos < end:
            kind = data[pos]
            pos += 1
            if kind in (0x07, 0x08):
                if pos + 8 > end:
                    raise DecodeError("truncated path token")
                token = data[pos : pos + 8]
                frames.append(PathChallenge(token) if kind == 0x07 else PathResponse(token))
                pos += 8
            elif kind == 0x09:
                if pos + _ROUND.size > end:
                    raise DecodeError("truncated CANDIDATES")
                rnd, flags, nat_len = _ROUND.unpack_from(data, pos)
                pos += _ROUND.size
                if nat_len > MAX_NAT_TYPE or pos + nat_len + 1 > end:
                    raise DecodeError("bad CANDIDATES NAT type")
                nat = data[pos : pos + nat_len].decode("utf-8")
                pos += nat_len
                count = data[pos]
                pos += 1
                if count > MAX_WIRE_CANDIDATES:
                    raise DecodeError(f"{count} candidates (at most {MAX_WIRE_CANDIDATES})")
                cands: list[Candidate] = []
                for _ in range(count):
                    if pos + 2 > end:
                        raise DecodeError("truncated candidate")
                    ckind, family = data[pos], data[pos + 1]
                    pos += 2
                    size = {4: 4, 6: 16}.get(family)
                    if size is None or pos + size + 2 > end:
                        raise DecodeError("bad candidate address")
                    ip = ipaddress.ip_address(data[pos : pos + size])
                    pos += size
                    port = int.from_bytes(data[pos : pos + 2], "big")
                    pos += 2
                    try:
                        ctype = CandidateType(ckind)
                    except ValueError:
                        raise DecodeError(f"unknown candidate type {ckind}") from None
                    cands.append(Candidate(ctype, Address(str(ip), port)))
                frames.append(
                    Candidates(rnd, bool(flags & FLAG_REPLY), bool(flags & FLAG_PINNED), nat, tuple(cands))
                )
            else:
                raise DecodeError(f"unknown path frame type 0x{kind:02x}")
    except UnicodeDecodeError:
        raise DecodeError("CANDIDATES NAT type is not UTF-8") from None
    if not frames:
        raise DecodeError("path packet without frames")
    return frames
