"""Wire error codes carried by CLOSE frames and ``RemoteProtocolError.code``.

The numbering follows the QUIC transport error codes of RFC 9000 §20.1 where a QUIC code fits;
``MESSAGE_TOO_LARGE`` is ours.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["ErrorCode"]


class ErrorCode(IntEnum):
    """Why a reliability layer ends a connection."""

    NO_ERROR = 0x00
    INTERNAL_ERROR = 0x01
    FLOW_CONTROL_ERROR = 0x03
    FRAME_ENCODING_ERROR = 0x07
    PROTOCOL_VIOLATION = 0x0A
    MESSAGE_TOO_LARGE = 0x100
