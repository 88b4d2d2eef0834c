"""Atomic writes and file locks, with real processes where processes are the point."""

from __future__ import annotations

import gzip
import multiprocessing as mp
import os
import signal
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.io import atomic_path, file_lock, write_text_atomic

_FORK = mp.get_context("fork")


def _leftovers(folder: Path, *keep: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def test_atomic_path_renames_over_the_target_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "blob.bin"  # the folder is created
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target and str(os.getpid()) in tmp.name
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert _leftovers(target.parent, "blob.bin") == []


def test_a_crash_mid_write_leaves_the_target_unchanged_and_no_temp(tmp_path: Path) -> None:
    target = write_text_atomic(tmp_path / "state.json", "old")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_path(target) as tmp:
            tmp.write_text("half of the n")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert _leftovers(tmp_path, "state.json") == []


def test_an_interrupt_mid_write_also_removes_the_temp(tmp_path: Path) -> None:
    target = tmp_path / "ckpt.pt"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"x" * 10)
            raise KeyboardInterrupt
    assert not target.exists() and _leftovers(tmp_path) == []


def test_a_writer_that_writes_nothing_fails_loudly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        with atomic_path(tmp_path / "never.txt"):
            pass
    assert _leftovers(tmp_path) == []


def test_two_writers_of_one_target_in_one_process_get_different_temps(tmp_path: Path) -> None:
    target = tmp_path / "x.txt"
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second
        first.write_text("first")
        second.write_text("second")
    assert target.read_text() == "first"  # the inner block renames first, the outer one last
    assert _leftovers(tmp_path, "x.txt") == []


def test_path_writers_see_the_targets_suffix(tmp_path: Path) -> None:
    # np.savez appends ".npz" to any other name, and to_csv picks its compression from the suffix.
    with atomic_path(tmp_path / "boxes.npz") as tmp:
        np.savez(tmp, boxes=np.arange(6).reshape(3, 2))
    with np.load(tmp_path / "boxes.npz") as z:
        assert z["boxes"].tolist() == [[0, 1], [2, 3], [4, 5]]
    with atomic_path(tmp_path / "table.csv.gz") as tmp:
        pd.DataFrame({"a": [1, 2]}).to_csv(tmp, index=False)
    assert gzip.decompress((tmp_path / "table.csv.gz").read_bytes()).decode().split() == ["a", "1", "2"]
    assert _leftovers(tmp_path, "boxes.npz", "table.csv.gz") == []


def _write_repeatedly(target: Path, text: str, start: mp.synchronize.Event, times: int) -> None:
    start.wait()
    for _ in range(times):
        write_text_atomic(target, text)


def _save_config_repeatedly(target: Path, header: str, start: mp.synchronize.Event, times: int) -> None:
    from harness.config import Config
    from harness.config.loading import save_config

    start.wait()
    for _ in range(times):
        save_config(Config(), target, header=header)


def _race(writer, target: Path, payloads: list[str], expected: set[str], times: int = 100) -> None:
    """Two processes write `target` at once while this one reads it: every read is one writer's whole text."""
    start = _FORK.Event()
    children = [_FORK.Process(target=writer, args=(target, p, start, times)) for p in payloads]
    for child in children:
        child.start()
    start.set()
    reads = 0
    while any(child.is_alive() for child in children):
        if target.exists():
            assert target.read_text() in expected, "a reader saw a torn or mixed file"
            reads += 1
    for child in children:
        child.join()
    assert [child.exitcode for child in children] == [0, 0], "a writer raised"
    assert target.read_text() in expected and reads > 0
    assert _leftovers(target.parent, target.name) == []


def test_two_processes_writing_one_target_never_tear_it(tmp_path: Path) -> None:
    payloads = ["a" * 300_000, "b" * 500_000]  # long enough that a shared temp name would interleave
    _race(_write_repeatedly, tmp_path / "state.json", payloads, set(payloads))


def test_two_processes_saving_one_config_never_tear_it(tmp_path: Path) -> None:
    from harness.config import Config
    from harness.config.loading import to_yaml

    headers = ["\n".join(["writer a"] * 20_000), "\n".join(["writer b"] * 30_000)]
    _race(_save_config_repeatedly, tmp_path / "config.yaml", headers, {to_yaml(Config(), h) for h in headers}, 30)


def _count_under_lock(lock: Path, counter: Path, start: mp.synchronize.Event, times: int) -> None:
    start.wait()
    for _ in range(times):
        with file_lock(lock) as held:
            assert held
            n = int(counter.read_text())  # read-modify-write: loses counts unless the lock excludes
            counter.write_text(str(n + 1))


def test_file_lock_excludes_across_processes(tmp_path: Path) -> None:
    lock, counter = tmp_path / "count.lock", tmp_path / "count"
    counter.write_text("0")
    start = _FORK.Event()
    children = [_FORK.Process(target=_count_under_lock, args=(lock, counter, start, 150)) for _ in range(2)]
    for child in children:
        child.start()
    start.set()
    for child in children:
        child.join(timeout=120)
    assert [child.exitcode for child in children] == [0, 0]
    assert counter.read_text() == "300"
    assert lock.exists()  # left in place, so every waiter locks the same inode


def _hold(lock: Path, held: mp.synchronize.Event, release: mp.synchronize.Event) -> None:
    with file_lock(lock):
        held.set()
        release.wait(timeout=60)


def test_a_non_blocking_try_skips_while_another_process_holds_the_lock(tmp_path: Path) -> None:
    lock = tmp_path / "video" / ".lock"
    held, release = _FORK.Event(), _FORK.Event()
    holder = _FORK.Process(target=_hold, args=(lock, held, release))
    holder.start()
    try:
        assert held.wait(timeout=30)
        with file_lock(lock, blocking=False) as got:
            assert got is False
    finally:
        release.set()
        holder.join(timeout=30)
    assert holder.exitcode == 0
    with file_lock(lock, blocking=False) as got:
        assert got is True


def test_a_killed_holder_releases_the_lock(tmp_path: Path) -> None:
    lock = tmp_path / "storage.harness-lock"
    held, never = _FORK.Event(), _FORK.Event()
    holder = _FORK.Process(target=_hold, args=(lock, held, never))
    holder.start()
    assert held.wait(timeout=30)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(timeout=30)
    with file_lock(lock, blocking=False) as got:
        assert got is True


def _try_lock(lock: Path, seen: list[bool]) -> None:
    with file_lock(lock, blocking=False) as got:
        seen.append(got)


def test_one_process_excludes_itself_like_a_fresh_flock(tmp_path: Path) -> None:
    lock = tmp_path / ".lock"
    with file_lock(lock) as outer:
        assert outer is True
        with file_lock(lock, blocking=False) as inner:
            assert inner is False  # no re-entry: the frame cache relies on a second try skipping
        with pytest.raises(RuntimeError, match="[Dd]eadlock"):
            with file_lock(lock):
                pass
        seen: list[bool] = []
        other = threading.Thread(target=_try_lock, args=(lock, seen))
        other.start()
        other.join()
        assert seen == [False]
    with file_lock(lock, blocking=False) as again:
        assert again is True
