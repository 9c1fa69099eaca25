"""The run of a service process: start, serve until SIGTERM or SIGINT, shut down within a bound.

A second signal during shutdown ends the process at once (the default handlers are restored before
shutting down), so an operator is never stuck behind a slow shutdown.
"""

from __future__ import annotations

import abc
import asyncio
import signal
from collections.abc import Awaitable, Callable

from .logs import EventLogger

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def serve_until_signalled(
    start: Callable[[], Awaitable[None]],
    shutdown: Callable[[], Awaitable[None]],
    stopped: asyncio.Event,
    on_signal: Callable[[signal.Signals], None],
    *,
    timeout: float,
    after_failed_start: Callable[[], Awaitable[None]] | None = None,
) -> bool:
    """Run ``start()``, wait for ``stopped`` (``on_signal`` is expected to set it), then ``shutdown()``.

    If ``start()`` raises, ``after_failed_start()`` (if given) releases what it had opened, within
    ``timeout``, and the exception propagates. Returns False if ``shutdown()`` overran ``timeout``.
    """
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        try:
            await start()
        except BaseException:
            if after_failed_start is not None:
                await asyncio.wait_for(after_failed_start(), timeout)
            raise
        await stopped.wait()
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        await asyncio.wait_for(shutdown(), timeout)
    except TimeoutError:
        return False
    return True


class SignalledService(abc.ABC):
    """A service process: :meth:`run` starts it, serves until SIGTERM or SIGINT and shuts it down
    within ``shutdown_timeout``; the first signal takes readiness away at once (:meth:`not_ready`).
    Log events are ``<name>.stopping`` and ``<name>.stop_timeout``."""

    name: str = "service"
    shutdown_timeout: float = 10.0

    def __init__(self, log: EventLogger) -> None:
        self._stop = asyncio.Event()
        self._log = log

    async def run(self) -> int:
        """Exit status: 0 after a clean shutdown, 1 if it overran its bound."""
        done = await serve_until_signalled(
            self._start,
            self._shutdown,
            self._stop,
            self._on_signal,
            timeout=self.shutdown_timeout,
            after_failed_start=lambda: self._shutdown(quiet=True),
        )
        if not done:
            self._log.error(f"{self.name}.stop_timeout", seconds=self.shutdown_timeout)
            return 1
        return 0

    def _on_signal(self, sig: signal.Signals) -> None:
        self._log.info(f"{self.name}.stopping", signal=sig.name)
        self.not_ready()
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @abc.abstractmethod
    async def _start(self) -> None:
        """Open everything; raise :class:`~coremesh.service.StartupError` when it cannot."""

    @abc.abstractmethod
    async def _shutdown(self, *, quiet: bool = False) -> None:
        """Close everything that was opened (also after a failed start, then ``quiet``)."""

    @abc.abstractmethod
    def not_ready(self) -> None:
        """Readiness goes to 503: the service is stopping."""
