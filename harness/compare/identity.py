"""What makes two runs "the same run": the config hash and the keys left out of it.

A comparison reuses a finished run when its config hash and seed match, so the hash must cover
every key that changes the numbers and none that only says where things are written or logged.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from harness.config.loading import flatten
from harness.config.schema import Config

__all__ = ["IDENTITY_EXCLUDED", "identity_keys", "config_hash", "is_identity_key"]

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
