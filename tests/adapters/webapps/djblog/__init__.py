"""A small Django blog (SQLite, contrib.auth, sessions, templates) for fieldlab's Django-app tests.

Settings are chosen by env vars so one project shows each wiring mistake:
DJBLOG_DB (SQLite file), DJBLOG_ORDER (``good``, ``fieldlab_first``, ``no_auth``, ``none``, ``twice``),
DJBLOG_FIELDLAB (``ok``, ``missing``, ``not_dict``, ``unknown_key``, ``bad_lab``, ``bad_create``,
``no_create``, ``no_session_exp``),
DJBLOG_APP (``1`` with ``fieldlab.adapters.django_app`` in INSTALLED_APPS, ``0`` without).
"""
