"""The embedded FF++-shaped data set: moving face-like scenes, and fakes with short temporal artefacts.

Every real source yields one fake per method, as in FF++, so fakes outnumber reals by the number
of methods. A fake is the very scene of its target real video (drawn from the same seeded rng) with
a burst of `burst_frames` frames in which the face region carries a method-specific artefact that
changes from frame to frame: each frame alone looks plausible, the sequence does not. That is the
cue a temporal model (TSM) is meant to pick up and a per-frame average tends to wash out.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from tqdm import tqdm

from harness.config.schema import DataConfig, SyntheticConfig
from harness.errors import DataError
from harness.io import atomic_path, file_lock

__all__ = ["generate_synthetic", "ensure_synthetic", "deal_splits", "write_video", "COMPLETE_MARKER", "METADATA_FILE"]

COMPLETE_MARKER = ".complete"
METADATA_FILE = "synthetic.json"  # written first: proves the tree is ours before anything is deleted
_GENERATED_DIRS = ("original_sequences", "manipulated_sequences", "splits")
# Constant quantiser, not crf: crf's lookahead lets a burst change the coding of earlier frames.
_QP = "8"  # near-lossless, so the artefacts survive the encoder at 64x64
_SKIN_CELLS = 7  # skin detail grid across the face: fine enough to look like texture, coarse enough to survive h264


@dataclass(frozen=True)
class _Scene:
    """Everything drawn for one real video; its fakes reuse it unchanged."""

    texture: np.ndarray  # (2S, 2S, 3) float in [0, 1], panned under the frame
    pan: np.ndarray  # (F, 2) texture offset per frame, pixels
    centre: np.ndarray  # (F, 2) face centre per frame, pixels (x, y)
    radii: tuple[float, float]  # face ellipse half-width, half-height
    skin: np.ndarray  # (3,) face colour
    skin_texture: np.ndarray  # (S, S) float, fine detail in face coordinates


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int) -> np.ndarray:
    """Low-frequency noise: a coarse random grid upsampled bilinearly to (size, size, channels)."""
    import torch
    import torch.nn.functional as F

    grid = torch.from_numpy(rng.random((1, channels, cells, cells), dtype=np.float32))
    up = F.interpolate(grid, size=(size, size), mode="bicubic", align_corners=True)
    return up[0].permute(1, 2, 0).clamp(0, 1).numpy()  # (size, size, channels)


def _draw_scene(rng: np.random.Generator, cfg: SyntheticConfig) -> _Scene:
    s, n = cfg.size, cfg.frames
    t = np.arange(n, dtype=np.float64)[:, None]
    texture = 0.2 + 0.6 * _smooth_noise(rng, 2 * s, cells=8, channels=3)
    velocity = rng.uniform(-0.4, 0.4, size=2) * s / n
    wobble = rng.uniform(1, 3, size=2) * np.sin(t / n * 2 * np.pi + rng.uniform(0, 6.3, size=2))
    # Kept inside the (2S, 2S) texture, so the frame never shows the texture's edge.
    pan = np.clip(s / 2 + velocity * t + wobble, 0, s - 1.01)
    radii = (rng.uniform(0.16, 0.22) * s, rng.uniform(0.22, 0.28) * s)
    amp = rng.uniform(0.03, 0.08, size=2) * s
    phase = rng.uniform(0, 2 * np.pi, size=2)
    freq = rng.uniform(0.5, 1.5, size=2) * 2 * np.pi / n
    centre = s / 2 + amp * np.sin(freq * t + phase)
    skin = np.array([0.85, 0.65, 0.52]) + rng.uniform(-0.12, 0.12, size=3)
    skin_texture = _smooth_noise(rng, s, cells=_SKIN_CELLS, channels=1)[..., 0] - 0.5
    return _Scene(texture, pan, centre, radii, np.clip(skin, 0, 1), skin_texture)


def _face_layers(scene: _Scene, size: int, frame: int, shift: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Face colour (S, S, 3), soft face mask (S, S) and ellipse distance (S, S) for one frame."""
    cx, cy = scene.centre[frame] + (0 if shift is None else shift)
    rx, ry = scene.radii
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    u, v = (xx - cx) / rx, (yy - cy) / ry  # face coordinates: the unit disc is the face
    dist = np.sqrt(u**2 + v**2)
    mask = 1 / (1 + np.exp((dist - 1) * 12))  # soft edge, so moving faces do not alias
    # Skin detail moves with the face (sampled in face coordinates), shading darkens towards the rim.
    tu = np.clip(((u + 1) / 2 * (size - 1)).astype(int), 0, size - 1)
    tv = np.clip(((v + 1) / 2 * (size - 1)).astype(int), 0, size - 1)
    detail = scene.skin_texture[tv, tu]
    face = scene.skin[None, None, :] * (1 - 0.25 * dist[..., None] ** 2) + 0.3 * detail[..., None]
    for ex in (-0.4, 0.4):  # eyes
        eye = np.exp(-(((u - ex) / 0.14) ** 2 + ((v + 0.25) / 0.09) ** 2))
        face = face * (1 - 0.8 * eye[..., None])
    mouth = np.exp(-((u / 0.35) ** 2 + ((v - 0.45) / 0.08) ** 2))
    face = face * (1 - mouth[..., None]) + mouth[..., None] * np.array([0.55, 0.15, 0.18])
    return np.clip(face, 0, 1), mask, dist


