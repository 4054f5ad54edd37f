"""Lines are stored without two per-row checks that submit already makes: the foreign key to
their job (a deleted job's lines are deleted by a trigger instead) and the unique index on
(job_id, custom_id). Together they were half of PostgreSQL's work in a big COPY.

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None

ACCEPTED = sa.text("kind <> 'invalid'")

# What ON DELETE CASCADE did for lines. Only on jobs, so it costs a submit nothing.
PG_FUNCTION = """
CREATE FUNCTION batchq_delete_job_lines() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM lines WHERE job_id = OLD.id;
    RETURN OLD;
END $$"""
PG_TRIGGER = ("CREATE TRIGGER jobs_delete_lines AFTER DELETE ON jobs FOR EACH ROW "
              "EXECUTE FUNCTION batchq_delete_job_lines()")
SQLITE_TRIGGER = ("CREATE TRIGGER jobs_delete_lines AFTER DELETE ON jobs FOR EACH ROW "
                  "BEGIN DELETE FROM lines WHERE job_id = OLD.id; END")


def upgrade() -> None:
    op.drop_index('uq_lines_job_id_custom_id', table_name='lines')
    with op.batch_alter_table('lines') as batch:
        batch.drop_constraint('fk_lines_job_id_jobs', type_='foreignkey')
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(PG_FUNCTION)
        op.execute(PG_TRIGGER)
    else:
        op.execute(SQLITE_TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("DROP TRIGGER jobs_delete_lines ON jobs")
        op.execute("DROP FUNCTION batchq_delete_job_lines()")
    else:
        op.execute("DROP TRIGGER jobs_delete_lines")
    with op.batch_alter_table('lines') as batch:
        batch.create_foreign_key('fk_lines_job_id_jobs', 'jobs', ['job_id'], ['id'],
                                 ondelete='CASCADE')
    op.create_index('uq_lines_job_id_custom_id', 'lines', ['job_id', 'custom_id'], unique=True,
                    postgresql_where=ACCEPTED, sqlite_where=ACCEPTED)
