"""Clips for training and evaluation, and the three DataLoaders of a run."""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, WeightedRandomSampler

from harness.config.schema import DataConfig
from harness.data.augment import ClipAugment, augment_on_device, draw_clip_params
from harness.data.cache import CachedReader, frame_cache_for, snap_to_stride
from harness.data.device_batch import collate_clips, decode_on_device
from harness.data.face_crops import reader_for
from harness.data.frame_codec import encode_frames
from harness.data.sampling import clip_span, sample_segment_indices, spread_window_starts
from harness.data.samplers import StratifiedEpochSampler
from harness.errors import DataError

__all__ = ["ClipDataset", "DrawSampler", "Loaders", "class_counts", "build_loaders"]

log = logging.getLogger(__name__)


class ClipDataset(Dataset):
    """`clips_per_video` clips per manifest row; item i is clip i % k of video i // k.

    `video_idx` in each item is the row of `self.manifest` (the given manifest, index reset).
    Training clips are drawn from a generator seeded by (seed, epoch, item, draw), so they do not
    depend on worker count or order; call `set_epoch` before iterating each epoch. `draw` numbers the
    times a sampler with replacement returns the same item in one epoch (see `DrawSampler`): index the
    dataset with (item, draw), or with a plain item for the first draw. Evaluation clips are fixed.

    A video that indexed fine but fails to decode now (a file damaged or replaced since) is marked
    bad and never read again. In training its clip is replaced by one of the next good video of the
    same label (`replaced` is true in the item); in evaluation the item comes back with `valid`
    false and the trainer leaves it out. More than `data.max_bad_fraction` bad videos is an error.
    """

    def __init__(
        self, manifest: pd.DataFrame, data_cfg: DataConfig, train: bool, seed: int, device_type: str = "cpu"
    ) -> None:
        self.manifest = manifest.reset_index(drop=True)
        self.train = train
        self.seed = seed
        self.n_segment = data_cfg.n_segment
        self.size = data_cfg.input_size
        self.clips_per_video = data_cfg.clips_per_video_train if train else data_cfg.clips_per_video_eval
        self._paths = self.manifest["path"].astype(str).tolist()
        self._labels = self.manifest["label"].astype(int).to_numpy()
        self._n_frames = self.manifest["n_frames"].astype(int).to_numpy()
        self._spans = [clip_span(fps, data_cfg.clip_seconds) for fps in self.manifest["fps"].astype(float)]
        self._stride = data_cfg.cache_stride
        n_frames = dict(zip(self._paths, self._n_frames.tolist()))
        self._reader = reader_for(data_cfg, n_frames)  # whole frames, or face crops with data.face_crop
        if data_cfg.cache:
            self._reader = CachedReader(frame_cache_for(data_cfg), self._reader, n_frames)
        self._augment = ClipAugment(data_cfg.augment) if train else None
        # Placed on the device (data.augment.run_on), items carry their clip's drawn parameters instead,
        # and the trainer applies a batch of them at once; `device_type` is the training device's.
        self._augment_cfg = data_cfg.augment
        # With data.decode_on device items carry the clip's cached JPEG frames (`jpeg`) instead of
        # pixels, so the clip can only be augmented on the device as well.
        self._decode_on_device = decode_on_device(data_cfg, device_type)
        self._augment_on_device = augment_on_device(data_cfg.augment.run_on, device_type) or self._decode_on_device
        # Shared memory: persistent DataLoader workers hold copies of this dataset, and must still see
        # the epoch the main process sets.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        # Shared too, so a video one worker found broken is skipped by the others and seen by the trainer.
        self._bad = torch.zeros(len(self.manifest), dtype=torch.uint8).share_memory_()
        self._max_bad = int(data_cfg.max_bad_fraction * len(self.manifest))

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = epoch

    @property
    def labels(self) -> np.ndarray:
        """Label of every item (not every video), in item order."""
        return np.repeat(self._labels, self.clips_per_video)

    def __len__(self) -> int:
        return len(self.manifest) * self.clips_per_video

    def _indices(self, index: int, video: int, clip: int, rng: np.random.Generator | None) -> np.ndarray:
        n_frames, span = int(self._n_frames[video]), self._spans[video]
        if rng is not None:
            indices = sample_segment_indices(n_frames, self.n_segment, span, rng)
        else:
            start = spread_window_starts(n_frames, span, self.clips_per_video)[clip]
            indices = sample_segment_indices(n_frames, self.n_segment, span, None, start=int(start))
        # Cache on or off, clips use only the frames a strided cache keeps, so the cache is a pure speed knob.
        return snap_to_stride(indices, self._stride)

    def bad_videos(self) -> list[str]:
        """Paths of the videos that failed to decode so far, in manifest order."""
        return [self._paths[i] for i in np.flatnonzero(self._bad.numpy())]

    def _mark_bad(self, video: int, error: DataError) -> None:
        self._bad[video] = 1
        n_bad = int(self._bad.sum())
        log.warning("skipping %s: %s", self._paths[video], str(error).splitlines()[0])
        if n_bad > self._max_bad:
            raise DataError(
                f"{n_bad} of {len(self._paths)} videos could not be read (failed to decode, or showed no face with "
                f"data.face_crop), more than data.max_bad_fraction allows "
                f"({self._max_bad}); the latest: {self._paths[video]}. Check the files or re-index"
            )

    def _read(self, video: int, index: int, clip: int, rng: np.random.Generator | None) -> np.ndarray | list | None:
        """The clip's frames (T JPEG byte arrays when decoding on the device), or None when the video is bad."""
        if self._bad[video]:
            return None
        read = self._reader.read_encoded if self._decode_on_device else self._reader.read
        try:
            return read(self._paths[video], self._indices(index, video, clip, rng), self.size)
        except DataError as error:
            self._mark_bad(video, error)
            return None

    def _stand_in(self, video: int) -> int | None:
        """The next good video of the same label, cyclically; None when there is none."""
        n = len(self._paths)
        for step in range(1, n):
            other = (video + step) % n
            if self._labels[other] == self._labels[video] and not self._bad[other]:
                return other
        return None

    def _train_rng(self, index: int, draw: int) -> np.random.Generator:
        # The first draw keeps the key (seed, epoch, item), so sampling without replacement draws the
        # clips it always drew; a repeated draw of the item gets a window and augmentation of its own.
        key = [self.seed, int(self._epoch[0]), index] + ([draw] if draw else [])
        return np.random.default_rng(key)

    def __getitem__(self, index: int | tuple[int, int]) -> dict:
        index, draw = index if isinstance(index, tuple) else (index, 0)
        if not 0 <= index < len(self) or draw < 0:
            raise IndexError(f"index must be in [0, {len(self)}) and draw >= 0, but got index={index}, draw={draw}")
        video, clip = divmod(index, self.clips_per_video)
        rng = self._train_rng(index, draw) if self.train else None
        frames, source, replaced = self._read(video, index, clip, rng), video, False
        while frames is None and self.train:
            # Same label keeps the batch's class balance; the same rng keeps the draw reproducible.
            source = self._stand_in(source)
            if source is None:
                raise DataError(f"every video labelled {self._labels[video]} in this split failed to decode")
            frames, replaced = self._read(source, index, clip, rng), True
        valid = frames is not None
        if not valid:
            frames = np.zeros((self.n_segment, self.size, self.size, 3), dtype=np.uint8)
            if self._decode_on_device:
                frames = [np.frombuffer(blob, dtype=np.uint8).copy() for blob in encode_frames(frames, "jpeg", 75)]
        pixels: dict[str, torch.Tensor | list[torch.Tensor]]
        if self._decode_on_device:
            pixels = {"jpeg": [torch.from_numpy(blob) for blob in frames]}  # T encoded frames (writable copies)
        else:
            pixels = {"clip": torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)}  # (T, 3, H, W)
        augment: torch.Tensor | None = None
        if self._augment is not None and self._augment.active:
            # The augmentation draws from torch's RNG; seeding it from this item's generator makes it
            # reproducible too. Both placements draw alike from the same seed, so they augment alike.
            torch_seed = int(rng.integers(2**63 - 1))
            if self._augment_on_device:
                augment = draw_clip_params(self._augment_cfg, torch.Generator().manual_seed(torch_seed))
            else:
                with torch.random.fork_rng(devices=[]):  # leaves the global stream untouched
                    torch.manual_seed(torch_seed)
                    pixels["clip"] = self._augment(pixels["clip"])
        if "clip" in pixels:
            pixels["clip"] = pixels["clip"].contiguous()
        item = {
            **pixels,
            "label": torch.tensor(float(self._labels[video]), dtype=torch.float32),
            "video_idx": video,
            "valid": valid,
            "replaced": replaced,
        }
        if augment is not None:
            item["augment"] = augment  # (K,) see augment.PARAM_NAMES; the trainer applies it
        return item


