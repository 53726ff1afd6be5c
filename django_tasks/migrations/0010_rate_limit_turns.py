from django.db import migrations


class Migration(migrations.Migration):
    """Tasks held back by a rate limit take their turns from ``allowed_at``: the turns handed
    out before (up to ``next_slot``) are kept by moving ``allowed_at`` past them."""

    dependencies = [
        ("django_tasks", "0009_statement_level_enqueued_trigger"),
    ]

    operations = [
        migrations.RunSQL(
            "UPDATE django_tasks_ratelimitbucket SET allowed_at = next_slot"
            " WHERE next_slot > allowed_at",
            migrations.RunSQL.noop,
        ),
        migrations.RemoveField(
            model_name="ratelimitbucket",
            name="next_slot",
        ),
    ]
