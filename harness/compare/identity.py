"""What makes two runs "the same run": the config hash, the keys left out of it, and the code that ran.

A comparison reuses a finished run when its config hash, seed and code identity match, so the hash
must cover every key that changes the numbers and none that only says where things are written or
logged, and the code identity must change whenever the code that computes them does: the harness
version with its git commit (and a digest of uncommitted changes), and the torch version.
"""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from harness.config.loading import flatten
from harness.config.schema import Config

__all__ = ["IDENTITY_EXCLUDED", "identity_keys", "config_hash", "is_identity_key", "code_identity"]

# The seed is paired on its own (tag `harness.seed`); the rest name places, not experiments.
IDENTITY_EXCLUDED: tuple[str, ...] = ("seed", "tracking.", "train.output_dir")


def is_identity_key(key: str) -> bool:
    """False for a dotted key that does not change what a run computes."""
    return not any(key == p or key.startswith(p if p.endswith(".") else p + ".") for p in IDENTITY_EXCLUDED)


def identity_keys(cfg: Config) -> dict[str, Any]:
    """The flattened config without the keys in IDENTITY_EXCLUDED."""
    return {k: v for k, v in flatten(cfg).items() if is_identity_key(k)}


def config_hash(cfg: Config) -> str:
    """16 hex digits of the SHA-256 of the identity keys as sorted JSON."""
    text = json.dumps(identity_keys(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _git_state(folder: Path) -> str | None:
    """`<commit>` or `<commit>-dirty-<digest of the diff>`; None outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, check=True, timeout=20).stdout
    try:
        commit = git("rev-parse", "HEAD").strip()
        diff = git("diff", "HEAD", "--", ".")
        untracked = git("ls-files", "--others", "--exclude-standard", "--", ".").split()
    except (OSError, subprocess.SubprocessError):
        return None
    if not diff and not untracked:
        return commit
    digest = hashlib.sha256(diff.encode())
    for name in sorted(untracked):  # a new module changes the code as much as an edited one
        digest.update(name.encode() + (folder / name).read_bytes())
    return f"{commit}-dirty-{digest.hexdigest()[:12]}"


@functools.lru_cache(maxsize=1)
def code_identity() -> dict[str, str]:
    """MLflow tags naming the code a run computed with; reuse requires all of them to match.

    Cached: the package cannot change under a running process, and git is asked once.
    """
    from importlib.metadata import PackageNotFoundError, version

    import torch

    try:
        harness_version = version("harness")
    except PackageNotFoundError:
        harness_version = "unknown"
    git = _git_state(Path(__file__).resolve().parent.parent)
    return {
        "harness.code": harness_version + (f"+{git}" if git else ""),
        "harness.torch": torch.__version__,
    }
