"""One row per GPU batch a worker ran, for reports (throughput over time, batch latency,
padding efficiency, per-worker share)

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table(
        'batch_runs',
        sa.Column('id', BigId, autoincrement=True, nullable=False),
        sa.Column('job_id', sa.String(length=32), nullable=False),
        sa.Column('chunk_seq', sa.Integer(), nullable=False),
        sa.Column('worker', sa.String(length=200), nullable=False),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('seconds', sa.Float(), nullable=False),
        sa.Column('rows', sa.Integer(), nullable=False),
        sa.Column('prompt_tokens', sa.Integer(), nullable=False),
        sa.Column('padded_prompt_tokens', sa.Integer(), nullable=False),
        sa.Column('completion_tokens', sa.Integer(), nullable=False),
        sa.Column('decode_slots', sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name='fk_batch_runs_job_id_jobs',
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name='pk_batch_runs'),
    )
    op.create_index('ix_batch_runs_job_id', 'batch_runs', ['job_id'])
    op.create_index('ix_batch_runs_finished_at', 'batch_runs', ['finished_at'])


def downgrade() -> None:
    op.drop_index('ix_batch_runs_finished_at', table_name='batch_runs')
    op.drop_index('ix_batch_runs_job_id', table_name='batch_runs')
    op.drop_table('batch_runs')
