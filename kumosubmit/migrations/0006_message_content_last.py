from django.db import migrations


def move_content_last(apps, schema_editor):
    """Rebuild the SQLite table with ``content`` as its last column.

    SQLite writes a row whose last value is ``zeroblob(N)`` without building the
    N zero bytes in memory, and the spool then fills it in pieces through the
    incremental blob API (kumosubmit/spool/orm.py). Anywhere but last, the zeros
    would be built in one piece: another copy of every large message. This is
    the rebuild Django's own AlterField does on SQLite, which appends the altered
    column. PostgreSQL streams large contents with COPY and needs nothing.
    """
    if schema_editor.connection.vendor != "sqlite":
        return
    message = apps.get_model("kumosubmit", "Message")
    content = message._meta.get_field("content")
    # A new field object: fields are ordered by when they were made, not by name.
    last = content.clone()
    last.set_attributes_from_name(content.name)
    schema_editor._remake_table(message, alter_fields=[(content, last)])


class Migration(migrations.Migration):
    dependencies = [("kumosubmit", "0005_merge")]

    operations = [migrations.RunPython(move_content_last, migrations.RunPython.noop)]
