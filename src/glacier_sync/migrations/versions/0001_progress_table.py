"""Create the glacier_sync_progress table.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the table and its indexes."""
    tz = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
    op.create_table(
        "glacier_sync_progress",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("dedup_key", sa.String(64), nullable=False, unique=True),
        sa.Column("work_id", sa.String(128), nullable=False, index=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("queue_name", sa.String(128)),
        sa.Column("region", sa.String(32)),
        sa.Column("bucket", sa.String(255), nullable=False),
        sa.Column("object_key", sa.Text, nullable=False),
        sa.Column("etag", sa.String(128)),
        sa.Column("version_id", sa.String(1024)),
        sa.Column("size", sa.BigInteger),
        sa.Column("local_path", sa.Text),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("failed_phase", sa.String(16)),
        sa.Column("restore_requested_at", tz),
        sa.Column("restore_completed_at", tz),
        sa.Column("downloaded_at", tz),
        sa.Column("debagged_at", tz),
        sa.Column("synced_at", tz),
        sa.Column("archive_path", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("history", sa.JSON, nullable=False),
        sa.Column("claimed_by", sa.String(255)),
        sa.Column("claimed_until", tz),
        sa.Column("created_at", tz, nullable=False),
        sa.Column("updated_at", tz, nullable=False),
    )


def downgrade() -> None:
    """Drop the table."""
    op.drop_table("glacier_sync_progress")
