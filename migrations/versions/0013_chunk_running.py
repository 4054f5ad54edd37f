"""Of a chunk's lines in flight, those of the batch that started last (PostgreSQL's workers
mark each batch as it starts): the next claim counts an attempt on these alone if the worker
died

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('chunks', sa.Column('running', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('chunks') as batch:
        batch.drop_column('running')
