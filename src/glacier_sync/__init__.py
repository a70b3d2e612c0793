"""glacier_sync: restore pipeline library (no Airflow import)."""

__version__ = "0.1.0"
