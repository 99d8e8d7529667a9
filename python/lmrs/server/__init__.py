"""The HTTP server: aiohttp app, lmdeploy-style /generate, OpenAI routes, OpenAPI + Swagger UI."""
