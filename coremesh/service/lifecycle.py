"""The run of a service process: start, serve until SIGTERM or SIGINT, shut down within a bound.

A second signal during shutdown ends the process at once (the default handlers are restored before
shutting down), so an operator is never stuck behind a slow shutdown.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

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