def _background(scene: _Scene, size: int, frame: int) -> np.ndarray:
    """The texture panned by a sub-pixel offset (bilinear), so the scene drifts smoothly."""
    ox, oy = scene.pan[frame]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    x, y = xx + ox, yy + oy
    tex = scene.texture
    h, w = tex.shape[:2]
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    x0, y0 = x0 % w, y0 % h
    x1, y1 = (x0 + 1) % w, (y0 + 1) % h
    top = tex[y0, x0] * (1 - fx) + tex[y0, x1] * fx
    bottom = tex[y1, x0] * (1 - fx) + tex[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def _render(scene: _Scene, size: int, frame: int, shift: np.ndarray | None = None) -> np.ndarray:
    face, mask, _ = _face_layers(scene, size, frame, shift)
    return _background(scene, size, frame) * (1 - mask[..., None]) + face * mask[..., None]


# Each artefact maps (clean frames, scene, burst frame indices, strength, rng) -> frames, changing
# only the burst frames and only around the face. Strength 1 is obvious; 0.5 (default) is subtle
# in one frame but plain when frames are compared.
_Artefact = Callable[[np.ndarray, _Scene, np.ndarray, float, np.random.Generator], np.ndarray]


def _colour_flicker(frames, scene, burst, strength, rng):
    out = frames.copy()
    tint = rng.normal(size=3)
    tint = tint / np.linalg.norm(tint)
    for k, t in enumerate(burst):
        _, mask, _ = _face_layers(scene, frames.shape[1], t)
        sign = 1 if k % 2 == 0 else -1  # alternates frame to frame: steady in one frame, flicker over time
        shift = sign * strength * (0.25 + 0.15 * tint)
        out[t] = frames[t] + mask[..., None] * shift
    return out


def _warp_jitter(frames, scene, burst, strength, rng):
    out = frames.copy()
    for t in burst:
        offset = rng.uniform(-1, 1, size=2) * strength * scene.radii[0] * 0.6
        out[t] = _render(scene, frames.shape[1], t, shift=offset)
    return out


def _blend_seam(frames, scene, burst, strength, rng):
    out = frames.copy()
    for t in burst:
        offset = rng.uniform(-1, 1, size=2) * scene.radii[0] * 0.15
        _, _, dist = _face_layers(scene, frames.shape[1], t, shift=offset)
        ring = np.exp(-(((dist - 0.9) / 0.12) ** 2))
        colour = rng.uniform(-1, 1, size=3) * strength * 0.6
        out[t] = frames[t] + ring[..., None] * colour
    return out


def _texture_swap(frames, scene, burst, strength, rng):
    out = frames.copy()
    size = frames.shape[1]
    for t in burst:
        _, mask, dist = _face_layers(scene, size, t)
        # A fresh texture each frame with the same statistics as the skin detail: a single frame looks
        # like ordinary skin, consecutive frames disagree.
        swap = _smooth_noise(rng, size, cells=_SKIN_CELLS, channels=1)[..., 0] - 0.5
        inner = mask * (dist < 0.85)
        out[t] = frames[t] + inner[..., None] * strength * swap[..., None]
    return out


def _ghosting(frames, scene, burst, strength, rng):
    out = frames.copy()
    lag = int(rng.integers(4, 8))  # the scene moves ~1 px per frame: a shorter lag barely shows
    for t in burst:
        _, mask, _ = _face_layers(scene, frames.shape[1], t)
        past = frames[max(0, t - lag)]
        alpha = min(0.9, strength * 1.2) * mask[..., None]
        out[t] = frames[t] * (1 - alpha) + past * alpha
    return out


_ARTEFACTS: dict[str, _Artefact] = {
    "Deepfakes": _colour_flicker,
    "Face2Face": _warp_jitter,
    "FaceSwap": _blend_seam,
    "NeuralTextures": _texture_swap,
    "FaceShifter": _ghosting,
}
_ARTEFACT_ORDER = list(_ARTEFACTS.values())


def _artefact_for(method: str, index: int) -> _Artefact:
    # Unknown method names still get an artefact (cycled by position), so any method list works.
    return _ARTEFACTS.get(method, _ARTEFACT_ORDER[index % len(_ARTEFACT_ORDER)])


def write_video(path: Path, frames: np.ndarray, fps: float, options: dict[str, str]) -> None:
    """Write uint8 (F, H, W, 3) frames as h264 yuv420p mp4 with libx264 `options`, atomically.

    Pass "threads": "1" where the bytes must be identical from run to run.
    """
    import av

    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = options
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())


