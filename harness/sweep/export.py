"""`harness export-best`: the study's best trial as a complete, runnable config file."""

from __future__ import annotations

import time
from pathlib import Path

from harness.config.loading import config_from_dict, save_config
from harness.errors import StudyError

__all__ = ["export_best"]


def export_best(study_name: str, out: Path, storage: str | None = None) -> tuple[Path, int, float]:
    """Write the best completed trial's resolved config (every key, commented) to `out`.

    Each trial keeps its resolved config as a user attribute, so this needs neither the space
    file nor the base configs it was built from.
    """
    import optuna

    from harness.sweep.storage import DEFAULT_STORAGE, is_url, open_storage
    from harness.track.mlflow_run import mask_uri

    storage = storage or DEFAULT_STORAGE
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not is_url(storage) and not Path(storage).exists():
        raise StudyError(f"--storage {storage}: no such study storage (run `harness sweep` first, or pass --storage)")
    opened = open_storage(storage)
    names = optuna.get_all_study_names(opened)
    if study_name not in names:
        raise StudyError(
            f"--study-name must name a study in {mask_uri(storage)}, but got {study_name!r} (studies: {', '.join(names) or 'none'})"
        )
    study = optuna.load_study(study_name=study_name, storage=opened)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not complete:
        raise StudyError(f"study {study_name!r} has no completed trial yet; run or resume `harness sweep` first")
    best = study.best_trial
    cfg = config_from_dict(best.user_attrs["config"], source=f"study {study_name} trial {best.number}")
    metric = study.user_attrs.get("metric", "value")
    header = "\n".join(
        [
            f"best trial of study {study_name!r} ({mask_uri(storage)})",
            f"trial {best.number}: {metric} = {best.value:.4f} (validation, best epoch)",
            f"origin: {best.user_attrs.get('enqueued_from', 'sampled')}; sampled values: "
            + ", ".join(f"{k}={v}" for k, v in best.params.items()),
            f"exported {time.strftime('%Y-%m-%d %H:%M:%S')}; train it with: harness train --config {Path(out).name}",
        ]
    )
    save_config(cfg, Path(out), header)
    return Path(out), best.number, float(best.value)
