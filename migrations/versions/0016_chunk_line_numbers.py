"""Each chunk lists its lines' numbers (chunks.line_nos), and lines lose their index on
(job_id, chunk_seq), which claims used to find a chunk's lines. A big job's rows arrive in
file order while chunks group lines by length, so each row went to a random place in that
index: up to a third of a million-line COPY's time on a database holding earlier jobs. A
partial index keeps finding the few lines refused at submit (chunk_seq 0), by status.
Existing chunks get their numbers here, from that index, before it goes.

Revision ID: 0016
Revises: 0015
"""

import sqlalchemy as sa
from alembic import op

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None

REFUSED = sa.text("chunk_seq = 0")

# Each chunk's lines, ascending, as the JSON list batchq.store.models.line_numbers_json makes.
PG_FILL = """
UPDATE chunks SET line_nos = (
    SELECT coalesce(json_agg(line_no ORDER BY line_no), '[]')::text FROM lines
    WHERE lines.job_id = chunks.job_id AND lines.chunk_seq = chunks.seq)"""
SQLITE_FILL = """
UPDATE chunks SET line_nos = (
    SELECT json_group_array(line_no) FROM (
        SELECT line_no FROM lines
        WHERE lines.job_id = chunks.job_id AND lines.chunk_seq = chunks.seq
        ORDER BY line_no))"""


def upgrade() -> None:
    op.add_column('chunks', sa.Column('line_nos', sa.Text(), nullable=True))
    op.execute(PG_FILL if op.get_bind().dialect.name == 'postgresql' else SQLITE_FILL)
    with op.batch_alter_table('chunks') as batch:
        batch.alter_column('line_nos', existing_type=sa.Text(), nullable=False)
    op.drop_index('ix_lines_job_id_chunk_seq', table_name='lines')
    op.create_index('ix_lines_refused', 'lines', ['job_id', 'status'], postgresql_where=REFUSED,
                    sqlite_where=REFUSED)


def downgrade() -> None:
    op.drop_index('ix_lines_refused', table_name='lines')
    op.create_index('ix_lines_job_id_chunk_seq', 'lines', ['job_id', 'chunk_seq'])
    with op.batch_alter_table('chunks') as batch:
        batch.drop_column('line_nos')
