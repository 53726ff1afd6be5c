"""PostgreSQL only: NOTIFY waiting workers of new tasks and result waiters of state changes,
and vacuum the task table early.

Doing it in triggers keeps sending to one INSERT statement and catches every writer.
"""

from django.db import migrations

FORWARD = """
CREATE OR REPLACE FUNCTION django_tasks_notify_enqueued() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('django_tasks_enqueued', NEW.queue);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION django_tasks_notify_changed() RETURNS trigger AS $$
BEGIN
    IF NEW.state IS DISTINCT FROM OLD.state OR NEW.meta IS DISTINCT FROM OLD.meta THEN
        PERFORM pg_notify('django_tasks_state', NEW.task_id);
    END IF;
    IF NEW.lease_token IS NULL AND OLD.lease_token IS NOT NULL
            AND NEW.state IN ('PENDING', 'RETRY') THEN
        PERFORM pg_notify('django_tasks_enqueued', NEW.queue);
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER django_tasks_enqueued AFTER INSERT ON django_tasks_taskresult
    FOR EACH ROW EXECUTE FUNCTION django_tasks_notify_enqueued();

-- Every claim and outcome leaves a dead row version behind: vacuum this table early so
-- the partial index of due tasks stays small under a steady stream of tasks.
ALTER TABLE django_tasks_taskresult SET (autovacuum_vacuum_scale_factor = 0.01,
                                         autovacuum_vacuum_threshold = 1000,
                                         autovacuum_analyze_scale_factor = 0.02);

CREATE TRIGGER django_tasks_changed AFTER UPDATE ON django_tasks_taskresult
    FOR EACH ROW WHEN (NEW.state IS DISTINCT FROM OLD.state
                       OR NEW.meta IS DISTINCT FROM OLD.meta
                       OR (NEW.lease_token IS NULL AND OLD.lease_token IS NOT NULL))
    EXECUTE FUNCTION django_tasks_notify_changed();
"""

BACKWARD = """
ALTER TABLE django_tasks_taskresult RESET (autovacuum_vacuum_scale_factor,
                                           autovacuum_vacuum_threshold,
                                           autovacuum_analyze_scale_factor);
DROP TRIGGER IF EXISTS django_tasks_changed ON django_tasks_taskresult;
DROP TRIGGER IF EXISTS django_tasks_enqueued ON django_tasks_taskresult;
DROP FUNCTION IF EXISTS django_tasks_notify_changed();
DROP FUNCTION IF EXISTS django_tasks_notify_enqueued();
"""


def _on_postgresql(sql):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(sql)

    return run


class Migration(migrations.Migration):
    dependencies = [("django_tasks", "0001_initial")]

    operations = [migrations.RunPython(_on_postgresql(FORWARD), _on_postgresql(BACKWARD))]
