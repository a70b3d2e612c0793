"""The progress database.

In: what each part of the pipeline records (events, claims, phase results, an operator's retry).
Out: one row per object version with its history, claims and leases, status views; the schema's
Alembic migrations are in ``glacier_sync/migrations``.
"""
