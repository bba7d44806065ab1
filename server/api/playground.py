"""The browser playground (`/playground`, docs/playground.md): static files shipped in the
package, no build step and nothing fetched from elsewhere; the page talks to the same HTTP API
as any client. `/` links to it."""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response

from server.api.errors import APIError

STATIC = files("server.api") / "static"
ASSETS = {"playground.js": "text/javascript", "playground.css": "text/css"}
# Only this origin's scripts and styles; fetch() may reach other servers (the comparison view).
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self' http: https:; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'")
ROOT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

ROOT_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>unmask</title>
<link rel="icon" href="data:,">
<style>body { font-family: system-ui, sans-serif; margin: 2rem; }</style></head>
<body>
<h1>unmask</h1>
<p>An OpenAI-compatible server for block-diffusion language models.</p>
<ul>
<li><a href="playground">Playground</a>: watch the model unmask, step by step</li>
<li><a href="v1/models">/v1/models</a> (API key required if the server has one)</li>
<li><a href="docs">API reference</a></li>
<li><a href="metrics">/metrics</a></li>
</ul>
</body></html>
"""


def install_playground(app: FastAPI, api_key_required: bool) -> None:
    """`api_key_required` tells the page to wait for a key before it lists the models."""
    headers = {"Content-Security-Policy": CSP, "Cache-Control": "no-cache"}
    page = (STATIC / "playground.html").read_text().replace(
        "<body>", f'<body data-key-required="{str(api_key_required).lower()}">', 1)

    @app.get("/", include_in_schema=False)
    async def root() -> HTMLResponse:
        return HTMLResponse(ROOT_PAGE, headers={"Content-Security-Policy": ROOT_CSP})

    @app.get("/playground", include_in_schema=False)
    async def playground() -> HTMLResponse:
        return HTMLResponse(page, headers=headers)

    @app.get("/playground/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in ASSETS:
            raise APIError(404, f"no playground file {name!r}", "NotFoundError")
        return Response((STATIC / name).read_bytes(), media_type=ASSETS[name], headers=headers)
