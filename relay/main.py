"""``coremesh-relay``: placeholder until the relay issue lands.

It prints the planned command line and says plainly that it is not implemented: exit status 2
(``--help`` exits 0 with the same note), so a deployment that starts it fails loudly, not silently.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Final

PROG: Final = "coremesh-relay"
USAGE: Final = f"""\
usage: {PROG} --listen HOST:PORT --admin HOST:PORT --realm REALM --user NAME:PASSWORD [--user ...]

Planned: a TURN-style relay (RFC 8656) for peers that cannot reach each other directly.
  --listen HOST:PORT       UDP/TCP address of the relay
  --admin HOST:PORT        admin HTTP API (loopback only by default)
  --realm REALM            authentication realm
  --user NAME:PASSWORD     a relay user (repeatable)
"""
NOTE: Final = f"{PROG}: not implemented yet: lands with the relay/discovery issue"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "-h" in args or "--help" in args:
        print(USAGE + "\n" + NOTE)
        return 0
    print(USAGE + "\n" + NOTE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
