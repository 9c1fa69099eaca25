"""Values as JSON: the one conversion behind the services' JSON logs and their admin APIs.

Both turn status dicts, counters, settings summaries and log fields into what ``json.dumps`` takes:
an enum becomes its value, a PeerId its text, any path address (``127.0.0.1:7946``,
``turn:...``, ...) its one-line text, a mapping a dict with text keys, any other collection a list,
and anything else unknown its ``str()``.

Bytes are the one thing the two contexts write differently, so the caller says which:

- ``binary="hex"`` in logs: people read them beside packet captures (tcpdump and Wireshark print
  hex), and hex has no ``=``, ``+`` or ``/``, so a text-format log value needs no quoting;
- ``binary="base64"`` in the admin APIs: it is their convention for binary data (``data_b64`` in
  ``POST /v1/send``, ``"encoding": "base64"`` in ``GET /v1/messages``), and half the size of hex.
"""

from __future__ import annotations

import base64
import enum
from typing import Any, Literal

from ..endpoint.paths import PathAddress
from ..identity import PeerId

BinaryEncoding = Literal["hex", "base64"]


def jsonable(value: Any, *, binary: BinaryEncoding) -> Any:
    """``value`` as plain JSON types (see the module docstring); bytes as ``binary``."""
    if isinstance(value, enum.Enum):
        return jsonable(value.value, binary=binary)
    if isinstance(value, PeerId):
        return value.to_text()
    if isinstance(value, PathAddress):
        return str(value)  # every kind of path address prints as one string, never as a tuple
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v, binary=binary) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v, binary=binary) for v in value]
    if isinstance(value, bytes):
        return value.hex() if binary == "hex" else base64.b64encode(value).decode("ascii")
    return str(value)


def state_text(state: Any) -> str:
    """A connection state (an enum, or already its text) as text: ``connected``, ``closed``, ..."""
    return str(state.value if isinstance(state, enum.Enum) else state)
