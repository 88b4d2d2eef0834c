"""A disk that really fills up: a small tmpfs mounted in the test's folder, filled by the writes themselves or by
a ballast file. Checkpoints, frame-cache entries and a sweep must end with one line naming the folder, keep what
was written before, and leave no temporary file behind.

Mounting needs root (or CAP_SYS_ADMIN); where it is refused the tests are skipped and say so.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
import yaml
from mlflow import MlflowClient
from torch.utils.data import DataLoader, Subset

from harness.cli import main
from harness.config.schema import DataConfig
from harness.data.cache import FrameCache, build_cache, frame_cache_for
from harness.data.dataset import ClipDataset
from harness.data.index import index_ffpp
from harness.data.readers import DecordReader
from harness.errors import DataError, DiskFull
from harness.io import write_text_atomic
from harness.sweep.storage import open_storage
from harness.sweep.trial import disk_full_reason
from harness.train.checkpoint import load_checkpoint, save_checkpoint
from helpers import ROOT, tiny_overrides, write_space

pytestmark = pytest.mark.faults

MiB = 2**20
_PAGE = 4096


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """Mounts a tmpfs of the given size in bytes (each call a new one); all are unmounted at teardown."""
    if shutil.which("mount") is None:
        pytest.skip("disk-full tests need the `mount` command to mount a small tmpfs, but it is not installed")
    mounted: list[Path] = []

    def mount(size: int) -> Path:
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        done = _run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder))
        if done.returncode != 0:
            pytest.skip(f"disk-full tests need to mount a small tmpfs, but `mount` refused: {done.stderr.strip()}")
        mounted.append(folder)
        return folder

    try:
        yield mount
    finally:
        for folder in mounted:
            # Lazily if something still holds a file open there (a memory map), so teardown never fails on it.
            if _run("umount", str(folder)).returncode != 0:
                _run("umount", "-l", str(folder))


def _resize(disk: Path, size: int) -> None:
    done = _run("mount", "-o", f"remount,size={size}", str(disk))
    assert done.returncode == 0, done.stderr


def _fill(disk: Path, leave: int) -> None:
    """Write a ballast file until only `leave` bytes of `disk` are free."""
    with open(disk / "ballast", "ab", buffering=0) as ballast:
        while (free := shutil.disk_usage(disk).free) > leave:
            ballast.write(b"\0" * min(free - leave, MiB))


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp" in p.name]


def _one_line(error: BaseException) -> str:
    lines = str(error).splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# --- checkpoints ------------------------------------------------------------------------------------------


def test_a_checkpoint_larger_than_the_free_space_raises_disk_full_and_keeps_the_previous_one(small_disk) -> None:
    disk = small_disk(4 * MiB)
    path = disk / "runs" / "trial-3" / "last.pt"
    previous = {"model": {"w": torch.arange(256 * 1024, dtype=torch.float32)}, "epoch": 1}  # 1 MiB
    save_checkpoint(previous, path)

    bigger = {"model": {"w": torch.ones(2 * 1024 * 1024, dtype=torch.float32)}, "epoch": 2}  # 8 MiB
    with pytest.raises(DiskFull) as caught:
        save_checkpoint(bigger, path)

    line = _one_line(caught.value)
    assert line.startswith(f"disk full: {path.parent} has no room to write last.pt (")
    assert "MiB free" in line and line.endswith("free space there or point train.output_dir elsewhere")
    assert caught.value.folder == path.parent
    cause = caught.value.__cause__
    while cause is not None and not isinstance(cause, OSError):  # torch.save wraps the OSError in a RuntimeError
        cause = cause.__context__
    assert cause is not None and cause.errno == errno.ENOSPC, "the error must come from the disk, not be made up"
    # The previous checkpoint is whole and loads safely; no torn temporary file is left beside it.
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]
    loaded = torch.load(path, weights_only=True)
    assert loaded["epoch"] == 1 and torch.equal(loaded["model"]["w"], previous["model"]["w"])
    assert load_checkpoint(path)["epoch"] == 1


def test_a_disk_already_full_fails_small_writes_too_and_keeps_the_old_files(small_disk) -> None:
    disk = small_disk(2 * MiB)
    run = disk / "runs" / "run-1"
    save_checkpoint({"epoch": torch.tensor(1)}, run / "best.pt")
    write_text_atomic(run / "run_state.json", '{"epoch": 1}')
    _fill(disk, leave=0)

    with pytest.raises(DiskFull, match=re.escape(f"disk full: {run} has no room to write best.pt (")):
        save_checkpoint({"epoch": torch.tensor(2), "w": torch.ones(4096)}, run / "best.pt")
    with pytest.raises(DiskFull, match="run_state.json") as caught:
        write_text_atomic(run / "run_state.json", '{"epoch": 2}')  # even one byte needs a page
    assert caught.value.folder == run and "(0 MiB free)" in _one_line(caught.value)
    assert _temporaries(disk) == []
    assert torch.load(run / "best.pt", weights_only=True)["epoch"] == 1
    assert (run / "run_state.json").read_text() == '{"epoch": 1}'


def test_harness_train_on_a_full_disk_prints_one_line_and_exits_2(synthetic_root, tmp_path, small_disk, capsys) -> None:
    disk = small_disk(256 * 1024)  # the run's config.yaml fits, its first checkpoint does not
    overrides = [*tiny_overrides(synthetic_root, disk), "train.epochs=1", "data.cache=false"]
    argv = ["train", "--config", str(ROOT / "baseline.yaml"), "--no-track", "--quiet", "--run-dir", str(disk / "run")]
    assert main([*argv, *(item for o in overrides for item in ("--set", o))]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # not the indexing line
    assert len(err) == 1 and err[0].startswith(f"harness train: error: disk full: {disk / 'run'} has no room to write ")
    assert err[0].endswith("point train.output_dir elsewhere")
    assert sorted(p.name for p in (disk / "run").iterdir()) == ["config.yaml"]


# --- frame cache ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifest(synthetic_root: Path) -> pd.DataFrame:
    return index_ffpp(synthetic_root, ["Deepfakes"], progress=False).manifest


@pytest.mark.parametrize("frame_format", ["raw", "jpeg"])
def test_a_cache_entry_that_fills_the_disk_raises_disk_full_and_leaves_no_partial_entry(
    manifest, small_disk, frame_format
) -> None:
    disk = small_disk(8 * MiB)
    # 128 px: a raw entry of 24 frames is 1.2 MB, a jpeg one tens of KB; either outgrows the 8 KiB left below.
    cache = FrameCache(disk / "cache", size=128, frame_format=frame_format)
    first, second = (str(p) for p in manifest["path"][:2])
    assert cache.ensure(first, 24, DecordReader()) is True
    kept = np.array(cache.load(first))
    _fill(disk, leave=2 * _PAGE)

    # Raw entries are memory-mapped: without their blocks claimed first, this would kill the process (SIGBUS).
    with pytest.raises(DiskFull) as caught:
        cache.ensure(second, 24, DecordReader())

    line = _one_line(caught.value)
    entry = cache.entry_path(second)
    assert line.startswith(f"disk full: {entry.parent} has no room to write {entry.name} (")
    assert "data.cache_dir" in line and caught.value.folder == entry.parent
    assert not isinstance(caught.value, DataError), "a full disk is not the video's fault"
    assert not cache.has(second) and _temporaries(disk) == []
    assert np.array_equal(cache.load(first), kept)
    if frame_format == "raw":
        assert np.array_equal(kept, DecordReader().read(first, np.arange(24), 128))
    assert list(cache.decode_counts()) == [os.path.abspath(first)]


class _FillingReader:
    """Decodes for real, but first fills the disk with a ballast file: another program taking the space while
    the cache is being built, after the build's own free-space check passed."""

    def __init__(self, disk: Path, after_reads: int) -> None:
        self.disk, self.after_reads, self.reads = disk, after_reads, 0
        self.decoder = DecordReader()

    def read(self, path: str, indices: np.ndarray, size: int) -> np.ndarray:
        self.reads += 1
        if self.reads > self.after_reads:
            _fill(self.disk, leave=0)
        return self.decoder.read(path, indices, size)


