"""lines.chunk_seq: chunks group lines of similar length, no longer contiguous runs

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('lines') as batch:
        batch.add_column(sa.Column('chunk_seq', sa.Integer(), nullable=True))
    # Lines stored before this revision belong to the chunk whose line range holds them.
    op.execute(
        "UPDATE lines SET chunk_seq = (SELECT chunks.seq FROM chunks "
        "WHERE chunks.job_id = lines.job_id "
        "AND lines.line_no BETWEEN chunks.first_line AND chunks.last_line)")
    op.execute("UPDATE lines SET chunk_seq = 0 WHERE chunk_seq IS NULL")
    with op.batch_alter_table('lines') as batch:
        batch.alter_column('chunk_seq', existing_type=sa.Integer(), nullable=False)
        batch.create_index('ix_lines_job_id_chunk_seq', ['job_id', 'chunk_seq'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('lines') as batch:
        batch.drop_index('ix_lines_job_id_chunk_seq')
        batch.drop_column('chunk_seq')
