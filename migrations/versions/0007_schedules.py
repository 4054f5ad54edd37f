"""Schedules: their definitions, one row per scheduled time (unique), and the documents each
run took

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def _when(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        'schedules',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('name', sa.String(length=100), nullable=False),
        sa.Column('cron', sa.String(length=200), nullable=True),
        sa.Column('every_seconds', sa.Integer(), nullable=True),
        sa.Column('tz', sa.String(length=64), nullable=False),
        sa.Column('source_dir', sa.Text(), nullable=False),
        sa.Column('glob', sa.String(length=200), nullable=False),
        sa.Column('template_path', sa.Text(), nullable=True),
        sa.Column('prompt', sa.Text(), nullable=True),
        sa.Column('model', sa.Text(), nullable=False),
        sa.Column('quant', sa.String(length=8), nullable=True),
        sa.Column('options', sa.Text(), nullable=False),
        sa.Column('output_dir', sa.Text(), nullable=False),
        sa.Column('overlap', sa.String(length=8), nullable=False),
        sa.Column('catch_up', sa.String(length=8), nullable=False),
        sa.Column('catch_up_window_seconds', sa.Integer(), nullable=False),
        _when('paused_at'),
        sa.Column('pause_note', sa.Text(), nullable=True),
        _when('created_at', nullable=False),
        sa.PrimaryKeyConstraint('id', name='pk_schedules'),
        sa.UniqueConstraint('name', name='uq_schedules_name'),
    )
    op.create_table(
        'schedule_runs',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('schedule_id', sa.String(length=32), nullable=False),
        _when('scheduled_for', nullable=False),
        sa.Column('trigger', sa.String(length=16), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.Column('force', sa.Boolean(), nullable=False),
        sa.Column('job_id', sa.String(length=32), nullable=True),
        sa.Column('summary', sa.Text(), nullable=True),
        sa.Column('output_path', sa.Text(), nullable=True),
        _when('lease_expires_at'),
        _when('created_at', nullable=False),
        _when('started_at'),
        _when('finished_at'),
        _when('written_at'),
        sa.ForeignKeyConstraint(['schedule_id'], ['schedules.id'],
                                name='fk_schedule_runs_schedule_id_schedules', ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name='fk_schedule_runs_job_id_jobs',
                                ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id', name='pk_schedule_runs'),
        sa.UniqueConstraint('schedule_id', 'scheduled_for',
                            name='uq_schedule_runs_schedule_id_scheduled_for'),
    )
    op.create_index('ix_schedule_runs_status', 'schedule_runs', ['status'])
    op.create_table(
        'schedule_documents',
        sa.Column('id', BigId, autoincrement=True, nullable=False),
        sa.Column('schedule_id', sa.String(length=32), nullable=False),
        sa.Column('run_id', sa.String(length=32), nullable=False),
        sa.Column('path', sa.Text(), nullable=False),
        sa.Column('content_hash', sa.String(length=64), nullable=False),
        sa.Column('fingerprint', sa.String(length=64), nullable=False),
        sa.Column('custom_id', sa.String(length=100), nullable=True),
        sa.Column('part', sa.Integer(), nullable=False),
        sa.Column('parts', sa.Integer(), nullable=False),
        sa.Column('tokens', sa.Integer(), nullable=True),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('error', sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(['schedule_id'], ['schedules.id'],
                                name='fk_schedule_documents_schedule_id_schedules',
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['run_id'], ['schedule_runs.id'],
                                name='fk_schedule_documents_run_id_schedule_runs',
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name='pk_schedule_documents'),
    )
    op.create_index('ix_schedule_documents_schedule_hash', 'schedule_documents',
                    ['schedule_id', 'content_hash', 'fingerprint'])
    op.create_index('ix_schedule_documents_run_id', 'schedule_documents', ['run_id'])


def downgrade() -> None:
    op.drop_table('schedule_documents')
    op.drop_table('schedule_runs')
    op.drop_table('schedules')