def test_a_full_disk_stops_the_cache_build_and_marks_no_video_bad(synthetic_root, manifest, small_disk) -> None:
    disk = small_disk(16 * MiB)
    cfg = DataConfig(source="ffpp", root=synthetic_root, methods=["Deepfakes"], input_size=64, n_segment=4,
                     clip_seconds=1.0, cache_dir=disk / "cache", backend="decord", cache_format="raw")
    with pytest.raises(DiskFull) as caught:
        build_cache(manifest, cfg, progress=False, reader=_FillingReader(disk, after_reads=3))
    line = _one_line(caught.value)
    assert line.startswith(f"disk full: {disk / 'cache'}") and "data.cache_dir" in line

    cache = frame_cache_for(cfg)
    built = [str(p) for p in manifest["path"] if cache.has(str(p))]
    # Three built before the ballast; a fourth may have claimed its blocks just before it came.
    assert 3 <= len(built) < len(manifest), "the entries built before the disk filled are kept"
    assert _temporaries(disk) == []
    for video in built:
        assert np.array_equal(cache.load(video), DecordReader().read(video, np.arange(24), 64))

    # A run reading through the cache stops with the same error rather than skipping the video as undecodable.
    dataset = ClipDataset(manifest, cfg, train=False, seed=0)
    unbuilt = next(i for i, p in enumerate(manifest["path"]) if str(p) not in built)
    with pytest.raises(DiskFull) as in_process:
        dataset[unbuilt * dataset.clips_per_video]
    assert dataset.bad_videos() == []
    # From a loader worker the error arrives rebuilt from its traceback: still a DiskFull of the same one line.
    batches = iter(DataLoader(Subset(dataset, [unbuilt * dataset.clips_per_video]), num_workers=1))
    with pytest.raises(DiskFull) as from_worker:
        next(batches)
    del batches  # its worker exits now, not at teardown
    assert from_worker.value.folder is None and _one_line(from_worker.value) == _one_line(in_process.value)
    assert disk_full_reason(from_worker.value) == disk_full_reason(in_process.value) == str(in_process.value)


