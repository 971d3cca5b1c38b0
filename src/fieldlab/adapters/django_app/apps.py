"""The Django app config of fieldlab (label ``fieldlab``): registers the system checks when Django starts."""

from __future__ import annotations

from django.apps import AppConfig

__all__ = ["FieldLabConfig"]


class FieldLabConfig(AppConfig):
    """``INSTALLED_APPS += ["fieldlab.adapters.django_app"]``: checks at ``manage.py check``, template tags."""

    name = "fieldlab.adapters.django_app"
    label = "fieldlab"
    verbose_name = "fieldlab experiments"
    default = True

    def ready(self) -> None:
        from . import checks  # registering happens on import

        checks.register()
