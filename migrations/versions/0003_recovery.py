"""Recovery and hardening: chunks.enqueued_at for the lost-message sweep; refused lines may
repeat a custom_id (the unique index now covers accepted lines only)

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

ACCEPTED = sa.text("kind <> 'invalid'")


def upgrade() -> None:
    with op.batch_alter_table('chunks') as batch:
        batch.add_column(sa.Column('enqueued_at', sa.DateTime(timezone=True), nullable=True))
    # Chunks queued before this revision were sent when their job was created.
    op.execute("UPDATE chunks SET enqueued_at = (SELECT jobs.created_at FROM jobs "
               "WHERE jobs.id = chunks.job_id)")
    with op.batch_alter_table('lines') as batch:
        batch.drop_constraint('uq_lines_job_id_custom_id', type_='unique')
    op.create_index('uq_lines_job_id_custom_id', 'lines', ['job_id', 'custom_id'], unique=True,
                    postgresql_where=ACCEPTED, sqlite_where=ACCEPTED)


def downgrade() -> None:
    op.drop_index('uq_lines_job_id_custom_id', table_name='lines')
    with op.batch_alter_table('lines') as batch:
        batch.create_unique_constraint('uq_lines_job_id_custom_id', ['job_id', 'custom_id'])
    with op.batch_alter_table('chunks') as batch:
        batch.drop_column('enqueued_at')
