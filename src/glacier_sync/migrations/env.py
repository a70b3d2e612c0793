"""Alembic environment of the progress database (run through glacier_sync.records.progress)."""

from alembic import context

from glacier_sync.records.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table="glacier_sync_alembic_version",
)
with context.begin_transaction():
    context.run_migrations()
