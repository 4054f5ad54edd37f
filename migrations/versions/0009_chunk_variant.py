"""Each chunk names the model and quantization that run it: a job's lines may name different
models, so results say which one produced each line

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('chunks') as batch:
        batch.add_column(sa.Column('model', sa.Text(), nullable=True))
        batch.add_column(sa.Column('quant', sa.String(length=8), nullable=True))
    op.execute("UPDATE chunks SET model = (SELECT jobs.model FROM jobs WHERE jobs.id = chunks.job_id), "
               "quant = (SELECT jobs.quant FROM jobs WHERE jobs.id = chunks.job_id)")
    with op.batch_alter_table('chunks') as batch:
        batch.alter_column('model', existing_type=sa.Text(), nullable=False)
        batch.alter_column('quant', existing_type=sa.String(length=8), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table('chunks') as batch:
        batch.drop_column('quant')
        batch.drop_column('model')
