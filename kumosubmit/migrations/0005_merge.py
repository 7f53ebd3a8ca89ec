from django.db import migrations


class Migration(migrations.Migration):
    """Joins the relay queue and the app passwords, which were built side by side."""

    dependencies = [
        ("kumosubmit", "0004_app_passwords"),
        ("kumosubmit", "0004_relay_queue"),
    ]

    operations = []
