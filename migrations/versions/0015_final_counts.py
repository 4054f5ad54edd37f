"""A finished job's lines by variant queue and status, stored once when it becomes final, so
the metrics no longer count every line ever stored at each scrape. Filled here for the jobs
that are final already.

Revision ID: 0015
Revises: 0014
"""

import sqlalchemy as sa
from alembic import op

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None

BACKFILL = """
INSERT INTO final_counts (job_id, queue, status, lines)
SELECT lines.job_id, coalesce(chunks.queue, jobs.queue), lines.status, count(*)
FROM lines JOIN jobs ON jobs.id = lines.job_id
LEFT OUTER JOIN chunks ON chunks.job_id = lines.job_id AND chunks.seq = lines.chunk_seq
WHERE jobs.status IN ('completed', 'failed', 'cancelled', 'expired')
GROUP BY lines.job_id, coalesce(chunks.queue, jobs.queue), lines.status"""


def upgrade() -> None:
    op.create_table(
        'final_counts',
        sa.Column('job_id', sa.String(length=32), nullable=False),
        sa.Column('queue', sa.String(length=200), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('lines', sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name='fk_final_counts_job_id_jobs',
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('job_id', 'queue', 'status', name='pk_final_counts'),
    )
    op.execute(BACKFILL)


def downgrade() -> None:
    op.drop_table('final_counts')
