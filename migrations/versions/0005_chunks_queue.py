"""Each chunk names its own queue (until now read from its job), so that a job's lines can
run on several variants

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('chunks') as batch:
        batch.add_column(sa.Column('queue', sa.String(length=200), nullable=True))
    op.execute("UPDATE chunks SET queue = (SELECT jobs.queue FROM jobs WHERE jobs.id = chunks.job_id)")
    with op.batch_alter_table('chunks') as batch:
        batch.alter_column('queue', existing_type=sa.String(length=200), nullable=False)
    op.create_index('ix_chunks_queue_status', 'chunks', ['queue', 'status'])


def downgrade() -> None:
    op.drop_index('ix_chunks_queue_status', table_name='chunks')
    with op.batch_alter_table('chunks') as batch:
        batch.drop_column('queue')
