"""The one timer a shell keeps for its sans-IO core.

Every core says when it next needs to run (``get_timer()``) and is then called with the current time
(``handle_timer(now)``). :class:`CoreTimer` is that loop in one place, so that every shell re-arms
the same way: a deadline that did not change costs nothing, ``None`` cancels, and the callback gets
a ``now`` that is never before the deadline it was armed for. asyncio may run a handle up to its
clock resolution early; a core called "early" would find nothing due and ask for the same deadline
again, spinning until the clock catches up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class CoreTimer:
    """One re-armable deadline on an event loop, in the core's clock.

    ``offset`` converts between the clocks: core time = ``loop.time() + offset`` (a core that runs on
    wall-clock time passes ``time.time() - loop.time()``).
    """

    __slots__ = ("_handle", "_loop", "_offset", "_on_fire", "_when")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_fire: Callable[[float], None],
        *,
        offset: float = 0.0,
    ) -> None:
        self._loop = loop
        self._on_fire = on_fire
        self._offset = offset
        self._handle: asyncio.TimerHandle | None = None
        self._when: float | None = None

    @property
    def when(self) -> float | None:
        """The armed deadline in the core's clock, or None."""
        return self._when

    def now(self) -> float:
        """The current time in the core's clock."""
        return self._loop.time() + self._offset

    def arm(self, when: float | None) -> None:
        """Run the callback at ``when`` (core clock) instead of any earlier deadline; None cancels."""
        if when == self._when and (when is None or self._handle is not None):
            return
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._when = when
        if when is not None:
            self._handle = self._loop.call_at(when - self._offset, self._fire, when)

    def cancel(self) -> None:
        self.arm(None)

    def _fire(self, when: float) -> None:
        self._handle = None
        self._when = None
        self._on_fire(max(self.now(), when))
