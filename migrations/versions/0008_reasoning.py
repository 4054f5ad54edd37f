"""A thinking model's reasoning is kept apart from its answer: lines.reasoning and the tokens
it took

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('lines', sa.Column('reasoning', sa.Text(), nullable=True))
    op.add_column('lines', sa.Column('reasoning_tokens', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('lines') as batch:
        batch.drop_column('reasoning_tokens')
        batch.drop_column('reasoning')