def _write_video(path: Path, frames: np.ndarray, fps: float) -> None:
    """Write (F, S, S, 3) float frames in [0, 1], near-lossless and identical from run to run."""
    write_video(path, np.clip(frames * 255 + 0.5, 0, 255).astype(np.uint8), fps,
                {"qp": _QP, "preset": "medium", "threads": "1"})


def _source_ids(cfg: SyntheticConfig) -> list[str]:
    """The real videos' ids, as the file stems show them."""
    return [f"{i:03d}" for i in range(cfg.n_sources)]


def deal_splits(cfg: SyntheticConfig) -> dict[str, list[list[str]]]:
    """The split files' content: the ids paired like FF++'s and dealt by `cfg.sources_per_split()`.

    A pure function of the config (no video is drawn), so a split's size can be checked without
    generating the data set.
    """
    ids = _source_ids(cfg)
    order = np.random.default_rng([cfg.seed, 1]).permutation(len(ids))
    pairs = [[ids[order[i]], ids[order[i + 1]]] for i in range(0, len(ids), 2)]
    sizes = {split: n // 2 for split, n in cfg.sources_per_split().items()}
    n_train, n_val = sizes["train"], sizes["val"]
    return {"train": pairs[:n_train], "val": pairs[n_train : n_train + n_val], "test": pairs[n_train + n_val :]}


def _check_cfg(cfg: SyntheticConfig) -> None:
    problems = []
    if cfg.n_sources < 6 or cfg.n_sources % 2:
        problems.append(
            f"data.synthetic.n_sources must be even and >= 6 (pairs dealt to train/val/test), but got {cfg.n_sources}"
        )
    # Configs copied with model_copy skip the schema's validators, so its split rule is asked again.
    problems += cfg.split_problems()
    if cfg.size % 2:
        problems.append(f"data.synthetic.size must be even (h264 yuv420p), but got {cfg.size}")
    if cfg.burst_frames > cfg.frames:
        problems.append(
            f"data.synthetic.burst_frames must be <= data.synthetic.frames, but got {cfg.burst_frames} > {cfg.frames}"
        )
    if not cfg.methods:
        problems.append("data.synthetic.methods must name at least one method, but got []")
    if problems:
        raise DataError(problems[0], problems)


def _fingerprint(cfg: SyntheticConfig, compression: str) -> dict:
    return {"synthetic": cfg.model_dump(mode="json"), "compression": compression}


def generate_synthetic(root: Path, cfg: SyntheticConfig, compression: str = "c23", progress: bool = True) -> Path:
    """Write the FF++-shaped tree under `root`, deterministic by `cfg.seed`; `root/.complete` comes last."""
    _check_cfg(cfg)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / COMPLETE_MARKER).unlink(missing_ok=True)
    ids = _source_ids(cfg)
    splits = deal_splits(cfg)
    metadata = {**_fingerprint(cfg, compression), "bursts": {}}
    (root / METADATA_FILE).write_text(json.dumps(metadata, indent=1))

    real_dir = root / "original_sequences" / "youtube" / compression / "videos"
    real_dir.mkdir(parents=True, exist_ok=True)
    method_dirs = {m: root / "manipulated_sequences" / m / compression / "videos" for m in cfg.methods}
    for d in method_dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    # FF++ fakes: for each pair (a, b), a_b takes a's frames (target) with b's face (source), and b_a.
    partner = {a: b for pair in sum(splits.values(), []) for a, b in (pair, pair[::-1])}

    for target in tqdm(ids, desc="synthetic videos", unit="source", disable=not progress):
        # Seeded per target, so a fake redraws exactly its target's scene, whatever the order.
        scene = _draw_scene(np.random.default_rng([cfg.seed, 0, int(target)]), cfg)
        clean = np.stack([_render(scene, cfg.size, t) for t in range(cfg.frames)])  # (F, S, S, 3)
        _write_video(real_dir / f"{target}.mp4", clean, cfg.fps)
        for m_index, method in enumerate(cfg.methods):
            rng = np.random.default_rng([cfg.seed, 2, int(target), m_index])
            start = int(rng.integers(0, cfg.frames - cfg.burst_frames + 1))
            burst = np.arange(start, start + cfg.burst_frames)
            fake = _artefact_for(method, m_index)(clean, scene, burst, cfg.artefact_strength, rng)
            stem = f"{target}_{partner[target]}"
            _write_video(method_dirs[method] / f"{stem}.mp4", np.clip(fake, 0, 1), cfg.fps)
            metadata["bursts"][f"{method}/{stem}"] = [start, start + cfg.burst_frames]

    split_dir = root / "splits"
    split_dir.mkdir(exist_ok=True)
    for name, pairs in splits.items():
        (split_dir / f"{name}.json").write_text(json.dumps(pairs))
    (root / METADATA_FILE).write_text(json.dumps(metadata, indent=1))
    (root / COMPLETE_MARKER).write_text(json.dumps(_fingerprint(cfg, compression), sort_keys=True))
    return root


