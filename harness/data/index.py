"""The manifest: one row per usable video, with its label, ids, split, length and frame rate.

Built from an FF++ tree (official layout and split files), from the synthetic tree, or from a CSV of
any videos. Unreadable videos are skipped with one warning each and never crash a run; a split that
would leak a fake and its real video into different splits is refused.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from harness.config.schema import FFPP_METHODS, DataConfig
from harness.errors import DataError
from harness.io import atomic_path

__all__ = [
    "MANIFEST_COLUMNS",
    "IndexResult",
    "index_ffpp",
    "read_manifest_csv",
    "write_manifest",
    "build_manifest",
    "probe_video",
]

MANIFEST_COLUMNS = ["path", "label", "video_id", "source_id", "target_id", "method", "split", "n_frames", "fps"]
SPLITS = ("train", "val", "test")
REAL_METHOD = "real"
DEFAULT_FPS = 25.0  # FF++ videos are mostly 25-30 fps; used when a frame folder has no fps.txt
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
_CACHE_VERSION = 2  # 2: n_frames/fps from container metadata (1 decoded with decord)


@dataclass
class IndexResult:
    manifest: pd.DataFrame
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def _warn(message: str) -> None:
    # tqdm.write keeps a running progress bar intact.
    tqdm.write(f"warning: {message}", file=sys.stderr)


def _report_skipped(skipped: list[tuple[str, str]], total: int) -> None:
    if skipped:
        reasons = pd.Series([reason.split(":")[0] for _, reason in skipped]).value_counts()
        summary = ", ".join(f"{n} {reason}" for reason, n in reasons.items())
        _warn(f"skipped {len(skipped)} of {total} videos: {summary}")


def list_frame_images(folder: Path) -> list[Path]:
    """The images of an extracted-frames folder, in frame order (sorted by name, as FF++ writes them)."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _probe_container(path: Path) -> tuple[int, float]:
    """(n_frames, fps) from the container's header, reading a few kilobytes and decoding nothing.

    Opening the file parses the header (an mp4 whose tail, with its moov, is cut off fails here); the last
    sample is then demuxed, which catches an mp4 whose header comes first but whose data was cut short.
    """
    import av

    if path.stat().st_size == 0:
        raise ValueError("empty file")
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        if not rate:
            raise ValueError("no frame rate in the container")
        n_frames = stream.frames
        if not n_frames:  # containers without a frame count (mkv, webm): duration x rate
            seconds = stream.duration * stream.time_base if stream.duration else (container.duration or 0) / av.time_base
            n_frames = round(seconds * rate)
        if n_frames > 0:
            last = (stream.start_time or 0) + int((n_frames - 1) / rate / stream.time_base)
            container.seek(last, stream=stream, any_frame=True, backward=True)
            packets = [p for p in container.demux(stream) if p.size]
            if not packets or any(p.is_corrupt for p in packets):
                raise ValueError(f"truncated: the container promises {n_frames} frames but its data ends early")
    return int(n_frames), float(rate)


def _probe_frames(folder: Path) -> tuple[int, float]:
    from PIL import Image

    if not folder.is_dir():
        raise ValueError("not a folder of frames")
    images = list_frame_images(folder)
    for image in images[:1] + images[-1:]:
        with Image.open(image) as im:
            im.verify()
    fps_file = folder / "fps.txt"
    fps = float(fps_file.read_text().strip()) if fps_file.is_file() else DEFAULT_FPS
    return len(images), fps


def probe_video(path: Path, backend: str = "auto") -> tuple[int, float]:
    """(n_frames, fps) of a folder of frames (backend frames) or a video file (any other backend); raises on bad input.

    Every video backend reads the same container metadata, so the manifest does not depend on the decoder.
    """
    return _probe_frames(path) if backend == "frames" else _probe_container(path)


def _probe_rows(rows: list[dict], backend: str, min_frames: int, progress: bool) -> tuple[list[dict], list[tuple[str, str]]]:
    """Fill n_frames/fps in each row; rows whose video cannot be read or is too short are skipped."""
    kept, skipped = [], []
    for row in tqdm(rows, desc="indexing videos", unit="video", disable=not progress):
        try:
            n_frames, fps = probe_video(Path(row["path"]), backend)
        except Exception as error:  # PyAV and PIL raise their own types; any failure means "unreadable"
            reason = f"unreadable: {str(error).splitlines()[0][:120] if str(error) else type(error).__name__}"
        else:
            if n_frames >= min_frames:
                kept.append({**row, "n_frames": n_frames, "fps": fps})
                continue
            reason = f"too short: {n_frames} frames < min_frames={min_frames}"
        _warn(f"skipping {row['path']} ({reason})")
        skipped.append((row["path"], reason))
    return kept, skipped


def _to_frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    return df.astype({"label": int, "n_frames": int, "fps": float}).reset_index(drop=True)


