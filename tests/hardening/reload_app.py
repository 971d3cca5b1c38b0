"""A Starlette app under uvicorn that answers with the config its request was evaluated under.

The lab comes from the file in RELOAD_TEST_LAB and reloads it on its own
watcher; ``/v`` returns the request context's config version and the keys of
the experiments it assigned, so the test can tell a complete config from an
empty or truncated one.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

import fieldlab
from fieldlab import context
from fieldlab.adapters.asgi import FieldLabMiddleware

lab = fieldlab.Lab.from_file(os.environ["RELOAD_TEST_LAB"])


async def health(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def version(request: Request) -> JSONResponse:
    ctx = context.current()
    if ctx is None:
        return JSONResponse({"version": None, "experiments": []})
    return JSONResponse(
        {"version": ctx.version, "experiments": sorted(ctx.assignments), "config_error": lab.config_error is not None}
    )


app = Starlette(routes=[Route("/health", health), Route("/v", version)])
app.add_middleware(FieldLabMiddleware, lab=lab, units={"user": "header:X-User-Id"})
