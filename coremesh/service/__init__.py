"""What every Core Mesh service (``coremesh-node``, ``coremesh-relay``, ``coremesh-bootstrap``) shares.

- :mod:`coremesh.service.logs` — structured logs on stderr (JSON lines or aligned text).
- :mod:`coremesh.service.settings` — flags > environment > config file > defaults: one-line argparse
  errors, TOML tables with checked keys, value parsers whose errors name where a value came from.
- here — exit codes, :class:`StartupError`, a one-line text for an ``OSError`` while binding, the
  installed version.

Services never import each other; they import this.
"""

from __future__ import annotations

import errno
import sys
from typing import Final

EXIT_OK: Final = 0
EXIT_RUNTIME: Final = 1
EXIT_CONFIG: Final = 2


class StartupError(Exception):
    """A service cannot start; ``exit_code`` says whether it is the configuration's fault (2) or not (1)."""

    def __init__(self, message: str, exit_code: int = EXIT_RUNTIME) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def fail(prog: str, message: str) -> None:
    """The one line an operator sees on stderr: ``PROG: error: MESSAGE``."""
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)


def os_error_text(exc: OSError) -> str:
    """A short reason for a failed bind or listen: ``address already in use``, ..."""
    if exc.errno == errno.EADDRINUSE:
        return "address already in use"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "address not available on this host"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return exc.strerror or str(exc)


def version() -> str:
    """The installed ``coremesh`` distribution's version, or ``unknown``."""
    try:
        from importlib.metadata import version as _dist_version

        return _dist_version("coremesh")
    except Exception:
        return "unknown"


__all__ = ["EXIT_CONFIG", "EXIT_OK", "EXIT_RUNTIME", "StartupError", "fail", "os_error_text", "version"]