def _read_splits(root: Path) -> dict[str, str]:
    """Map each real id to its split, from the FF++ split files (lists of [id_a, id_b] pairs)."""
    split_dir = root / "splits"
    if not split_dir.is_dir():
        raise DataError(
            f"{split_dir} must exist with train.json, val.json and test.json, but it is missing; copy them "
            f"from the FaceForensics repository (dataset/splits) into {split_dir}"
        )
    id_split: dict[str, str] = {}
    problems = []
    for split in SPLITS:
        file = split_dir / f"{split}.json"
        if not file.is_file():
            problems.append(f"{file} must exist (a JSON list of [id_a, id_b] pairs), but it is missing")
            continue
        try:
            pairs = json.loads(file.read_text())
        except json.JSONDecodeError as error:
            problems.append(f"{file} must be valid JSON, but got: {error}")
            continue
        if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
            problems.append(f"{file} must be a JSON list of [id_a, id_b] pairs, but got {str(pairs)[:80]}")
            continue
        for video_id in (str(v) for pair in pairs for v in pair):
            if id_split.setdefault(video_id, split) != split:
                problems.append(
                    f"id {video_id} must sit in one split file, but it is in both "
                    f"{split_dir / (id_split[video_id] + '.json')} and {file}"
                )
    if problems:
        raise DataError(problems[0], problems)
    return id_split


def _sequence_path(folder: Path, compression: str, backend: str) -> Path:
    return folder / compression / ("images" if backend == "frames" else "videos")


def _list_stems(folder: Path, backend: str) -> list[str]:
    if not folder.is_dir():
        return []
    # Hidden entries are never videos: macOS copies leave "._000.mp4" resource forks and .DS_Store beside them.
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if backend == "frames":
        return sorted(p.name for p in entries if p.is_dir())
    return sorted(p.stem for p in entries if p.suffix == ".mp4")


def _video_path(folder: Path, stem: str, backend: str) -> Path:
    return folder / stem if backend == "frames" else folder / f"{stem}.mp4"


def _identity_leaks(shown: Iterable[tuple[dict, Sequence[str]]], homes: Mapping[str, tuple[str, str]]) -> list[str]:
    """One message per video that shows an identity whose home is another split.

    `shown` pairs each row with the identities (source/target ids) its video shows; `homes` maps an
    identity to (its split, where that split was set). A face seen in training must not be scored again
    in val or test, so a fake must sit with both of its real videos: FF++ and CSV manifests alike.
    """
    leaks = []
    for row, identities in shown:
        for identity in dict.fromkeys(identities):
            split, where = homes[identity]
            if split != row["split"]:
                leaks.append(
                    f"a video and every identity it shows must share a split, but {row['path']} is in {row['split']} "
                    f"and shows {identity}, which {where} puts in {split}"
                )
    return leaks


def _ffpp_rows(root: Path, methods: Sequence[str], compression: str, backend: str) -> tuple[list[dict], list[tuple[str, str]]]:
    """Rows (without n_frames/fps) for every real and fake video, each assigned to its split."""
    id_split = _read_splits(root)
    rows, skipped = [], []
    real_dir = _sequence_path(root / "original_sequences" / "youtube", compression, backend)
    if not real_dir.is_dir():
        raise DataError(f"{real_dir} must exist (FF++ layout, data.compression={compression}), but it is missing")
    for stem in _list_stems(real_dir, backend):
        path = _video_path(real_dir, stem, backend)
        if stem not in id_split:
            skipped.append((str(path), "in no split: its id is in none of the split files"))
            _warn(f"skipping {path} (its id {stem} is in no split file)")
            continue
        rows.append(dict(path=str(path), label=0, video_id=f"youtube/{stem}", source_id=stem, target_id=stem,
                         method=REAL_METHOD, split=id_split[stem]))
    for method in methods:
        fake_dir = _sequence_path(root / "manipulated_sequences" / method, compression, backend)
        stems = _list_stems(fake_dir, backend)
        if not stems:
            raise DataError(
                f"{fake_dir} must hold the videos of method {method} (data.methods), but it is "
                f"{'empty' if fake_dir.is_dir() else 'missing'}; download it, or leave it out of data.methods"
            )
        for stem in stems:
            path = _video_path(fake_dir, stem, backend)
            target, _, source = stem.partition("_")
            if not source:
                skipped.append((str(path), "bad name: a fake must be named TTT_SSS"))
                _warn(f"skipping {path} (a fake must be named <target>_<source>, but got {stem})")
                continue
            if target not in id_split or source not in id_split:
                skipped.append((str(path), "in no split: its ids are in none of the split files"))
                _warn(f"skipping {path} (ids {target}/{source} are in no split file)")
                continue
            rows.append(dict(path=str(path), label=1, video_id=f"{method}/{stem}", source_id=source,
                             target_id=target, method=method, split=id_split[target]))
    # The split files are the identities' home; a fake sits with its target, so its source must be there too.
    homes = {v: (split, f"{root / 'splits' / split}.json (real video {_video_path(real_dir, v, backend)})")
             for v, split in id_split.items()}
    leaks = _identity_leaks(((row, [row["target_id"], row["source_id"]]) for row in rows if row["label"]), homes)
    if leaks:
        raise DataError(leaks[0], leaks)
    return rows, skipped


