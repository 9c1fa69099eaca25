"""``coremesh-bootstrap``: placeholder until the discovery issue lands.

It prints the planned command line and says plainly that it is not implemented: exit status 2
(``--help`` exits 0 with the same note), so a deployment that starts it fails loudly, not silently.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Final

PROG: Final = "coremesh-bootstrap"
USAGE: Final = f"""\
usage: {PROG} --listen HOST:PORT --data-dir DIR --admin HOST:PORT

Planned: a well-known node that answers peer discovery (DHT) queries so new nodes can join the mesh.
  --listen HOST:PORT       UDP address of the bootstrap node
  --data-dir DIR           directory of its identity key (created if missing)
  --admin HOST:PORT        admin HTTP API (loopback only by default)
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
