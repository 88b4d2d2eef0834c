"""Data: the synthetic FF++-shaped set, the manifest, clip sampling, frame readers, augmentation, loaders.

Heavy decoders (decord, PyAV) are imported inside the functions that use them.
"""

from harness.data.augment import ClipAugment
from harness.data.dataset import ClipDataset, Loaders, build_loaders, class_counts
from harness.data.index import IndexResult, build_manifest, index_ffpp, read_manifest_csv, write_manifest
from harness.data.readers import DecordReader, FrameFolderReader, make_reader
from harness.data.sampling import clip_span, sample_segment_indices, spread_window_starts
from harness.data.synth import ensure_synthetic, generate_synthetic

__all__ = [
    "ClipAugment",
    "ClipDataset",
    "Loaders",
    "build_loaders",
    "class_counts",
    "IndexResult",
    "build_manifest",
    "index_ffpp",
    "read_manifest_csv",
    "write_manifest",
    "DecordReader",
    "FrameFolderReader",
    "make_reader",
    "clip_span",
    "sample_segment_indices",
    "spread_window_starts",
    "ensure_synthetic",
    "generate_synthetic",
]
