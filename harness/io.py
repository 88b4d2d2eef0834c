"""Files that several processes share: writes that readers never see half done, and locks between processes.

`atomic_path` hands out a temporary path beside the target and renames it over the target once the
writer returns, so a reader sees the old file or the new one, never a torn one, and a writer killed
mid-write leaves the target as it was. Any writer that takes a path works through it (`np.savez`,
`torch.save`, `DataFrame.to_csv`, `Path.write_bytes`); `write_text_atomic` is the common case.

`file_lock` is a kernel lock (flock, through the `filelock` package) on a lock file that stays in
place: the kernel drops it when its holder dies, so a killed worker never leaves it held.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

__all__ = ["atomic_path", "write_text_atomic", "file_lock"]


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """A temporary path to write `path`'s new content to; renamed over `path` when the block ends without error.

    On any exception (an interrupt too) the temporary file is removed and the exception goes on, leaving
    `path` untouched. The parent folder is created if missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder, so the rename stays on one filesystem and is atomic. The pid and a random token keep two
    # writers of one target apart, whether in two processes or two threads of one. The target's suffix stays
    # last: np.savez appends ".npz" to a name without it, and to_csv picks its compression from it.
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        yield tmp
        # No fsync: what we guard against is a killed process, not a power cut, and a checkpoint per
        # epoch should not wait on the disk.
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path | str, text: str) -> Path:
    """Write `text` (UTF-8) to `path` through `atomic_path`; returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


@contextmanager
def file_lock(path: Path | str, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive lock on the file `path` for the block: yields True once held, or, when not
    `blocking`, False at once if another holder has it (the block then runs without the lock). The lock
    file and its folder are created if missing and left in place.

    Each call takes its own lock, as a fresh flock on its own descriptor does: two calls on one path
    exclude each other even in one process (between threads too), so a non-blocking try inside a held
    lock yields False, and a blocking one in the same thread raises RuntimeError rather than wait on itself.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # fallback_to_soft=False: on a filesystem without flock, fail as flock does rather than fall back to a
    # marker file, which the kernel does not release when its holder dies.
    lock = FileLock(path, fallback_to_soft=False)
    try:
        lock.acquire(blocking=blocking)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()