def _methods_present(root: Path, compression: str, backend: str) -> list[str]:
    """FF++'s method folders under manipulated_sequences/ holding at least one video of this compression and layout.

    Other folders are named and left out: FF++'s download script also fetches DeepFakeDetection (Google's
    actor videos, fakes of original_sequences/actors, named unlike TTT_SSS), which is a separate data set.
    """
    folder = root / "manipulated_sequences"
    found = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")) if folder.is_dir() else []
    present = [m for m in found if _list_stems(_sequence_path(folder / m, compression, backend), backend)]
    others = [m for m in present if m not in FFPP_METHODS]
    if others:
        _warn(f"not indexing {', '.join(others)} under {folder}: not one of FF++'s methods of the youtube videos "
              f"({', '.join(FFPP_METHODS)}); name it in data.methods (or --methods) to index it anyway")
    return [m for m in present if m in FFPP_METHODS]


def _resolve_methods(root: Path, methods: Sequence[str] | None, compression: str, backend: str) -> list[str]:
    """`methods` as given, or (None) every method present, named on stderr: a partial download is normal."""
    if methods is not None:
        return list(methods)
    present = _methods_present(root, compression, backend)
    if not present:
        layout = "images/<frame folders>" if backend == "frames" else "videos/*.mp4"
        raise DataError(
            f"{root / 'manipulated_sequences'} must hold at least one method folder with "
            f"<Method>/{compression}/{layout}, but it holds none; download a manipulation method, "
            f"or check data.compression and data.backend"
        )
    tqdm.write(f"indexing methods present: {', '.join(present)}", file=sys.stderr)
    return present


def _check_root(root: Path) -> None:
    if not root.is_dir():
        raise DataError(
            f"data.root must be an existing FF++ tree, but {root} does not exist; download FF++ there, or set "
            f"data.source=synthetic to use the embedded data set"
        )


def index_ffpp(
    root: Path,
    methods: Sequence[str] | None = None,
    compression: str = "c23",
    backend: str = "auto",
    min_frames: int = 8,
    progress: bool = True,
) -> IndexResult:
    """Index an FF++-layout tree: every real and fake video with its split, skipping unreadable ones.

    `methods` None takes every method present under manipulated_sequences/; a method named that is
    missing is an error.
    """
    root = Path(root).resolve()
    _check_root(root)
    methods = _resolve_methods(root, methods, compression, backend)
    rows, skipped = _ffpp_rows(root, methods, compression, backend)
    kept, bad = _probe_rows(rows, backend, min_frames, progress)
    skipped += bad
    _report_skipped(skipped, len(rows) + len(skipped) - len(bad))
    return IndexResult(_to_frame(kept), skipped)


def _label_of(value: object, row: int, csv: Path) -> int:
    text = str(value).strip().lower()
    if text in ("0", "1", "0.0", "1.0"):
        return int(float(text))
    if text in ("real", "fake"):
        return int(text == "fake")
    raise DataError(f"{csv} row {row}: label must be 0/1 (or real/fake), but got {value!r}")


