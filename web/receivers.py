"""Signal receivers for Django's own User model, which is not ours to give actions to.

Django's User admin, `manage.py shell` and any `user.save()` change users without
going through web/actions.py. These hand each such change to an action, which
tells the user's sockets after commit (docs/architecture.md, "Changes to users").
Our own models never broadcast from signals.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from web import actions

# A save that names its fields and none of these (update_last_login at every login)
# cannot have changed what a socket was let in with.
CREDENTIAL_FIELDS = frozenset({"is_active", "password"})


@receiver(post_save, sender=settings.AUTH_USER_MODEL, dispatch_uid="web.user_saved")
def user_saved(
    sender: Any, instance: Any, created: bool, update_fields: Any = None, **kwargs: Any
) -> None:
    if created:
        return
    if update_fields is not None and not CREDENTIAL_FIELDS.intersection(update_fields):
        return
    actions.do_check_user_sockets(instance)


@receiver(post_delete, sender=settings.AUTH_USER_MODEL, dispatch_uid="web.user_deleted")
def user_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    actions.do_end_user_sockets(instance.pk)
