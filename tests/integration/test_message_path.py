"""The hot path cannot silently grow hops: the files one message crosses, on two real nodes.

``message_path.trace_one_message`` records every coremesh file entered from ``Connection.send`` to
the socket send, and from the socket read to ``Connection._deliver``. The limits are the counts the
hot-path work reached (issue 11: send 14 -> 9, receive 16 -> 13); lower them when a change removes a
hop, never raise them without a reason in the commit.
"""

from __future__ import annotations

from .aio import run
from .message_path import trace_one_message

MAX_SEND_FILES = 9
MAX_RECEIVE_FILES = 11
CONNECTION = "coremesh/mesh/connection.py"


def test_one_message_crosses_few_files_each_way() -> None:
    trace = run(trace_one_message)
    assert trace.send[0] == CONNECTION, trace.send
    assert trace.receive[-1] == CONNECTION, trace.receive
    # The trace sees the work itself: the session seals on the way out and opens on the way in.
    assert "coremesh/secure/session.py" in trace.send, trace.send
    assert "coremesh/secure/session.py" in trace.receive, trace.receive
    assert len(trace.send) <= MAX_SEND_FILES, trace.send
    assert len(trace.receive) <= MAX_RECEIVE_FILES, trace.receive
