"""Integrity helpers shared by training and sampling: tree checksums and exclusive file locks.

- :func:`tree_checksum` -- a sha256 over a pytree's leaves (path, dtype, shape and bytes, in tree
  order), computed on the host. Checkpoints store one per saved tree and verify it on restore
  (orbax itself does not checksum data); ``sample.py`` records the one of the params it loaded so
  a resumed run cannot mix two models.
- :class:`FileLock` -- an exclusive ``fcntl.flock`` on a lock file that records its holder (pid,
  host, time). The kernel drops the lock when the holding process dies, so a lock left by a killed
  process never blocks; a second holder is refused at once with a message naming the first.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import socket
import time
from typing import Any

import jax
import numpy as np

__all__ = ["tree_checksum", "host_array", "FileLock", "LockHeldError", "os_error_in_chain"]


def host_array(leaf: Any) -> np.ndarray:
    """A leaf's value on this host (a replicated, possibly multi-process array: its first shard)."""
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        leaf = leaf.addressable_data(0)
    return np.asarray(jax.device_get(leaf))


def tree_checksum(tree: Any) -> str:
    """sha256 (hex) over every leaf's key path, dtype, shape and bytes, in tree order.

    Two trees have the same checksum exactly when they have the same structure and bit-identical
    leaves, so it changes with any flipped byte of the data.
    """
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        array = np.ascontiguousarray(host_array(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def os_error_in_chain(error: BaseException) -> OSError | None:
    """The first ``OSError`` with an errno in ``error`` or its causes/contexts (None if there is none)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno is not None:
            return error
        error = error.__cause__ or error.__context__
    return None


class LockHeldError(RuntimeError):
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
