"""leaner job indexes: fewer index entries per claim and completion

Every index on ``background_jobs`` gets an entry from each claim and each
completion (both change the status, so neither update is HOT).

- ``(organization, status)`` is dropped: a prefix of ``(organization, status,
  created_at)``, which serves the same metric.
- ``(status, modified_at)`` becomes ``ix_background_jobs_finished`` on
  ``(modified_at)``, holding only terminal jobs on PostgreSQL: retention and the
  dependency sweeps look up nothing else by it, and a claim adds no entry. (A
  partial index on ``(status, modified_at)`` would not do: PostgreSQL drops the
  status condition its predicate implies, leaving a range on the second column.)
  SQLite's planner cannot prove ``status = 'completed'`` implies a partial
  index's ``status IN (...)``, so there it holds every job.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

# Static text from the domain's own status values (the same as schema.py).
TERMINAL = sa.text("status IN ('canceled', 'completed', 'dead_letter')")


def upgrade() -> None:
    op.drop_index('ix_background_jobs_org_status', table_name='background_jobs')
    op.drop_index('ix_background_jobs_status_modified', table_name='background_jobs')
    op.create_index('ix_background_jobs_finished', 'background_jobs', ['modified_at'],
                    unique=False, postgresql_where=TERMINAL)


def downgrade() -> None:
    op.drop_index('ix_background_jobs_finished', table_name='background_jobs',
                  postgresql_where=TERMINAL)
    op.create_index('ix_background_jobs_status_modified', 'background_jobs',
                    ['status', 'modified_at'], unique=False)
    op.create_index('ix_background_jobs_org_status', 'background_jobs',
                    ['organization', 'status'], unique=False)
