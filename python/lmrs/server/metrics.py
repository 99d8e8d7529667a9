"""GET /metrics: Prometheus text format through prometheus-client, with vLLM's metric names where
one exists (so existing Grafana dashboards work) plus lmrs's own (sessions, step time, blocks).

Gauges and the engine's cumulative counters are read from the engine's stats snapshot at scrape
time; per-request histograms are observed when each request ends (ServerState.log_request), the
engine step time by the AsyncEngine's on_step hook.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from lmrs.server.state import get_state

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000)
STEP_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class EngineCollector:
    """Gauges and counters computed from the engine's stats at scrape time."""

    def __init__(self, state, labels: dict):
        self.state = state
        self.labels = labels

    def collect(self):
        s = self.state.engine.stats_snapshot or {}
        names, vals = list(self.labels), list(self.labels.values())

        def gauge(name, doc, value):
            g = GaugeMetricFamily(name, doc, labels=names)
            g.add_metric(vals, float(value))
            return g

        def counter(name, doc, value):
            c = CounterMetricFamily(name, doc, labels=names)
            c.add_metric(vals, float(value))
            return c

        total = max(1, s.get("num_blocks", 1))
        yield gauge("vllm:num_requests_running", "Requests running (in the batch).", s.get("running", 0))
        yield gauge("vllm:num_requests_waiting", "Requests waiting to be scheduled.", s.get("waiting", 0))
        usage = s.get("blocks_used", 0) / total
        yield gauge("vllm:kv_cache_usage_perc", "KV cache usage: fraction of blocks in use (1 = 100%).", usage)
        yield gauge("vllm:gpu_cache_usage_perc", "KV cache usage (older vLLM name).", usage)
        yield counter("vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", s.get("prefix_query_tokens", 0))
        yield counter("vllm:prefix_cache_hits", "Prompt tokens found in the prefix cache.", s.get("prefix_hit_tokens", 0))
        yield counter("vllm:prompt_tokens", "Prompt tokens computed (prefill work done).", s.get("prompt_tokens_computed", 0))
        yield counter("vllm:generation_tokens", "Tokens generated.", s.get("generation_tokens", 0))
        yield counter("vllm:num_preemptions", "Sequences preempted (by recompute).", s.get("preemptions", 0))
        drafts = s.get("spec_decode_num_draft_tokens", 0)
        accepted = s.get("spec_decode_num_accepted_tokens", 0)
        rows = s.get("spec_decode_num_drafts", 0)
        yield counter("vllm:spec_decode_num_drafts", "Decode rows that verified drafts.", rows)
        yield counter("vllm:spec_decode_num_draft_tokens", "Draft tokens proposed and verified.", drafts)
        yield counter("vllm:spec_decode_num_accepted_tokens", "Draft tokens accepted.", accepted)
        yield gauge("lmrs:spec_decode_acceptance_rate", "Accepted / proposed draft tokens (0 before any).",
                    accepted / drafts if drafts else 0.0)
        yield gauge("lmrs:spec_decode_accepted_tokens_per_step",
                    "Tokens a verifying row gains per step (accepted drafts + its own token; 0 before any).",
                    (accepted + rows) / rows if rows else 0.0)
        yield counter("lmrs:cpu_int8_products", "CPU products run with 8-bit activations (decode steps, "
                      "--cpu-decode-activations int8).", s.get("cpu_int8_products", 0))
        yield gauge("lmrs:sessions_alive", "Interactive sessions kept by the engine.", s.get("sessions", 0))
        yield counter("lmrs:session_hit_tokens", "Context tokens reused from sessions' pinned KV blocks.", s.get("session_hit_tokens", 0))
        blocks = GaugeMetricFamily("lmrs:kv_blocks", "KV blocks by state (free includes cached).", labels=names + ["state"])
        for st in ("free", "used", "cached"):
            blocks.add_metric(vals + [st], float(s.get(f"blocks_{st}", 0)))
        yield blocks
        yield gauge("lmrs:kv_blocks_total", "Usable KV blocks.", s.get("num_blocks", 0))
        yield gauge("lmrs:requests_unfinished", "Requests the server is waiting on.", self.state.engine.num_unfinished)


class Metrics:
    def __init__(self, state):
        self.state = state
        self.registry = CollectorRegistry(auto_describe=True)
        labels = {"model_name": state.settings.model_name}
        self.labels = labels
        r = self.registry
        ln = list(labels)
        self.success = Counter("vllm:request_success", "Finished requests by finish reason.", ln + ["finished_reason"], registry=r)
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Time to first token.", ln, buckets=LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("vllm:time_per_output_token_seconds", "Mean time per output token after the first.", ln,
                              buckets=LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "End-to-end request latency.", ln, buckets=LATENCY_BUCKETS, registry=r)
        self.queue = Histogram("vllm:request_queue_time_seconds", "Time from arrival to the first scheduled step.", ln,
                               buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_len = Histogram("vllm:request_prompt_tokens", "Prompt tokens per request.", ln, buckets=TOKEN_BUCKETS, registry=r)
        self.gen_len = Histogram("vllm:request_generation_tokens", "Generated tokens per request.", ln, buckets=TOKEN_BUCKETS, registry=r)
        self.step = Histogram("lmrs:engine_step_seconds", "Engine step time (schedule + forward + sample + update).", ln,
                              buckets=STEP_BUCKETS, registry=r)
        self.http = Counter("lmrs:http_requests", "Engine requests by route and HTTP status.", ln + ["route", "status"], registry=r)
        r.register(EngineCollector(state, labels))
        state.engine.on_step = self.observe_step

    def observe_step(self, deltas, step_time: float) -> None:
        if step_time > 0:
            self.step.labels(**self.labels).observe(step_time)

    def observe_request(self, rec, now: float) -> None:
        lv = self.labels
        reason = rec.finish_reason or "abort"
        self.success.labels(**lv, finished_reason=reason).inc()
        self.http.labels(**lv, route=rec.route, status=str(rec.status)).inc()
        self.e2e.labels(**lv).observe(now - rec.arrival)
        self.prompt_len.labels(**lv).observe(rec.prompt_tokens)
        self.gen_len.labels(**lv).observe(rec.output_tokens)
        if rec.first_token is not None:
            self.ttft.labels(**lv).observe(rec.first_token - rec.arrival)
            if rec.output_tokens > 1:
                self.tpot.labels(**lv).observe((now - rec.first_token) / (rec.output_tokens - 1))
        if rec.queue_time is not None:
            self.queue.labels(**lv).observe(rec.queue_time)


async def metrics_handler(request: web.Request) -> web.Response:
    state = get_state(request)
    body = generate_latest(state.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
