"""Index (state, cleaned_at): the clean-up check at the start of every run.

``ProgressStore.needs_cleanup`` (``finish_cleanups``, run before every run and every retry)
selects ``state = 'synced' AND cleaned_at IS NULL``. Synced rows are nearly the whole table and
only grow, while the rows that query wants are almost always none; the index on ``state`` alone
still visits every synced row to test ``cleaned_at``. With both columns in one B-tree the query
is an equality seek on ``('synced', NULL)`` (SQLite, PostgreSQL and MariaDB all index NULLs and
answer ``IS NULL`` from the index) and reads only the rows it returns. The leading ``state``
column also serves every query the single-column index serves (the claim's ``state IN
(pending)``), so nothing else gets slower than one more index to write.

The name (41 characters) fits the 63/64-character limits of PostgreSQL and MariaDB.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

INDEX = "ix_glacier_sync_progress_state_cleaned_at"


def upgrade() -> None:
    """Create the index."""
    op.create_index(INDEX, "glacier_sync_progress", ["state", "cleaned_at"])


def downgrade() -> None:
    """Drop the index (the rows are untouched)."""
    op.drop_index(INDEX, table_name="glacier_sync_progress")
