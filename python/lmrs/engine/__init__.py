"""The engine: request lifecycle around the Rust core (`LLMEngine`), the offline `Engine`, and the
threaded `AsyncEngine` the HTTP server uses."""
