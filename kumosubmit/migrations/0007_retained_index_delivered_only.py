"""The retention index holds delivered rows only: a new message costs one index entry fewer."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("kumosubmit", "0006_message_content_last"),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name="message",
            name="kumosubmit_message_retained",
        ),
        migrations.AddIndex(
            model_name="message",
            index=models.Index(
                condition=models.Q(
                    ("content_removed_at__isnull", True), ("delivered_at__isnull", False)
                ),
                fields=["delivered_at"],
                name="kumosubmit_message_retained",
            ),
        ),
    ]
