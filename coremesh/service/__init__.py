"""What every Core Mesh service (``coremesh-node``, ``coremesh-relay``, ``coremesh-bootstrap``) shares.

- :mod:`coremesh.service.logs` — structured logs on stderr (JSON lines or aligned text).
- :mod:`coremesh.service.settings` — flags > environment > config file > defaults: one-line argparse
  errors, TOML tables with checked keys, value parsers whose errors name where a value came from.
- :mod:`coremesh.service.lifecycle` — serve until SIGTERM or SIGINT, shut down within a bound.
- :mod:`coremesh.service.admin` — the admin HTTP apps' runner, JSON errors and Prometheus registry.
- :mod:`coremesh.service.jsonable` — values as JSON, for the logs and the admin APIs.
- here — exit codes, :class:`StartupError`, :func:`service_main` (settings, logs, the event loop,
  one-line failures), a one-line text for an ``OSError`` while binding, the installed version.

Services never import each other; they import this.
"""

from __future__ import annotations

import asyncio
import errno
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

from ..errors import ConfigError

if TYPE_CHECKING:
    from .logs import EventLogger

EXIT_OK: Final = 0
EXIT_RUNTIME: Final = 1
EXIT_CONFIG: Final = 2
SettingsT = TypeVar("SettingsT", bound="ServiceSettings")


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


class ServiceSettings(Protocol):
    @property
    def log_format(self) -> str: ...
    @property
    def log_level(self) -> str: ...


def service_main(
    prog: str,
    resolve: Callable[[], SettingsT],
    serve: Callable[[SettingsT], Coroutine[Any, Any, int]],
    log: EventLogger,
) -> int:
    """A service process from start to exit status: settings (a bad one is one line and exit 2),
    logs, then ``serve(settings)`` on a new event loop. A failed start is one line and its exit code;
    an unexpected exception is one line for the operator and a traceback in the log (exit 1), as the
    event ``<service>.crashed`` (``node.crashed`` for ``coremesh-node``)."""
    from . import logs as service_logs

    try:
        settings = resolve()
    except ConfigError as exc:
        fail(prog, str(exc))
        return EXIT_CONFIG
    service_logs.configure(settings.log_format, settings.log_level)
    try:
        return asyncio.run(serve(settings))
    except StartupError as exc:
        fail(prog, str(exc))
        return exc.exit_code
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        return 130
    except Exception as exc:
        log.error(
            f"{prog.removeprefix('coremesh-')}.crashed", error=f"{type(exc).__name__}: {exc}", exc_info=True
        )
        fail(prog, f"unexpected error: {type(exc).__name__}: {exc}")
        return EXIT_RUNTIME


def version() -> str:
    """The installed ``coremesh`` distribution's version, or ``unknown``."""
    try:
        from importlib.metadata import version as _dist_version

        return _dist_version("coremesh")
    except Exception:
        return "unknown"


__all__ = [
    "EXIT_CONFIG",
    "EXIT_OK",
    "EXIT_RUNTIME",
    "StartupError",
    "fail",
    "os_error_text",
    "service_main",
    "version",
]
