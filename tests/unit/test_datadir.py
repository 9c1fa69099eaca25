"""The data dir lock (coremesh.datadir) and MeshNode's use of it, in one process.

Across processes (the services, a SIGKILLed holder) see tests/integration/test_operators.py.
"""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from coremesh import ConfigError, DataDirLocked, MeshConfig, MeshNode
from coremesh.datadir import LOCK_FILE_NAME, lock_data_dir
from coremesh.errors import IdentityError, LocalProtocolError, MeshError


def test_lock_creates_the_dir_and_writes_the_pid(tmp_path: Path) -> None:
    data_dir = tmp_path / "new" / "dir"
    with lock_data_dir(data_dir) as lock:
        assert lock.held
        assert (data_dir / LOCK_FILE_NAME).read_text() == f"{os.getpid()}\n"
        assert data_dir.stat().st_mode & 0o777 == 0o700
    assert not lock.held
    assert (data_dir / LOCK_FILE_NAME).read_text() == ""  # released: no holder named


def test_a_second_lock_is_refused_until_the_first_is_released(tmp_path: Path) -> None:
    first = lock_data_dir(tmp_path)
    with pytest.raises(DataDirLocked) as caught:
        lock_data_dir(tmp_path)
    err = caught.value
    assert isinstance(err, LocalProtocolError) and isinstance(err, MeshError)
    assert err.pid == os.getpid() and err.data_dir == tmp_path
    assert str(tmp_path) in str(err) and f"PID {os.getpid()}" in str(err)
    first.release()
    first.release()  # idempotent
    lock_data_dir(tmp_path).release()


def test_a_lock_file_naming_a_dead_process_does_not_block(tmp_path: Path) -> None:
    (tmp_path / LOCK_FILE_NAME).write_text("999999999\n")  # what a killed holder leaves behind
    with lock_data_dir(tmp_path):
        assert (tmp_path / LOCK_FILE_NAME).read_text() == f"{os.getpid()}\n"


def test_an_unusable_data_dir_is_an_identity_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(IdentityError, match="cannot create data dir"):
        lock_data_dir(blocker / "sub")


def test_two_mesh_nodes_on_one_data_dir(tmp_path: Path) -> None:
    config = MeshConfig(listen_addr="127.0.0.1:0", data_dir=tmp_path / "node")

    async def body() -> None:
        first = MeshNode(config)
        with pytest.raises(DataDirLocked):
            MeshNode(config)
        await first.start()
        with pytest.raises(DataDirLocked):
            MeshNode(config)
        await first.stop()  # gives the dir up
        second = MeshNode(config)
        assert second.peer_id == first.peer_id
        with pytest.raises(DataDirLocked):
            await first.start()  # a stopped node takes the lock again to restart
        await second.stop()
        await first.start()
        await first.stop()

    asyncio.run(body())


def test_a_corrupt_identity_gives_the_lock_back(tmp_path: Path) -> None:
    key = tmp_path / "identity.key"
    key.write_bytes(b"coremesh-ed25519-v1\nnot base64!\n")
    key.chmod(0o600)
    config = MeshConfig(listen_addr="127.0.0.1:0", data_dir=tmp_path)
    with pytest.raises(IdentityError):
        MeshNode(config)
    lock_data_dir(tmp_path).release()  # not left held by the failed constructor


def test_a_node_that_fails_to_start_gives_the_lock_back(tmp_path: Path) -> None:
    """Its UDP address is taken: start() raises, and the data dir is free for the next node."""
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("127.0.0.1", 0))
    try:
        taken = f"127.0.0.1:{busy.getsockname()[1]}"

        async def body() -> None:
            failed = MeshNode(MeshConfig(listen_addr=taken, data_dir=tmp_path))  # kept: not collected
            with pytest.raises(ConfigError):
                async with failed:
                    pass
            await MeshNode(MeshConfig(listen_addr="127.0.0.1:0", data_dir=tmp_path)).stop()
            assert failed.peer_id  # still referenced here

        asyncio.run(body())
    finally:
        busy.close()


def test_a_cancelled_stop_still_releases_the_socket_and_the_lock(tmp_path: Path) -> None:
    async def body() -> None:
        config = MeshConfig(listen_addr="127.0.0.1:0", data_dir=tmp_path / "a")
        async with MeshNode(MeshConfig(listen_addr="127.0.0.1:0")) as b:
            a = MeshNode(config)
            await a.start()
            await a.connect(b.peer_id, b.local_address)
            stopping = asyncio.ensure_future(a.stop())
            await asyncio.sleep(0)  # the stop is under way: closes sent, lingering for the answers
            stopping.cancel()
            with pytest.raises(asyncio.CancelledError):
                await stopping
            await MeshNode(config).stop()  # the data dir is free again

    asyncio.run(body())
