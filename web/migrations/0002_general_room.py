from __future__ import annotations

from typing import Any

from django.db import migrations


def create_general(apps: Any, schema_editor: Any) -> None:
    Room = apps.get_model("web", "Room")
    Room.objects.get_or_create(slug="general", defaults={"title": "General", "private": False})


class Migration(migrations.Migration):
    dependencies = [("web", "0001_initial")]

    operations = [migrations.RunPython(create_general, migrations.RunPython.noop)]
