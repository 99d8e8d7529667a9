"""ServerSettings: the HTTP side's knobs (the engine's are in lmrs.engine.config.EngineConfig)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ServerSettings:
    host: str = "0.0.0.0"
    port: int = 23333
    model_name: str = "SmolLM2-135M-Instruct"
    api_keys: list[str] = field(default_factory=list)  # empty: no authentication
    max_body_bytes: int = 8 << 20  # larger bodies get 413
    max_queued_requests: int = 1024  # unfinished requests beyond this get 503 + Retry-After
    request_timeout: float = 0.0  # seconds; 0: none
    shutdown_timeout: float = 30.0  # grace period for running requests on SIGTERM
    enable_metrics: bool = True
    log_requests: bool = True
    tool_call_parser: str | None = None  # hermes | llama3_json | mistral; None: from the chat template
    grammar_compile_timeout: float = 10.0  # seconds a request waits for its grammar to compile (then 400)
    response_id_tag: str = ""  # a replica's name inside its Responses ids (resp_<tag>_<hex>) for routing; "": none