class DrawSampler(Sampler[tuple[int, int]]):
    """Yields (item, draw) for each item of `base`: draw counts the item's earlier draws in this pass.

    A sampler with replacement (the balanced one) returns a minority video several times an epoch;
    numbering the draws lets `ClipDataset` give each its own window and augmentation. The count
    restarts with every pass and depends only on `base`'s order, so it is the same for any number of
    loader workers, after reseeding, and after the out-of-memory back-off rebuilds the loader around it.
    """

    def __init__(self, base: Sampler[int]) -> None:
        self.base = base

    @property
    def generator(self) -> torch.Generator | None:
        """The base sampler's generator, which the trainer reseeds from (seed, epoch)."""
        return getattr(self.base, "generator", None)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        drawn: Counter[int] = Counter()
        for item in self.base:
            yield item, drawn[item]
            drawn[item] += 1

    def __len__(self) -> int:
        return len(self.base)


def class_counts(manifest: pd.DataFrame, split: str) -> tuple[int, int]:
    """(n_real, n_fake) videos in `split`."""
    labels = manifest.loc[manifest["split"] == split, "label"].astype(int)
    return int((labels == 0).sum()), int((labels == 1).sum())


@dataclass
class Loaders:
    train: DataLoader
    val: DataLoader
    test: DataLoader
    train_dataset: ClipDataset
    val_dataset: ClipDataset
    test_dataset: ClipDataset

    def with_batch_size(self, batch_size: int) -> Loaders:
        """The same datasets and samplers in batches of `batch_size` (the out-of-memory back-off).

        Reusing the datasets keeps what they learnt about bad videos; reusing the samplers keeps the
        item order, so half-size batches accumulated twice cover the same clips.
        """

        def rebatch(loader: DataLoader) -> DataLoader:
            return DataLoader(
                loader.dataset, batch_size=batch_size, sampler=loader.sampler, num_workers=loader.num_workers,
                pin_memory=loader.pin_memory, persistent_workers=loader.persistent_workers,
                worker_init_fn=loader.worker_init_fn, generator=loader.generator, drop_last=False,
                collate_fn=loader.collate_fn,
            )

        return Loaders(rebatch(self.train), rebatch(self.val), rebatch(self.test), self.train_dataset,
                       self.val_dataset, self.test_dataset)


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; numpy and random follow from it.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _balanced_sampler(
    dataset: ClipDataset, generator: torch.Generator, num_samples: int | None = None
) -> WeightedRandomSampler:
    """Weights 1/class size, so each class is expected to fill half of every batch; `num_samples` draws (default: one per item)."""
    labels = dataset.labels
    counts = np.bincount(labels, minlength=2)
    if (counts == 0).any():
        raise DataError(f"data.sampler=balanced needs both classes in the train split, but got counts (real, fake) = {tuple(counts)}")
    weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.double)
    num_samples = len(dataset) if num_samples is None else num_samples
    return WeightedRandomSampler(weights, num_samples=num_samples, replacement=True, generator=generator)