def _is_current(root: Path, cfg: SyntheticConfig, compression: str) -> bool:
    marker = root / COMPLETE_MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()) == _fingerprint(cfg, compression)
    except json.JSONDecodeError:
        return False


def _clear_previous(root: Path) -> None:
    """Remove a stale or half-written synthetic tree, but never a tree this module did not write."""
    if not any((root / d).exists() for d in _GENERATED_DIRS):
        return
    if not (root / METADATA_FILE).is_file():
        raise DataError(
            f"data.root must be empty or a synthetic tree for data.source=synthetic, but {root} holds "
            f"data without {METADATA_FILE}; point data.root at another folder"
        )
    for d in _GENERATED_DIRS:
        shutil.rmtree(root / d, ignore_errors=True)
    for cache in root.glob(".harness_manifest_*"):
        cache.unlink(missing_ok=True)


def ensure_synthetic(data_cfg: DataConfig, progress: bool = True) -> Path:
    """Generate the synthetic tree at `data_cfg.root` unless a complete one for this config is there."""
    root = Path(data_cfg.root).resolve()
    cfg = data_cfg.synthetic
    if _is_current(root, cfg, data_cfg.compression):
        return root
    root.mkdir(parents=True, exist_ok=True)
    # Two runs starting at once (a sweep's workers) must not write the same files: one generates,
    # the other waits on the lock and then finds the marker.
    with file_lock(root / ".generate.lock"):
        if not _is_current(root, cfg, data_cfg.compression):
            print(f"generating the embedded synthetic FF++-shaped data set in {root} (first use)…", file=sys.stderr)
            _clear_previous(root)
            generate_synthetic(root, cfg, data_cfg.compression, progress=progress)
    return root
