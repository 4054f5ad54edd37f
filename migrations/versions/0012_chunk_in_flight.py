"""The lines of a chunk whose batches may have started since its last write, whose attempts
are not yet counted on their rows (the next claim counts them if the worker died)

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('chunks', sa.Column('in_flight', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('chunks') as batch:
        batch.drop_column('in_flight')