def read_manifest_csv(path: Path, min_frames: int = 8, progress: bool = True) -> pd.DataFrame:
    """Read a CSV of any videos (at least path,label,split); fill the other columns and skip bad files.

    Where the CSV gives source_id/target_id, an identity shown by videos of two splits is refused.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise DataError(f"data.manifest must be an existing CSV file, but {path} does not exist")
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ("path", "label", "split") if c not in raw.columns]
    if missing:
        raise DataError(f"{path} must have columns path,label,split, but it lacks {','.join(missing)}")
    rows, shown, homes = [], [], {}
    for i, record in enumerate(raw.to_dict("records"), start=2):  # row 1 is the header
        label = _label_of(record["label"], i, path)
        if record["split"] not in SPLITS:
            raise DataError(f"{path} row {i}: split must be one of {', '.join(SPLITS)}, but got {record['split']!r}")
        video = Path(record["path"])
        video = video if video.is_absolute() else (path.parent / video)
        stem = video.stem if video.suffix else video.name
        rows.append(dict(
            path=str(video.resolve()),
            label=label,
            video_id=record.get("video_id") or f"{video.parent.name}/{stem}",
            source_id=record.get("source_id") or stem,
            target_id=record.get("target_id") or stem,
            method=record.get("method") or ("fake" if label else REAL_METHOD),
            split=record["split"],
        ))
        # Only ids the CSV gives are identities: the stem fallbacks of two unrelated files may coincide.
        identities = [v for v in (record.get("target_id"), record.get("source_id")) if v]
        shown.append((rows[-1], identities))
        for identity in identities:
            homes.setdefault(identity, (record["split"], f"{path} row {i} ({rows[-1]['path']})"))
    duplicated = pd.Series([r["video_id"] for r in rows]).duplicated()
    if duplicated.any():
        first = rows[int(duplicated.to_numpy().argmax())]["video_id"]
        raise DataError(f"{path}: video_id must be unique, but {first!r} appears twice; add a video_id column")
    leaks = _identity_leaks(shown, homes)
    if leaks:
        raise DataError(leaks[0], leaks)
    kept, skipped = [], []
    for row in rows:  # a folder in the CSV is a folder of extracted frames
        backend = "frames" if Path(row["path"]).is_dir() else "auto"
        k, s = _probe_rows([row], backend, min_frames, progress=False)
        kept += k
        skipped += s
    _report_skipped(skipped, len(rows))
    return _to_frame(kept)


def write_manifest(df: pd.DataFrame, path: Path) -> None:
    """Write a manifest CSV atomically, so a concurrent reader never sees half a file."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def _file_stamps(root: Path, paths: Iterable[Path]) -> list[tuple[str, int, int]]:
    stamps = []
    for p in paths:
        st = p.stat()
        # A frame folder's mtime changes when images are added or removed; its size is not meaningful.
        stamps.append((str(p.relative_to(root)), 0 if p.is_dir() else st.st_size, st.st_mtime_ns))
    return stamps


def _cache_key(root: Path, methods: Sequence[str], compression: str, backend: str, min_frames: int) -> str:
    """Changes with any video or split file of the given (resolved) methods, so a method added later re-indexes."""
    folders = [_sequence_path(root / "original_sequences" / "youtube", compression, backend)]
    folders += [_sequence_path(root / "manipulated_sequences" / m, compression, backend) for m in methods]
    files = [_video_path(f, s, backend) for f in folders for s in _list_stems(f, backend)]
    files += sorted((root / "splits").glob("*.json"))
    # Every video backend probes the same container metadata: only the layout (videos or frame folders) matters.
    layout = "frames" if backend == "frames" else "videos"
    key = json.dumps([_CACHE_VERSION, str(root), list(methods), compression, layout, min_frames,
                      _file_stamps(root, files)])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _cached_index_ffpp(root: Path, methods: Sequence[str] | None, compression: str, backend: str, min_frames: int,
                       progress: bool) -> pd.DataFrame:
    """index_ffpp, reusing `<root>/.harness_manifest_<hash>.csv` while no video or split file changed."""
    root = Path(root).resolve()
    _check_root(root)
    methods = _resolve_methods(root, methods, compression, backend)
    cache = root / f".harness_manifest_{_cache_key(root, methods, compression, backend, min_frames)}.csv"
    skipped_file = cache.with_suffix(".skipped.json")
    if cache.is_file() and skipped_file.is_file():
        skipped = json.loads(skipped_file.read_text())
        if skipped:
            _warn(f"skipped {len(skipped)} videos (cached index {cache.name}; delete it to re-probe)")
        return pd.read_csv(cache, dtype={"video_id": str, "source_id": str, "target_id": str})
    result = index_ffpp(root, methods, compression, backend, min_frames, progress)
    try:
        write_manifest(result.manifest, cache)
        skipped_file.write_text(json.dumps(result.skipped))
    except OSError as error:  # a read-only data set still works, only slower next time
        _warn(f"cannot cache the manifest in {root} ({error}); the next run will probe the videos again")
    return result.manifest


def build_manifest(data_cfg: DataConfig, progress: bool = True) -> pd.DataFrame:
    """The manifest for `data_cfg.source`: ffpp tree, CSV file, or the synthetic tree (made on first use)."""
    if data_cfg.source == "csv":
        if data_cfg.manifest is None:
            raise DataError("data.source=csv needs data.manifest (a CSV with path,label,split), but got null")
        return read_manifest_csv(data_cfg.manifest, data_cfg.min_frames, progress)
    if data_cfg.source == "synthetic":
        from harness.data.synth import ensure_synthetic

        if data_cfg.backend == "frames":
            raise DataError("data.source=synthetic writes mp4 videos, so data.backend must be a video decoder "
                            "(auto, decord, pyav or torchcodec), but got frames")

        root = ensure_synthetic(data_cfg, progress)
        methods = data_cfg.synthetic.methods
    else:
        root, methods = Path(data_cfg.root), data_cfg.methods
    return _cached_index_ffpp(root, methods, data_cfg.compression, data_cfg.backend, data_cfg.min_frames, progress)
