"""Add cleaned_at: when a synced work's local files (zip, work folder, leftovers) were removed.

A synced row without ``cleaned_at`` still has files to remove: the next run finishes the clean-up
that a crash interrupted.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add the column; rows synced before this revision count as cleaned (the old code cleaned
    before it recorded the sync)."""
    tz = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
    with op.batch_alter_table("glacier_sync_progress") as batch:
        batch.add_column(sa.Column("cleaned_at", tz))
    # The state's value as it was at this revision (a migration imports none of the code it
    # outlives: the modules move, the value stays).
    op.execute("UPDATE glacier_sync_progress SET cleaned_at = synced_at WHERE state = 'synced'")


def downgrade() -> None:
    """Drop the column."""
    with op.batch_alter_table("glacier_sync_progress") as batch:
        batch.drop_column("cleaned_at")
