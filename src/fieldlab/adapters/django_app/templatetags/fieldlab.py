"""``{% load fieldlab %}``: read the current request's variants in Django templates.

::

    {% load fieldlab %}
    {% variant "home-quote" as quote %}                       {# None when not in it #}
    {% variant "home-quote" default="control" as quote %}
    {% if quote == "short" %}...{% endif %}
    <p>{% variant "home-quote" default="control" %}</p>      {# writes the variant ('' for None) #}
    {% param "search-ranking" "page_size" default=10 as page_size %}

They call :func:`fieldlab.variant` and :func:`fieldlab.param`, so a read in a
template marks the experiment exposed exactly as a read in the view does, and
outside a request (or past the middleware, e.g. a streamed body) they give the
default. Arguments are template expressions: literals or variables.
"""

from __future__ import annotations

from typing import Any

from django import template
from django.template.base import Parser, Token
from django.utils.html import conditional_escape

import fieldlab

__all__ = ["register"]

register = template.Library()


class _ReadNode(template.Node):
    """One ``variant`` / ``param`` tag: the call, its arguments, and where the result goes."""

    def __init__(self, fn: Any, args: list[Any], default: Any, target: str | None) -> None:
        self.fn, self.args, self.default, self.target = fn, args, default, target

    def render(self, context: template.Context) -> str:
        args = [a.resolve(context) for a in self.args]
        default = self.default.resolve(context) if self.default is not None else None
        value = self.fn(*args, default)
        if self.target is not None:
            context[self.target] = value
            return ""
        if value is None:
            return ""
        text = str(value)
        return str(conditional_escape(text)) if context.autoescape else text


def _parse(parser: Parser, token: Token, fn: Any, positional: int, usage: str) -> _ReadNode:
    bits = token.split_contents()
    name, rest = bits[0], bits[1:]
    target = None
    if len(rest) >= 2 and rest[-2] == "as":
        target, rest = rest[-1], rest[:-2]
    default = None
    args = []
    for bit in rest:
        key, sep, value = bit.partition("=")
        if sep and key == "default" and default is None:
            default = parser.compile_filter(value)
        elif sep and key.isidentifier():
            raise template.TemplateSyntaxError(f"'{name}' takes only default=..., not {key}=; usage: {usage}")
        else:
            args.append(parser.compile_filter(bit))
    if len(args) != positional:
        raise template.TemplateSyntaxError(
            f"'{name}' takes {positional} argument(s) before default=/as; usage: {usage}"
        )
    return _ReadNode(fn, args, default, target)


@register.tag(name="variant")
def variant_tag(parser: Parser, token: Token) -> _ReadNode:
    """``{% variant KEY [default=VALUE] [as NAME] %}``: the request's variant of experiment KEY."""
    return _parse(parser, token, fieldlab.variant, 1, '{% variant "home-quote" default="control" as quote %}')


@register.tag(name="param")
def param_tag(parser: Parser, token: Token) -> _ReadNode:
    """``{% param KEY NAME [default=VALUE] [as VAR] %}``: a parameter of the request's variant of KEY."""
    return _parse(parser, token, fieldlab.param, 2, '{% param "search-ranking" "page_size" default=10 as n %}')
