"""iterations.fingerprint: what an iteration was trained from (images with labels and splits,
backbones, settings, recipe code), so a retraining with nothing new is answered at once

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 06:55:00.000000
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('iterations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('fingerprint', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('iterations', schema=None) as batch_op:
        batch_op.drop_column('fingerprint')
