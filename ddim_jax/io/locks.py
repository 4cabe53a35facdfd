"""Exclusive file locks (``fcntl.flock``) that record their holder (pid, host, time).

The kernel drops the lock when the holding process dies, so a lock left by a killed process never
blocks; a second holder is refused at once with a message naming the first.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time

from ddim_jax.errors import UserError


class LockHeldError(UserError, RuntimeError):
    """Another live process holds the lock; ``holder`` describes it (pid, host, start time)."""

    def __init__(self, path: str, holder: str):
        super().__init__(f"{path} is held by {holder}")
        self.path = path
        self.holder = holder


class FileLock:
    """An exclusive, non-blocking ``fcntl.flock`` on ``path`` (created if missing).

    ``acquire()`` raises :class:`LockHeldError` at once when another process (or another
    ``FileLock`` on the same path in this process) holds it. The file holds a JSON line naming the
    holder. ``release()`` removes the file while still holding the lock; a process that had opened
    the removed file notices (its inode is no longer the path's) and retries on the new one.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._fd: int | None = None

    def acquire(self) -> FileLock:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise LockHeldError(self.path, self._read_holder()) from None
                raise
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder released (and removed) it between our open and flock: retry
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(record) + "\n").encode())
        self._fd = fd
        return self

    def _read_holder(self) -> str:
        try:
            with open(self.path) as handle:
                record = json.loads(handle.read() or "{}")
            return f"pid {record['pid']} on host {record['host']} (since {record['since']})"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.remove(self.path)
        except OSError:
            pass
        os.close(self._fd)  # closing drops the flock
        self._fd = None

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
