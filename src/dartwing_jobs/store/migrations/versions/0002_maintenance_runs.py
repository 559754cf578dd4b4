"""maintenance runs: the guard of the scheduler's daily retention cleanup

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('maintenance_runs',
    sa.Column('task', sa.String(length=64), nullable=False),
    sa.Column('run_key', sa.String(length=32), nullable=False),
    sa.Column('owner', sa.String(length=255), nullable=False),
    sa.Column('started_at', sa.Double(), nullable=False),
    sa.Column('finished_at', sa.Double(), nullable=True),
    sa.Column('rows_deleted', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('task', 'run_key', name=op.f('pk_maintenance_runs'))
    )


def downgrade() -> None:
    op.drop_table('maintenance_runs')
