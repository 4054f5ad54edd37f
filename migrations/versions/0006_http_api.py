"""The HTTP API: api_keys, files and batches; jobs get a completion window (expires_at) and
jobs and lines an `expired` state

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

JOBS_BEFORE = "status IN ('queued', 'running', 'completed', 'failed', 'cancelled')"
JOBS_AFTER = "status IN ('queued', 'running', 'completed', 'failed', 'cancelled', 'expired')"
LINES_BEFORE = "status IN ('pending', 'succeeded', 'failed', 'cancelled')"
LINES_AFTER = "status IN ('pending', 'succeeded', 'failed', 'cancelled', 'expired')"


def _when(name: str) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=True)


def upgrade() -> None:
    # (SQLite rebuilds these tables; batchq.store.migrate turns foreign keys off meanwhile,
    # or dropping the old jobs table would cascade to its lines.)
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(_when('expires_at'))
        batch.drop_constraint(op.f('ck_jobs_status'), type_='check')
        batch.create_check_constraint(op.f('ck_jobs_status'), JOBS_AFTER)
    op.create_index('ix_jobs_status_expires_at', 'jobs', ['status', 'expires_at'])
    with op.batch_alter_table('lines') as batch:
        batch.drop_constraint(op.f('ck_lines_status'), type_='check')
        batch.create_check_constraint(op.f('ck_lines_status'), LINES_AFTER)

    op.create_table(
        'api_keys',
        sa.Column('id', sa.String(length=24), nullable=False),
        sa.Column('name', sa.String(length=100), nullable=False),
        sa.Column('secret_sha256', sa.String(length=64), nullable=False),
        sa.Column('max_active_batches', sa.Integer(), nullable=True),
        sa.Column('max_pending_lines', sa.Integer(), nullable=True),
        sa.Column('requests_per_minute', sa.Integer(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        _when('revoked_at'),
        sa.PrimaryKeyConstraint('id', name='pk_api_keys'),
        sa.UniqueConstraint('name', name='uq_api_keys_name'),
    )
    op.create_table(
        'files',
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('tenant', sa.String(length=100), nullable=False),
        sa.Column('purpose', sa.String(length=32), nullable=False),
        sa.Column('filename', sa.Text(), nullable=False),
        sa.Column('bytes', sa.BigInteger(), nullable=False),
        sa.Column('lines', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        _when('deleted_at'),
        sa.Column('batch_id', sa.String(length=64), nullable=True),
        sa.Column('rendered', sa.String(length=16), nullable=True),
        sa.Column('idempotency_key', sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint('id', name='pk_files'),
        sa.UniqueConstraint('tenant', 'idempotency_key', name='uq_files_tenant_idempotency_key'),
    )
    op.create_index('ix_files_tenant_created_at', 'files', ['tenant', 'created_at', 'id'])
    op.create_table(
        'batches',
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('tenant', sa.String(length=100), nullable=False),
        sa.Column('input_file_id', sa.String(length=64), nullable=False),
        sa.Column('endpoint', sa.String(length=64), nullable=False),
        sa.Column('completion_window', sa.String(length=16), nullable=False),
        sa.Column('metadata', sa.Text(), nullable=True),
        sa.Column('model', sa.Text(), nullable=True),
        sa.Column('job_id', sa.String(length=32), nullable=True),
        sa.Column('errors', sa.Text(), nullable=True),
        sa.Column('errors_total', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        _when('failed_at'),
        _when('cancelling_at'),
        sa.Column('idempotency_key', sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name='fk_batches_job_id_jobs',
                                ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id', name='pk_batches'),
        sa.UniqueConstraint('tenant', 'idempotency_key', name='uq_batches_tenant_idempotency_key'),
    )
    op.create_index('ix_batches_tenant_created_at', 'batches', ['tenant', 'created_at', 'id'])


def downgrade() -> None:
    op.drop_index('ix_batches_tenant_created_at', table_name='batches')
    op.drop_table('batches')
    op.drop_index('ix_files_tenant_created_at', table_name='files')
    op.drop_table('files')
    op.drop_table('api_keys')
    with op.batch_alter_table('lines') as batch:
        batch.drop_constraint(op.f('ck_lines_status'), type_='check')
        batch.create_check_constraint(op.f('ck_lines_status'), LINES_BEFORE)
    op.drop_index('ix_jobs_status_expires_at', table_name='jobs')
    with op.batch_alter_table('jobs') as batch:
        batch.drop_constraint(op.f('ck_jobs_status'), type_='check')
        batch.create_check_constraint(op.f('ck_jobs_status'), JOBS_BEFORE)
        batch.drop_column('expires_at')
