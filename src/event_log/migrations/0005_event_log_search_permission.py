# The "Event log" page's permission (event_log.view_event_log); the model has no table.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("event_log", "0004_envelope"),
    ]

    operations = [
        migrations.CreateModel(
            name="EventLogEntry",
            fields=[
                ("event_id", models.UUIDField(primary_key=True, serialize=False)),
            ],
            options={
                "verbose_name": "event log",
                "verbose_name_plural": "event log",
                "db_table": "event_log_clickhouse",
                "permissions": [("view_event_log", "Can search the event log (ClickHouse)")],
                "managed": False,
                "default_permissions": (),
            },
        ),
    ]
