"""harness: measure whether video deepfake tuning advice helps, with Optuna sweeps logged to MLflow."""

__version__ = "0.1.0"