# --- a sweep ----------------------------------------------------------------------------------------------


def test_a_sweep_fails_the_trial_that_finds_the_disk_full_and_keeps_the_study(
    synthetic_root, tmp_path, small_disk, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    disk = small_disk(512 * MiB)  # tmpfs takes memory only as it is written
    space = write_space(tmp_path, synthetic_root, {"type": "none"}, epochs=2)
    tiny = yaml.safe_load((tmp_path / "tiny.yaml").read_text())
    tiny["train"]["output_dir"] = str(disk / "runs")
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    # The study and the runs live off the small disk: what is tested is the trial's own writes.
    journal, uri = str(tmp_path / "optuna.journal"), f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = ["sweep", "--space", str(space), "--storage", journal, "--study-name", "d", "--tracking-uri", uri, "--quiet"]
    trial_dir = disk / "runs" / "sweeps" / "d"

    assert main([*common, "--trials", "1"]) == 0
    first = torch.load(trial_dir / "trial-0" / "last.pt", weights_only=True)
    # Room for a few more pages but not for the next trial's checkpoints.
    _resize(disk, shutil.disk_usage(disk).used + 16 * _PAGE)
    capsys.readouterr()
    assert main([*common, "--trials", "2", "--max-failures", "1"]) == 1  # stopped cleanly, not crashed
    assert "stopping: 1 failed trials reached --max-failures 1" in capsys.readouterr().out

    study = optuna.load_study(study_name="d", storage=open_storage(journal))
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL"]
    reason = trials[1].user_attrs["fail_reason"]
    assert reason.startswith(f"disk full: {trial_dir / 'trial-1'} has no room to write ")
    assert reason.endswith("or point train.output_dir elsewhere") and "\n" not in reason
    client = MlflowClient(uri)
    failed = client.get_run(trials[1].user_attrs["mlflow_run_id"])
    assert failed.info.status == "FAILED" and failed.data.tags["optuna.reason"] == reason
    assert client.get_run(trials[0].user_attrs["mlflow_run_id"]).info.status == "FINISHED"
    # Trial 0's checkpoints are untouched and nothing half-written is left on the disk.
    assert _temporaries(disk) == []
    for name in ("last.pt", "best.pt"):
        torch.load(trial_dir / "trial-0" / name, weights_only=True)
    again = torch.load(trial_dir / "trial-0" / "last.pt", weights_only=True)
    assert again["epoch"] == first["epoch"] == 2
    assert all(torch.equal(again["model"][k], first["model"][k]) for k in first["model"])

    # Space freed, the same command goes on with the same study.
    _resize(disk, 512 * MiB)
    assert main([*common, "--trials", "2"]) == 0
    study = optuna.load_study(study_name="d", storage=open_storage(journal))
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE", "FAIL", "COMPLETE"]
