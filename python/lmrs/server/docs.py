"""GET / and /docs: the Swagger UI page for this server's OpenAPI document.

The page is ours (a few lines of HTML); its assets (Swagger UI 5's bundle, preset and CSS) come from
the `swagger-ui-py` package, installed with lmrs as a dependency and found at run time, so the page
works offline and lmrs carries no copy of them.

With `--api-keys`, the page, its assets and `/openapi.json` stay public (a browser cannot send a
bearer header when it loads a page, and none of them holds a secret); every API route still needs
a key. The OpenAPI document declares the bearer scheme, so the page's **Authorize** button takes the
key and "Try it out" sends it (`persistAuthorization` keeps it across reloads).
"""

from __future__ import annotations

import importlib.util
import os

from aiohttp import web

DOCS_PREFIX = "/docs"
STATIC_PREFIX = DOCS_PREFIX + "/static"
# Paths that never need an API key (the assets are everything under STATIC_PREFIX).
PUBLIC_DOC_PATHS = ("/", DOCS_PREFIX, DOCS_PREFIX + "/", "/openapi.json")
ASSETS = ("swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "swagger-ui.css", "favicon-32x32.png")

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8"/>
  <title>lmrs API</title>
  <link rel="stylesheet" href="{static}/swagger-ui.css"/>
  <link rel="icon" type="image/png" href="{static}/favicon-32x32.png"/>
</head>
<body>
<div id="swagger-ui"></div>
<script src="{static}/swagger-ui-bundle.js"></script>
<script src="{static}/swagger-ui-standalone-preset.js"></script>
<script>
window.onload = () => {{
  window.ui = SwaggerUIBundle({{
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    layout: "StandaloneLayout",
    deepLinking: true,
    persistAuthorization: true,
  }});
}};
</script>
</body>
</html>
""".format(static=STATIC_PREFIX)


def swagger_ui_assets_dir() -> str:
    """The folder of Swagger UI's files in the installed `swagger-ui-py` package."""
    spec = importlib.util.find_spec("swagger_ui")
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in roots:
        static = os.path.join(root, "static")
        if all(os.path.isfile(os.path.join(static, name)) for name in ASSETS):
            return static
    raise RuntimeError("the Swagger UI assets were not found: the 'swagger-ui-py' package is missing or "
                       "incomplete; reinstall it with: pip install 'swagger-ui-py>=25.7,<27'")


def is_public(path: str) -> bool:
    """Whether a request path is part of the docs page (reachable without an API key)."""
    return path in PUBLIC_DOC_PATHS or path.startswith(STATIC_PREFIX + "/")


async def swagger_page(request: web.Request) -> web.Response:
    return web.Response(text=PAGE, content_type="text/html")


def add_routes(app: web.Application) -> None:
    static = swagger_ui_assets_dir()  # fail at start-up, not on the first page load
    app.router.add_get("/", swagger_page)
    app.router.add_get(DOCS_PREFIX, swagger_page)
    app.router.add_get(DOCS_PREFIX + "/", swagger_page)
    for name in ASSETS:  # only the files the page loads (the package also ships an editor and source maps)
        path = os.path.join(static, name)

        async def asset(request: web.Request, path=path) -> web.FileResponse:
            return web.FileResponse(path, headers={"Cache-Control": "public, max-age=86400"})

        app.router.add_get(f"{STATIC_PREFIX}/{name}", asset)
