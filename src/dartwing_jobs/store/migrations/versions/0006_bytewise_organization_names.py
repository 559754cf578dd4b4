"""bytewise organization names: collation "C" on PostgreSQL

Every column holding an organization name compares bytewise on PostgreSQL, as on
SQLite. The fair claim descends ``ix_background_jobs_org_claimable`` once for each
organization it visits; under a libc locale (``en_US.UTF-8``, and ``C.UTF-8``
too: PostgreSQL takes only ``C`` and ``POSIX`` for byte order) each key
comparison of a descent called strcoll on copies of both strings, where "C"
compares the bytes. All of them change together: a
comparison between two columns of different non-default collations is an error.

The change rebuilds the indexes on these columns and holds an exclusive lock on
each table meanwhile (stop workers and submitters for the upgrade of a large
database). Names sort by code point afterwards, which is the order they already
had on ``C.UTF-8`` databases and on SQLite.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

#: (table, column), the referenced key first.
COLUMNS = [
    ('organizations', 'name'),
    ('org_members', 'organization'),
    ('background_jobs', 'organization'),
    ('job_execution_log', 'organization'),
    ('job_events', 'organization'),
    ('schedules', 'organization'),
    ('organization_limits', 'organization'),
]


def _retype(collation: str | None) -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return  # SQLite compares text bytewise already (BINARY)
    for table, column in COLUMNS:
        op.alter_column(table, column, existing_type=sa.String(length=140),
                        type_=sa.String(length=140, collation=collation),
                        existing_nullable=False)


def upgrade() -> None:
    _retype('C')


def downgrade() -> None:
    _retype(None)
