"""CoreTimer: the shells' one way of re-arming a core's timer."""

from __future__ import annotations

import asyncio

from coremesh.aio.timer import CoreTimer


def test_fires_once_with_now_never_before_the_deadline() -> None:
    async def main() -> list[tuple[float, float]]:
        loop = asyncio.get_running_loop()
        fired: list[tuple[float, float]] = []
        done = asyncio.Event()
        timer = CoreTimer(loop, lambda now: (fired.append((now, when)), done.set()))
        when = loop.time() + 0.01
        timer.arm(when)
        timer.arm(when)  # the same deadline again: still one handle
        await asyncio.wait_for(done.wait(), 5)
        assert timer.when is None  # cleared before the callback ran
        return fired

    fired = asyncio.run(main())
    assert len(fired) == 1
    now, when = fired[0]
    assert now >= when


def test_rearm_replaces_and_none_cancels() -> None:
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        fired: list[float] = []
        done = asyncio.Event()

        def on_fire(now: float) -> None:
            fired.append(now)
            done.set()

        timer = CoreTimer(loop, on_fire)
        timer.arm(loop.time() + 60)
        timer.arm(loop.time() + 0.01)  # earlier: replaces the first
        await asyncio.wait_for(done.wait(), 5)
        done.clear()
        timer.arm(loop.time() + 0.01)
        timer.cancel()
        assert timer.when is None
        # A later timer proves the cancelled one had its chance to fire and did not.
        later = asyncio.Event()
        CoreTimer(loop, lambda now: later.set()).arm(loop.time() + 0.03)
        await asyncio.wait_for(later.wait(), 5)
        return fired

    assert len(asyncio.run(main())) == 1


def test_offset_converts_the_core_clock() -> None:
    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        result: asyncio.Future[float] = loop.create_future()
        offset = 1_000_000.0  # a core on "wall" time far ahead of the loop's clock
        timer = CoreTimer(loop, result.set_result, offset=offset)
        when = timer.now() + 0.01
        timer.arm(when)
        now = await asyncio.wait_for(result, 5)
        return now, when

    now, when = asyncio.run(main())
    assert now >= when
    assert now - when < 5
