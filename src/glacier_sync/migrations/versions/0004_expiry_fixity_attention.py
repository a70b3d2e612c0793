"""Expiry of the restored copy, fixity evidence, and permanent failures held for an operator.

- ``restore_expires_at``: when S3 deletes the restored copy again (the Completed event's
  ``lifecycleRestorationExpiryTime``); works that expire first are claimed first, and
  ``status --stuck`` flags a work whose copy expires before it is archived.
- ``fixity``: what debag proved (manifest algorithms, file count, payload bytes, the manifest's
  own SHA-256, when), as JSON.
- ``needs_attention``: a permanent failure (a bag that fails validation, a key that does not
  exist) that no new run re-claims until an operator retries the work; ``failed_run`` is the run
  that recorded it, whose own cleared task (the UI's "Clear") may try it again.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TABLE = "glacier_sync_progress"
Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    """Add the four columns (existing rows: no expiry, no evidence, not held)."""
    with op.batch_alter_table(TABLE) as batch:
        batch.add_column(sa.Column("restore_expires_at", Timestamp, nullable=True))
        batch.add_column(sa.Column("fixity", sa.JSON(), nullable=True))
        batch.add_column(
            sa.Column("needs_attention", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("failed_run", sa.String(255), nullable=True))


def downgrade() -> None:
    """Drop the four columns (the evidence and expiry times are lost; rows stay)."""
    with op.batch_alter_table(TABLE) as batch:
        batch.drop_column("failed_run")
        batch.drop_column("needs_attention")
        batch.drop_column("fixity")
        batch.drop_column("restore_expires_at")
