"""The one typed schema of a run, nested by concern; validated once at the edge, then trusted.

Every switch of the tuning advice is a key here, so a sweep or a comparison can flip it
without code. Cross-field rules live in `Config`'s validator and name the keys involved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, field_validator, model_validator

__all__ = [
    "Config",
    "DataConfig",
    "SyntheticConfig",
    "AugmentConfig",
    "FaceConfig",
    "ModelConfig",
    "LossConfig",
    "OptimConfig",
    "SchedulerConfig",
    "TrainConfig",
    "EvalConfig",
    "EarlyStopConfig",
    "TrackingConfig",
    "FFPP_METHODS",
    "metric_problem",
]

FFPP_METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures", "FaceShifter")


class _Section(BaseModel):
    # Unknown keys are refused: a typo must never silently fall back to a default.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SyntheticConfig(_Section):
    """Size and difficulty of the embedded FF++-shaped data set (`harness synth`)."""

    n_sources: PositiveInt = Field(36, description="real source videos; each yields one fake per method")
    methods: list[str] = Field(default_factory=lambda: ["Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures", "FaceShifter"])
    frames: PositiveInt = Field(48, description="frames per video")
    fps: PositiveFloat = 12.0
    size: PositiveInt = Field(64, description="frame height and width in pixels")
    artefact_strength: float = Field(0.8, gt=0.0, le=1.0, description="1 = obvious, small = subtle (0.8: learnable in a few epochs, not to AUC 1)")
    burst_frames: PositiveInt = Field(24, description="length of the temporal artefact burst, in frames (shorter bursts are often missed by a clip)")
    val_sources: PositiveInt | None = Field(
        None, description="real videos in the val split, even (ids come in pairs); null: 14 % of the pairs, as in FF++"
    )
    test_sources: PositiveInt | None = Field(
        None, description="real videos in the test split, even (ids come in pairs); null: 14 % of the pairs, as in FF++"
    )
    seed: int = 0

    def sources_per_split(self) -> dict[str, int]:
        """Real videos dealt to each split: val and test as set (or FF++'s 14 % of the pairs), train the rest."""
        ffpp_share = 2 * max(1, round(0.14 * (self.n_sources // 2)))  # FF++: 140 of 500 pairs in val and in test
        val = ffpp_share if self.val_sources is None else self.val_sources
        test = ffpp_share if self.test_sources is None else self.test_sources
        return {"train": self.n_sources - val - test, "val": val, "test": test}

    def split_problems(self) -> list[str]:
        """Why the sources cannot be dealt into pairs with at least one pair per split (empty when they can)."""
        problems = [
            f"data.synthetic.{key} must be even (real videos are dealt in pairs, like FF++'s split files), but got {value}"
            for key, value in (("val_sources", self.val_sources), ("test_sources", self.test_sources))
            if value is not None and value % 2
        ]
        sizes = self.sources_per_split()
        if sizes["train"] < 2:
            problems.append(
                f"data.synthetic.n_sources must leave at least 2 real videos (one pair) for train after val and test, "
                f"but got n_sources={self.n_sources} with {sizes['val']} for val and {sizes['test']} for test; "
                f"raise n_sources or lower data.synthetic.val_sources/test_sources"
            )
        return problems

    @model_validator(mode="after")
    def _sources_fill_every_split(self) -> SyntheticConfig:
        problems = self.split_problems()
        if problems:
            raise ValueError("\n".join(problems))
        return self


class AugmentConfig(_Section):
    """Augmentation drawn once per clip, so every frame of a clip gets the same flip and jitter."""

    hflip: bool = False
    color_jitter: list[float] | None = Field(
        None, description="brightness, contrast, saturation, hue (advice: [0.2, 0.2, 0.2, 0.1])"
    )
    run_on: Literal["auto", "loader", "device"] = Field(
        "auto", description="where clips are augmented: loader (per clip, in the loader workers), device (batched "
        "on the training device, from the same per-clip draws); auto: device when training on CUDA, else loader"
    )

    @model_validator(mode="after")
    def _jitter_has_four_values(self) -> AugmentConfig:
        if self.color_jitter is not None and len(self.color_jitter) != 4:
            raise ValueError(
                f"data.augment.color_jitter must hold 4 values (brightness, contrast, saturation, hue), "
                f"but got {self.color_jitter}"
            )
        return self


class FaceConfig(_Section):
    """Face crops (data.face_crop): detect on a subsample of frames, track one face, crop a square around it."""

    detector: Literal["dlib_hog", "opencv_haar"] = Field(
        "dlib_hog", description="dlib_hog: dlib's HOG frontal-face detector (FF++'s own crop tool); "
        "opencv_haar: OpenCV's bundled Haar cascade (alt2; faster, misses faces turned 20 degrees)"
    )
    margin: float = Field(1.3, ge=1.0, le=3.0, description="side of the square crop = margin x the longer side of the face box (FF++: 1.3)")
    detect_every: PositiveInt = Field(4, description="detect on every k-th frame; boxes in between are interpolated from the track")
    detect_size: PositiveInt = Field(
        640, description="frames are shrunk so their longer side is at most this before detection (speed); boxes are scaled back"
    )
    min_face_px: PositiveInt = Field(40, description="face boxes with a shorter side (original pixels) are ignored")
    upsample: int = Field(
        1, ge=0, le=2, description="dlib_hog: upsample the (detect_size) frame this many times; each halves the smallest face found (80 px at 0) and costs about 4x the time"
    )
    min_score: float = Field(0.0, description="dlib_hog: detections scoring below are ignored (dlib's adjust_threshold)")
    min_detected_fraction: float = Field(
        0.5, gt=0.0, le=1.0,
        description="a video whose face track covers fewer of the detection frames is skipped as bad (counted, warned)",
    )
    smooth_window: PositiveInt = Field(
        5, description="boxes are smoothed by a centred moving average over this many detection frames (1: no smoothing)"
    )


class DataConfig(_Section):
    source: Literal["ffpp", "csv", "synthetic"] = Field(
        "ffpp", description="ffpp: official FF++ tree at root; csv: a manifest of any videos; synthetic: embedded data"
    )
    root: Path = Field(Path("data/ffpp"), description="FF++ (or synthetic) tree; relative paths resolve from the working folder")
    manifest: Path | None = Field(None, description="CSV manifest (path,label,split[,...]); required for source csv")
    methods: list[str] | None = Field(
        None, description="manipulation methods to use; null: every method present under manipulated_sequences "
        "(a partial download is normal); a method named here that is missing is an error"
    )
    compression: str = "c23"
    backend: Literal["auto", "decord", "pyav", "torchcodec", "frames"] = Field(
        "auto", description="video decoder: auto picks decord where installed, else PyAV; frames reads extracted image folders"
    )
    input_size: PositiveInt = 224
    n_segment: PositiveInt = Field(8, description="frames per clip; also the TSM's time axis")
    clip_seconds: PositiveFloat = Field(2.0, description="span a clip covers, from the video's own fps")
    clips_per_video_train: PositiveInt = 1
    clips_per_video_eval: PositiveInt = Field(
        4, description="evenly spaced windows scored per video at validation/test; video scores aggregate them"
    )
    min_frames: PositiveInt = Field(8, description="videos with fewer frames are skipped; shorter than the span are sampled with repeats")
    sampler: Literal["none", "balanced"] = Field("none", description="balanced: WeightedRandomSampler with equal expected classes")
    num_workers: int = Field(0, ge=0)
    cache: bool = Field(
        True,
        description="decode each video once into a memory-mapped uint8 frame cache (at input_size) under cache_dir, "
        "shared by every run, trial and loader worker; false decodes every clip again",
    )
    cache_dir: Path | None = Field(
        None, description="where the frame cache lives (default: <root>/.harness_frame_cache, or next to the CSV for source csv)"
    )
    cache_format: Literal["raw", "jpeg", "webp"] = Field(
        "jpeg", description="how cached frames are stored: raw uint8 (largest, fastest), jpeg or webp at cache_quality"
    )
    cache_quality: int = Field(90, ge=1, le=100, description="jpeg/webp quality of the frame cache")
    decode_on: Literal["auto", "loader", "device"] = Field(
        "auto", description="where cached jpeg frames are decoded: loader (CPU, in the loader workers), device "
        "(batched on the training device; needs cache true and cache_format jpeg, and augments there too); "
        "auto: device when training on CUDA from a jpeg cache and data.augment.run_on is not loader, else loader"
    )
    face_crop: bool = Field(False, description="train on square face crops (see data.face) instead of whole frames")
    face: FaceConfig = Field(default_factory=FaceConfig)
    cache_stride: PositiveInt = Field(
        1,
        description="keep every k-th frame: clips sample only frames 0, k, 2k, ... (cache on or off alike), "
        "and the cache needs k times less disk",
    )
    max_bad_fraction: float = Field(
        0.05, ge=0.0, le=1.0,
        description="videos of a split that may fail to decode during training (skipped, counted, reported) "
        "before the run stops with an error",
    )
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)

    @field_validator("root", "manifest", "cache_dir")
    @classmethod
    def _expand_home(cls, path: Path | None) -> Path | None:
        # YAML and --set values are not seen by a shell, so "~/ffpp" would otherwise be a folder named "~".
        return None if path is None else path.expanduser()

    @model_validator(mode="after")
    def _device_decode_has_jpeg(self) -> DataConfig:
        if self.decode_on != "device":
            return self
        if not self.cache or self.cache_format != "jpeg":
            raise ValueError(f"data.decode_on device decodes the frame cache's jpeg frames, so it needs data.cache "
                             f"true and data.cache_format jpeg, but got cache={self.cache}, "
                             f"cache_format={self.cache_format!r}; set those or data.decode_on loader")
        if self.augment.run_on == "loader":
            raise ValueError("data.decode_on device leaves no pixels in the loader to augment, so "
                             "data.augment.run_on must be auto or device, but got 'loader'")
        return self


class ModelConfig(_Section):
    backbone: str = Field("mobilenetv4_conv_small", description="timm model name (MobileNetV4 family)")
    pretrained: bool = False
    pretrained_file: Path | None = Field(None, description="local weights file; no hub is reached at run time")
    temporal_shift: bool = True
    fold_div: PositiveInt = Field(8, description="fold = C // fold_div channels shift each way")
    aggregate: Literal["mean", "attention"] = "mean"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    freeze_bn_fraction: float = Field(0.0, ge=0.0, le=1.0, description="first fraction of the backbone's BatchNorm layers (forward order, stem included) frozen: stats and affine")


class LossConfig(_Section):
    type: Literal["bce", "focal_bce"] = "bce"
    auto_pos_weight: bool = Field(True, description="bce only: pos_weight = n_real / n_fake from the train split")
    pos_weight: PositiveFloat | None = Field(None, description="bce only: a fixed pos_weight instead of the automatic one")
    gamma: float | None = Field(None, ge=0.0, description="focal_bce only")
    alpha: float | None = Field(None, ge=0.0, le=1.0, description="focal_bce only: weight of the fake class")


class SchedulerConfig(_Section):
    type: Literal["none", "cosine"] = "none"
    warmup_epochs: int = Field(0, ge=0)
    min_lr: float = Field(0.0, ge=0.0)


class OptimConfig(_Section):
    name: str = Field("adamw", description="any optimizer name timm's create_optimizer_v2 knows")
    lr: PositiveFloat = 1e-3
    weight_decay: float = Field(0.01, ge=0.0)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)


class TrainConfig(_Section):
    epochs: PositiveInt = 30
    batch_size: PositiveInt = 32
    grad_accum_steps: PositiveInt = 1
    amp: bool = False
    cudnn_benchmark: bool = True
    empty_cache_each_epoch: bool = False
    val_every: PositiveInt = Field(1, description="validate every N epochs and always at the last")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    channels_last: bool = Field(
        True, description="CUDA only: the model in channels_last memory format (measured 1.2-2x faster steps on an H200)"
    )
    max_train_batches: PositiveInt | None = Field(None, description="cap per epoch, for smoke runs")
    clips_per_epoch: PositiveInt | None = Field(
        None, description="an epoch is this many training clips drawn (seeded; stratified by label, or by the "
        "balanced sampler when data.sampler=balanced) instead of one pass over every video; null: one pass"
    )
    oom_backoff: bool = Field(
        True,
        description="on CUDA out-of-memory, halve batch_size and double grad_accum_steps (same effective batch) "
        "and redo the epoch; false fails the run at once",
    )
    min_batch_size: PositiveInt = Field(1, description="the smallest micro-batch oom_backoff may reach; below it the run fails with reason oom")
    deterministic: bool = Field(
        False,
        description="deterministic GPU kernels (cudnn.deterministic, no cudnn benchmark even if cudnn_benchmark, "
        "torch.use_deterministic_algorithms with warn_only, CUBLAS_WORKSPACE_CONFIG=:4096:8 if unset): the same seed "
        "gives the same run on a GPU, at some speed cost",
    )
    output_dir: Path = Field(Path("runs"), description="checkpoints live in output_dir/<run name>/")


class EvalConfig(_Section):
    video_aggregation: Literal["mean", "max", "median"] = "mean"


class EarlyStopConfig(_Section):
    metric: str = "video_auc"
    mode: Literal["max", "min"] = "max"
    patience: PositiveInt = Field(8, description="counted in validations, not epochs")
    min_delta: float = Field(0.0, ge=0.0)
    monitor_secondary: str | None = None


class TrackingConfig(_Section):
    experiment: str = "harness"
    run_name: str | None = None


class Config(_Section):
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    early_stop: EarlyStopConfig = Field(default_factory=EarlyStopConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _cross_field_rules(self) -> Config:
        problems: list[str] = []
        loss, data = self.loss, self.data
        if loss.auto_pos_weight and loss.pos_weight is not None:
            problems.append(
                f"loss.auto_pos_weight and loss.pos_weight both set (pos_weight={loss.pos_weight}); choose one"
            )
        if data.sampler == "balanced" and (loss.auto_pos_weight or loss.pos_weight is not None):
            problems.append(
                "data.sampler=balanced corrects the imbalance already; set loss.auto_pos_weight=false "
                "and loss.pos_weight=null so the two do not both correct"
            )
        if loss.type == "focal_bce":
            if loss.auto_pos_weight or loss.pos_weight is not None:
                problems.append(
                    "loss.type=focal_bce takes no pos_weight; set loss.auto_pos_weight=false "
                    "(weight classes with loss.alpha instead)"
                )
            if loss.gamma is None:
                problems.append("loss.type=focal_bce needs loss.gamma (advice: 2.0), but got null")
            elif 0.0 < loss.gamma < 1.0:
                # d/dp (1 - p)^gamma is infinite at p = 1 for gamma < 1: one confidently right clip
                # (sigmoid saturates to 1.0 in fp32) turns every gradient into NaN. Seen in a demo sweep.
                problems.append(
                    f"loss.gamma must be 0 or >= 1 (0 < gamma < 1 gives NaN gradients on saturated clips), "
                    f"but got {loss.gamma}"
                )
        else:
            if loss.gamma is not None:
                problems.append(f"loss.gamma={loss.gamma} only applies to loss.type=focal_bce, but loss.type={loss.type}")
            if loss.alpha is not None:
                problems.append(f"loss.alpha={loss.alpha} only applies to loss.type=focal_bce, but loss.type={loss.type}")
        if self.model.temporal_shift and self.model.fold_div < 2:
            problems.append(f"model.fold_div must be >= 2 (two folds shift), but got {self.model.fold_div}")
        if self.model.pretrained and self.model.pretrained_file is None:
            problems.append(
                "model.pretrained=true needs model.pretrained_file (a local weights file; no hub is reached at run time)"
            )
        sched = self.optim.scheduler
        if sched.type == "cosine" and sched.warmup_epochs >= self.train.epochs:
            problems.append(
                f"optim.scheduler.warmup_epochs must be < train.epochs, but got {sched.warmup_epochs} >= {self.train.epochs}"
            )
        if sched.type == "cosine" and sched.min_lr >= self.optim.lr:
            problems.append(f"optim.scheduler.min_lr must be < optim.lr, but got {sched.min_lr} >= {self.optim.lr}")
        if data.source == "csv" and data.manifest is None:
            problems.append("data.source=csv needs data.manifest (a CSV with path,label,split)")
        if data.face_crop and data.source == "synthetic":
            problems.append(
                "data.face_crop=true needs real faces, but data.source=synthetic draws cartoon faces no detector finds; "
                "use it with data.source ffpp or csv"
            )
        for key, name in (("early_stop.metric", self.early_stop.metric),
                          ("early_stop.monitor_secondary", self.early_stop.monitor_secondary)):
            problem = None if name is None else metric_problem(key, name, data)
            if problem:
                problems.append(problem)
        if problems:
            raise ValueError("\n".join(problems))
        return self


def _methods_before_indexing(data: DataConfig) -> list[str] | None:
    """The fake methods the manifest can hold, from the config alone; None where only the CSV knows (source csv).

    With data.methods null the FF++ index takes the FF++ methods present, so those five bound the names.
    """
    if data.source == "synthetic":
        return list(data.synthetic.methods)
    if data.source == "ffpp":
        return list(data.methods) if data.methods is not None else list(FFPP_METHODS)
    return None


def metric_problem(key: str, name: str, data: DataConfig) -> str | None:
    """Why `name` (at `key`) is not a validation metric that rises or falls as the model improves; None if it is.

    Checked when a config or search space loads, so a misspelt name stops the command before any
    video is decoded or any run or trial starts, rather than failing every trial at its end.
    """
    methods = _methods_before_indexing(data)
    scores = _score_names(methods or [])
    if name in scores or (methods is None and name.startswith("video_auc_") and name != "video_auc_"):
        return None
    allowed = ", ".join(scores) + (", video_auc_<method> (a method of data.manifest)" if methods is None else "")
    return f"{key} must be one of {allowed}, but got {name!r}"


def _score_names(methods: list[str]) -> list[str]:
    """The names `evaluate` reports that say whether the model improved (not thresholds, entropy, skip counts)."""
    # The names live beside the code that computes them; imported here so the schema loads without sklearn.
    from harness.train.metrics import metric_mode, metric_names

    scores = []
    for name in metric_names(methods):
        try:
            metric_mode(name)
        except ValueError:
            continue
        scores.append(name)
    return scores
