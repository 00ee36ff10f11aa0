# The envelope (docs/adr/0014-audit-envelope.md). Each column is added NOT NULL with a
# constant database default ('') that stays in place: PostgreSQL 11+ records such a
# default in the catalogue and adds the column without rewriting the table or its
# indexes, so this runs in milliseconds on an outbox holding millions of rows, and
# rows written without the envelope by a release still running the old code get ''.

from django.db import migrations, models

ENVELOPE = (
    ("actor_type", 32),
    ("actor_id", 255),
    ("subject_type", 64),
    ("subject_id", 255),
    ("request_id", 128),
    ("traceparent", 55),
)


class Migration(migrations.Migration):
    dependencies = [
        ("event_log", "0003_relay_control"),
    ]

    operations = [
        migrations.AddField(
            model_name=model_name,
            name=name,
            field=models.CharField(blank=True, db_default="", max_length=max_length),
        )
        for model_name in ("outboxevent", "deadletter")
        for name, max_length in ENVELOPE
    ]
