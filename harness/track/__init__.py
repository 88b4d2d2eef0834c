"""Tracking: MLflow runs fed by trainer callbacks, and the plots they carry."""
