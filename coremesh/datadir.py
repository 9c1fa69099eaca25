"""One data dir, one process: an advisory lock on ``DATA_DIR/lock``.

A data dir holds an identity (``identity.key``) and what a node saved (its DHT routing table). Two
processes on one dir would run with the same PeerId: the second one's signed record (a higher
sequence number) would shadow the first one's in the DHT. So whoever uses a data dir takes
:func:`lock_data_dir` *before* loading the identity, and holds it for as long as it runs:
:class:`coremesh.MeshNode` (``coremesh-node``, ``coremesh-bootstrap``) and ``coremesh-relay``.

The lock is ``flock(LOCK_EX | LOCK_NB)`` on ``DATA_DIR/lock``, which holds the owner's PID (for the
error message only: the lock, not the file, is the truth). The kernel drops the lock when its
process ends, however it ends, so a lock file left behind by a killed process never blocks a new
start. ``flock`` locks belong to an open file, so a second lock of the same dir in the *same*
process is refused too (two ``MeshNode`` objects on one dir).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType
from typing import Final

from .errors import IdentityError, LocalProtocolError

LOCK_FILE_NAME: Final = "lock"


class DataDirLocked(LocalProtocolError):
    """Another process (or another object of this process) holds the data dir's lock.

    ``pid`` is the holder's process id as its lock file says, or None if it has not written it yet.
    """

    def __init__(self, data_dir: Path, pid: int | None) -> None:
        if pid is None:
            holder = "another process (PID unknown)"
        elif pid == os.getpid():
            holder = f"another MeshNode of this process (PID {pid})"
        else:
            holder = f"another process (PID {pid})"
        super().__init__(
            f"data dir {data_dir} is in use by {holder}; a data dir belongs to one process at a time"
        )
        self.data_dir = data_dir
        self.pid = pid


class DataDirLock:
    """A held lock on a data dir; :meth:`release` (or leaving the ``with`` block) gives it up."""

    def __init__(self, data_dir: Path, fd: int) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_FILE_NAME
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Give the lock up (idempotent). The file stays, emptied: the next owner writes its PID."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the last descriptor of the open file drops the flock

    def __enter__(self) -> DataDirLock:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def __del__(self) -> None:  # a lock object dropped without release(): give the lock up
        with contextlib.suppress(Exception):
            self.release()


def make_data_dir(data_dir: Path | str) -> Path:
    """Create ``data_dir`` (0700, parents too) if it does not exist; IdentityError if it cannot be."""
    data_dir = Path(data_dir)
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise IdentityError(f"cannot create data dir {data_dir}: {exc.strerror}") from None
    return data_dir


def lock_data_dir(data_dir: Path | str) -> DataDirLock:
    """Create ``data_dir`` (0700) if needed and lock it for this process.

    Raises :class:`DataDirLocked` if another process holds it, :class:`~coremesh.errors.IdentityError`
    if the directory or its lock file cannot be created (the same error as for the identity key).
    """
    data_dir = make_data_dir(data_dir)
    path = data_dir / LOCK_FILE_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise IdentityError(f"cannot open lock file {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _read_pid(fd)
        os.close(fd)
        raise DataDirLocked(data_dir, pid) from None
    except OSError as exc:
        os.close(fd)
        raise IdentityError(f"cannot lock {path}: {exc.strerror}") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    except OSError:
        pass  # the PID is for messages only; the lock is held all the same
    return DataDirLock(data_dir, fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


__all__ = ["LOCK_FILE_NAME", "DataDirLock", "DataDirLocked", "lock_data_dir"]
