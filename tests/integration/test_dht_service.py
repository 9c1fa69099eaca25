"""The DHT's asyncio shell over real loopback sockets: the own record's sequence number across
restarts."""

from __future__ import annotations

import asyncio
import time
import types
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from coremesh import MeshConfig, MeshNode
from coremesh.dht import service as dht_service

pytestmark = pytest.mark.integration

T = TypeVar("T")


def run(coro_fn: Callable[[], Awaitable[T]], timeout: float = 90.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro_fn(), timeout)

    return asyncio.run(bounded())


async def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def _stats(node: MeshNode) -> dict[str, int]:
    stats: dict[str, int] = node.dht_status()["stats"]
    return stats


@pytest.mark.parametrize("crashed", [False, True], ids=["stopped", "crashed"])
def test_a_restart_with_the_clock_set_back_publishes_a_record_the_holders_accept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crashed: bool
) -> None:
    """A node restarted on its data dir with its wall clock ten minutes behind (and on a new port)
    still publishes a record newer than the one the network holds: the holder stores it (no STALE)
    and serves the new address. ``crashed``: the node died before it saved its routing table (the
    snapshot, which also holds the own record, is gone); the sequence number alone survives."""

    async def body() -> None:
        holder = MeshNode(MeshConfig(listen_addr="127.0.0.1:0"))
        await holder.start()
        try:
            config = MeshConfig(
                listen_addr="127.0.0.1:0",
                data_dir=tmp_path / "a",
                bootstrap_peers=(str(holder.local_address),),
            )
            first = MeshNode(config)
            await first.start()
            try:
                await wait_for(
                    lambda: _stats(holder).get("records_accepted", 0) == 1, 20, "the first record stored"
                )
                old = await holder.lookup(first.peer_id, timeout=10)
                first_address = first.local_address
            finally:
                await first.stop()
            assert old.addresses == (("host", str(first_address)),)
            if crashed:
                (tmp_path / "a" / dht_service.SNAPSHOT_FILE).unlink()

            # The same data dir, the wall clock set back by ten minutes.
            behind = types.SimpleNamespace(time=lambda: time.time() - 600.0)
            monkeypatch.setattr(dht_service, "time", behind)
            again = MeshNode(config)
            await again.start()
            try:
                assert again.peer_id == first.peer_id and again.local_address != first_address
                await wait_for(
                    lambda: (
                        _stats(holder).get("records_accepted", 0) >= 2
                        or _stats(holder).get("drop_stale_seq", 0) >= 1
                    ),
                    20,
                    "the holder to answer the second STORE",
                )
                stats = _stats(holder)
                assert stats.get("drop_stale_seq", 0) == 0, stats
                assert stats["records_accepted"] == 2, stats
                new = await holder.lookup(again.peer_id, timeout=10)
                assert new.seq > old.seq
                assert new.addresses == (("host", str(again.local_address)),)
            finally:
                await again.stop()
        finally:
            await holder.stop()

    run(body)
