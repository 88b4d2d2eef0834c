"""Files that several processes share: writes that readers never see half done, and locks between processes.

`atomic_path` hands out a temporary path beside the target and renames it over the target once the
writer returns, so a reader sees the old file or the new one, never a torn one, and a writer killed
mid-write leaves the target as it was. Any writer that takes a path works through it (`np.savez`,
`torch.save`, `DataFrame.to_csv`, `Path.write_bytes`); `write_text_atomic` is the common case.

A write that finds the disk full (ENOSPC, or EDQUOT past a quota) ends in `DiskFull`, one line naming the folder,
the file, the space left there and, where the caller knows it, the config key that moves the file elsewhere.
`reserve_blocks` makes a memory-mapped writer fail that way too, instead of dying of SIGBUS.

`file_lock` is a kernel lock (flock, through the `filelock` package) on a lock file that stays in
place: the kernel drops it when its holder dies, so a killed worker never leaves it held.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from harness.errors import DiskFull

__all__ = ["atomic_path", "write_text_atomic", "file_lock", "reporting_disk_full", "is_disk_full", "reserve_blocks"]

# No room left on the device, or in the user's quota on it: the same remedy either way.
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(error: BaseException) -> bool:
    """Whether `error`, or an error it was raised from or while handling, says the disk (or quota) is full.

    The chain matters: torch.save turns the file object's OSError into a RuntimeError raised while handling it.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, DiskFull) or (isinstance(current, OSError) and current.errno in _DISK_FULL):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _disk_full_error(path: Path, setting: str | None) -> DiskFull:
    folder = path.parent
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB free"
    except OSError:
        free = "free space unknown"
    elsewhere = f" or point {setting} elsewhere" if setting else ""
    # "disk full: <folder>" first, so the line reads the same as a sweep trial's fail_reason.
    return DiskFull(f"disk full: {folder} has no room to write {path.name} ({free}); free space there{elsewhere}",
                    folder)


@contextmanager
def reporting_disk_full(path: Path | str, setting: str | None = None) -> Iterator[None]:
    """Turn a full disk met in the block into `DiskFull` naming `path`; `setting` is the config key that moves it.

    Other errors, and a DiskFull already raised inside (it names its own file), go on unchanged.
    """
    try:
        yield
    except Exception as error:
        if isinstance(error, DiskFull) or not is_disk_full(error):
            raise
        raise _disk_full_error(Path(path), setting) from error


def reserve_blocks(path: Path | str) -> None:
    """Give the file at `path` real disk blocks for its whole length, so a full disk is an OSError here.

    A file mapped into memory (np.memmap) is sparse until written; storing into a page the disk has no room
    for kills the process with SIGBUS, which no except clause sees and which leaves the temporary file behind.
    """
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as error:
        # A filesystem without fallocate (EOPNOTSUPP, EINVAL) just stays sparse, as before; only no room is an error.
        if error.errno in _DISK_FULL:
            raise
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: Path | str, setting: str | None = None) -> Iterator[Path]:
    """A temporary path to write `path`'s new content to; renamed over `path` when the block ends without error.

    On any exception (an interrupt too) the temporary file is removed and the exception goes on, leaving
    `path` untouched; a full disk goes on as `DiskFull`, whose message names `setting` (the config key that
    moves the file elsewhere) when given. The parent folder is created if missing.
    """
    path = Path(path)
    # Same folder, so the rename stays on one filesystem and is atomic. The pid and a random token keep two
    # writers of one target apart, whether in two processes or two threads of one. The target's suffix stays
    # last: np.savez appends ".npz" to a name without it, and to_csv picks its compression from it.
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp{path.suffix}")
    with reporting_disk_full(path, setting):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            yield tmp
            # No fsync: what we guard against is a killed process, not a power cut, and a checkpoint per
            # epoch should not wait on the disk.
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def write_text_atomic(path: Path | str, text: str, setting: str | None = None) -> Path:
    """Write `text` (UTF-8) to `path` through `atomic_path` (`setting` as there); returns the path."""
    path = Path(path)
    with atomic_path(path, setting) as tmp:
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
