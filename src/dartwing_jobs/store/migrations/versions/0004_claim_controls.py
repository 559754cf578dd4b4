"""claim controls: per-organization limits, quotas and pauses; paused job types
(issue 10)

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('organization_limits',
    sa.Column('organization', sa.String(length=140), nullable=False),
    sa.Column('job_type', sa.String(length=140), nullable=False),
    sa.Column('max_running', sa.Integer(), nullable=True),
    sa.Column('max_queued', sa.Integer(), nullable=True),
    sa.Column('paused', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('modified_at', sa.Double(), nullable=False),
    sa.ForeignKeyConstraint(['organization'], ['organizations.name'],
                            name=op.f('fk_organization_limits_organization_organizations'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('organization', 'job_type', name=op.f('pk_organization_limits'))
    )
    op.create_table('paused_job_types',
    sa.Column('job_type', sa.String(length=140), nullable=False),
    sa.Column('paused_at', sa.Double(), nullable=False),
    sa.ForeignKeyConstraint(['job_type'], ['job_types.name'],
                            name=op.f('fk_paused_job_types_job_type_job_types'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_type', name=op.f('pk_paused_job_types'))
    )


def downgrade() -> None:
    op.drop_table('paused_job_types')
    op.drop_table('organization_limits')
