"""metrics indexes: per-organization jobs by status and queue depth (issue 7)

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

# Static text from the domain's own status values (the same as schema.py).
CLAIMABLE = sa.text("status IN ('queued', 'retrying')")


def upgrade() -> None:
    op.create_index('ix_background_jobs_org_status', 'background_jobs',
                    ['organization', 'status'], unique=False)
    op.create_index('ix_background_jobs_org_claimable', 'background_jobs',
                    ['organization', 'priority', 'due_at'], unique=False,
                    postgresql_where=CLAIMABLE, sqlite_where=CLAIMABLE)


def downgrade() -> None:
    op.drop_index('ix_background_jobs_org_claimable', table_name='background_jobs',
                  postgresql_where=CLAIMABLE, sqlite_where=CLAIMABLE)
    op.drop_index('ix_background_jobs_org_status', table_name='background_jobs')
