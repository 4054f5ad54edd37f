"""The functions a line's answer called (OpenAI tool_calls), kept apart from its text

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('lines', sa.Column('tool_calls', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('lines') as batch:
        batch.drop_column('tool_calls')
