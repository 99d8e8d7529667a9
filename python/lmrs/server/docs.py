"""GET / (Swagger UI, from files installed with the package: works offline) and its assets."""

from __future__ import annotations

import os

from aiohttp import web

STATIC = os.path.join(os.path.dirname(__file__), "static", "swagger-ui")

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8"/>
  <title>lmrs API</title>
  <link rel="stylesheet" href="/docs/static/swagger-ui.css"/>
  <link rel="icon" type="image/png" href="/docs/static/favicon-32x32.png"/>
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script src="/docs/static/swagger-ui-standalone-preset.js"></script>
<script>
window.onload = () => {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    layout: "StandaloneLayout",
    deepLinking: true,
  });
};
</script>
</body>
</html>
"""


async def swagger_page(request: web.Request) -> web.Response:
    return web.Response(text=PAGE, content_type="text/html")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", swagger_page)
    app.router.add_get("/docs", swagger_page)
    app.router.add_static("/docs/static", STATIC, show_index=False)
