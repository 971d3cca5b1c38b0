"""Template tag libraries of the fieldlab Django app (``{% load fieldlab %}``)."""

__all__: list[str] = []
