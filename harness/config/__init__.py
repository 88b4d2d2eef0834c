"""Config: the typed schema of a run and the layered YAML loading around it."""

from harness.config.loading import flatten, load_config, save_config, to_yaml
from harness.config.schema import Config

__all__ = ["Config", "load_config", "save_config", "to_yaml", "flatten"]
