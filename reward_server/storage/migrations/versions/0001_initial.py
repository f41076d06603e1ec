"""Initial schema: raters, jobs, items, leases, ratings.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("scorer", sa.String(length=64), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("ratings_per_item", sa.Integer(), nullable=False),
        sa.Column("num_items", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("deadline", sa.Double(), nullable=False),
        sa.Column("cancelled_at", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index(op.f("ix_jobs_deadline"), "jobs", ["deadline"])

    op.create_table(
        "raters",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("token_hash", sa.String(length=80), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("revoked_at", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_raters")),
        sa.UniqueConstraint("name", name=op.f("uq_raters_name")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_raters_token_hash")),
    )
    op.create_table(
        "items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("external_id", sa.String(length=256), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("metadata_json", sa.Text(), nullable=False),
        sa.Column("image_png", sa.LargeBinary(), nullable=False),
        sa.Column("pairable", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_items_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_items")),
        sa.UniqueConstraint("job_id", "position", name=op.f("uq_items_job_id")),
    )
    op.create_index(op.f("ix_items_job_id"), "items", ["job_id"])

    op.create_table(
        "leases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token", sa.String(length=64), nullable=False),
        sa.Column("rater_id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("other_item_id", sa.Integer(), nullable=True),
        sa.Column("swapped", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["item_id"], ["items.id"], name=op.f("fk_leases_item_id_items"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["other_item_id"],
            ["items.id"],
            name=op.f("fk_leases_other_item_id_items"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["rater_id"], ["raters.id"], name=op.f("fk_leases_rater_id_raters"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_leases")),
        sa.UniqueConstraint("token", name=op.f("uq_leases_token")),
    )
    op.create_index(op.f("ix_leases_expires_at"), "leases", ["expires_at"])
    op.create_index(op.f("ix_leases_item_id"), "leases", ["item_id"])
    op.create_index(op.f("ix_leases_rater_id"), "leases", ["rater_id"])

    op.create_table(
        "ratings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("other_item_id", sa.Integer(), nullable=True),
        sa.Column("rater_id", sa.Integer(), nullable=False),
        sa.Column("score", sa.Integer(), nullable=True),
        sa.Column("lease_token", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["item_id"], ["items.id"], name=op.f("fk_ratings_item_id_items"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_ratings_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["other_item_id"],
            ["items.id"],
            name=op.f("fk_ratings_other_item_id_items"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["rater_id"], ["raters.id"], name=op.f("fk_ratings_rater_id_raters")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ratings")),
        sa.UniqueConstraint("lease_token", name=op.f("uq_ratings_lease_token")),
    )
    op.create_index(op.f("ix_ratings_item_id"), "ratings", ["item_id"])
    op.create_index(op.f("ix_ratings_job_id"), "ratings", ["job_id"])
    op.create_index(op.f("ix_ratings_other_item_id"), "ratings", ["other_item_id"])
    op.create_index(op.f("ix_ratings_rater_id"), "ratings", ["rater_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_ratings_rater_id"), table_name="ratings")
    op.drop_index(op.f("ix_ratings_other_item_id"), table_name="ratings")
    op.drop_index(op.f("ix_ratings_job_id"), table_name="ratings")
    op.drop_index(op.f("ix_ratings_item_id"), table_name="ratings")

    op.drop_table("ratings")
    op.drop_index(op.f("ix_leases_rater_id"), table_name="leases")
    op.drop_index(op.f("ix_leases_item_id"), table_name="leases")
    op.drop_index(op.f("ix_leases_expires_at"), table_name="leases")

    op.drop_table("leases")
    op.drop_index(op.f("ix_items_job_id"), table_name="items")

    op.drop_table("items")
    op.drop_table("raters")
    op.drop_index(op.f("ix_jobs_deadline"), table_name="jobs")

    op.drop_table("jobs")
