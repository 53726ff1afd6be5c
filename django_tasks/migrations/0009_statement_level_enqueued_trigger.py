"""PostgreSQL only: the NOTIFY of new tasks from a statement-level trigger.

The row trigger of migration 0002 ran a PL/pgSQL call per inserted row: 5,000 calls for a
group of 5,000 (PostgreSQL then folds the identical notifications of a transaction into
one). A statement trigger with a transition table notifies each queue of the statement's
rows once; workers hear the same notifications, at the same commit.
"""

from django.db import migrations

FORWARD = """
CREATE OR REPLACE FUNCTION django_tasks_notify_enqueued_rows() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('django_tasks_enqueued', queues.queue)
        FROM (SELECT DISTINCT queue FROM django_tasks_new_rows) AS queues;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS django_tasks_enqueued ON django_tasks_taskresult;
CREATE TRIGGER django_tasks_enqueued AFTER INSERT ON django_tasks_taskresult
    REFERENCING NEW TABLE AS django_tasks_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION django_tasks_notify_enqueued_rows();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS django_tasks_enqueued ON django_tasks_taskresult;
CREATE TRIGGER django_tasks_enqueued AFTER INSERT ON django_tasks_taskresult
    FOR EACH ROW EXECUTE FUNCTION django_tasks_notify_enqueued();
DROP FUNCTION IF EXISTS django_tasks_notify_enqueued_rows();
"""


def _on_postgresql(sql):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(sql)

    return run


class Migration(migrations.Migration):
    dependencies = [("django_tasks", "0008_workers")]

    operations = [migrations.RunPython(_on_postgresql(FORWARD), _on_postgresql(BACKWARD))]