def build_loaders(
    manifest: pd.DataFrame,
    data_cfg: DataConfig,
    batch_size: int,
    seed: int,
    device_type: str = "cpu",
    *,
    clips_per_epoch: int | None = None,
) -> Loaders:
    """Train/val/test loaders over the manifest's splits; train shuffles (or balances) with a seeded generator.

    With `clips_per_epoch` (train.clips_per_epoch) a train epoch is that many clips drawn, stratified
    by label (or balanced with data.sampler=balanced), instead of one pass over every item.
    """
    datasets = {}
    for split in ("train", "val", "test"):
        rows = manifest[manifest["split"] == split]
        if rows.empty:
            raise DataError(f"split {split!r} must hold videos, but the manifest has none; check the split files")
        datasets[split] = ClipDataset(rows, data_cfg, train=split == "train", seed=seed, device_type=device_type)
    # The sampler gets its own generator: the DataLoader also draws worker seeds from the generator it
    # is given, once per epoch without persistent workers but once in all with them, which would make
    # the order depend on num_workers.
    generator = torch.Generator().manual_seed(seed)
    # DrawSampler numbers repeated items, so a budget above the train size repeats no clip window.
    if data_cfg.sampler == "balanced":
        sampler = DrawSampler(_balanced_sampler(datasets["train"], generator, clips_per_epoch))
    elif clips_per_epoch is not None:
        sampler = DrawSampler(StratifiedEpochSampler(datasets["train"].labels, clips_per_epoch, generator))
    else:
        sampler = DrawSampler(RandomSampler(datasets["train"], generator=generator))
    common = dict(
        batch_size=batch_size,
        num_workers=data_cfg.num_workers,
        pin_memory=device_type == "cuda",
        persistent_workers=data_cfg.num_workers > 0,
        worker_init_fn=_seed_worker,
        drop_last=False,
        collate_fn=collate_clips,  # keeps encoded frames (data.decode_on device) a list
    )
    train = DataLoader(datasets["train"], sampler=sampler, generator=torch.Generator().manual_seed(seed + 1), **common)
    val = DataLoader(datasets["val"], shuffle=False, generator=torch.Generator().manual_seed(seed), **common)
    test = DataLoader(datasets["test"], shuffle=False, generator=torch.Generator().manual_seed(seed), **common)
    return Loaders(train, val, test, datasets["train"], datasets["val"], datasets["test"])
