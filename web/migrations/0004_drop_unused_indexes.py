"""Drop the indexes nothing uses (docs/data.md, "Indexes"; plans by `python -m bench.explain`).

- Django's index on a foreign key that a unique constraint already leads with: that
  constraint's index serves the same lookups, ON DELETE CASCADE's included.
- The `_like` (varchar_pattern_ops) indexes Django adds beside a unique varchar on PostgreSQL,
  for LIKE 'prefix%' queries: none is made on these columns (the admin searches with
  icontains, which no btree serves), and equality uses the unique index.
"""

from __future__ import annotations

from typing import Any

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

# (index, table, column) as Django 5.2 named them in 0001 and 0003.
LIKE_INDEXES = [
    ("web_room_slug_bdd85f50_like", "web_room", "slug"),
    ("web_apitoken_key_hash_7744ed7c_like", "web_apitoken", "key_hash"),
    ("web_servicekey_key_hash_c02ab08f_like", "web_servicekey", "key_hash"),
]


def drop_like_indexes(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        for index, _table, _column in LIKE_INDEXES:
            schema_editor.execute(f'DROP INDEX IF EXISTS "{index}"')


def create_like_indexes(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        for index, table, column in LIKE_INDEXES:
            schema_editor.execute(
                f'CREATE INDEX IF NOT EXISTS "{index}"'
                f' ON "{table}" ("{column}" varchar_pattern_ops)'
            )


class Migration(migrations.Migration):
    dependencies = [
        ("web", "0003_notifications_services_webhooks"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterField(
            model_name="idempotencykey",
            name="service",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="+",
                to="web.servicekey",
            ),
        ),
        migrations.AlterField(
            model_name="membership",
            name="user",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="memberships",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.AlterField(
            model_name="notification",
            name="user",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="notifications",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.AlterField(
            model_name="webhookdelivery",
            name="webhook",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="deliveries",
                to="web.webhook",
            ),
        ),
        migrations.RunPython(drop_like_indexes, create_like_indexes),
    ]
