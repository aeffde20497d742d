"""projects.published_iteration: the iteration served when a request names none (NULL: the
latest), so a worse retrain can be rolled back by publishing an earlier one

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 13:20:00.000000
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('projects', schema=None) as batch_op:
        batch_op.add_column(sa.Column('published_iteration', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('projects', schema=None) as batch_op:
        batch_op.drop_column('published_iteration')
