"""Test applications, one per framework, sharing the shop view logic in ``common``."""
