"""The reasoning tokens a chunk's batches generated, summed like its completion tokens, so a
job (and an HTTP batch's usage.output_tokens_details) counts them without reading its lines.
Filled here from the lines of chunks stored before (where identical lines shared one
generation, each line's count is added: those old jobs may count a little more than ran).

Revision ID: 0017
Revises: 0016
"""

import sqlalchemy as sa
from alembic import op

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None

# One pass over the lines that have reasoning (PostgreSQL and SQLite 3.33+ take UPDATE FROM).
BACKFILL = """
UPDATE chunks SET reasoning_tokens = r.tokens
FROM (SELECT job_id, chunk_seq, sum(reasoning_tokens) AS tokens FROM lines
      WHERE reasoning_tokens IS NOT NULL GROUP BY job_id, chunk_seq) AS r
WHERE chunks.job_id = r.job_id AND chunks.seq = r.chunk_seq"""


def upgrade() -> None:
    op.add_column('chunks', sa.Column('reasoning_tokens', sa.BigInteger(), nullable=False,
                                      server_default='0'))
    op.execute(BACKFILL)


def downgrade() -> None:
    with op.batch_alter_table('chunks') as batch:
        batch.drop_column('reasoning_tokens')
