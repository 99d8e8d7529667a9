#!/usr/bin/env bash
# The curl calls of the README. Usage: examples/curl.sh [http://127.0.0.1:23333]
set -euo pipefail
URL=${1:-http://127.0.0.1:23333}

# Non-streaming /generate
curl -s "$URL/generate" -d '{"prompt": "What is the capital of France?", "temperature": 0, "request_output_len": 32}'
echo

# Streaming /generate (one JSON object per line)
curl -s -N "$URL/generate" -d '{"prompt": "Tell me a joke.", "stream": true, "request_output_len": 48}'

# A session: turn 1, turn 2 (only the new message), then end it
curl -s "$URL/generate" -d '{"prompt": "My name is Ada.", "session_id": 42, "sequence_start": true, "request_output_len": 32}'
echo
curl -s "$URL/generate" -d '{"prompt": "What is my name?", "session_id": 42, "sequence_start": false, "request_output_len": 32}'
echo
curl -s "$URL/generate" -d '{"prompt": "", "session_id": 42, "sequence_start": false, "sequence_end": true, "request_output_len": 0}'
echo

# OpenAI-style routes
curl -s "$URL/v1/models"
echo
curl -s "$URL/v1/chat/completions" -H 'Content-Type: application/json' \
  -d '{"messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 32}'
echo
curl -s -N "$URL/v1/chat/completions" -H 'Content-Type: application/json' \
  -d '{"messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 32, "stream": true}'
curl -s "$URL/v1/completions" -H 'Content-Type: application/json' \
  -d '{"prompt": "The quick brown fox", "max_tokens": 16}'
echo
# (long answers are captured, then cut: piping curl into `head` makes curl fail with exit 23)
emb=$(curl -s "$URL/v1/embeddings" -H 'Content-Type: application/json' -d '{"input": "The sea is blue."}')
echo "${emb:0:200}..."

# Health, stats, metrics, the OpenAPI document
curl -s "$URL/health"; echo
curl -s "$URL/stats"; echo
metrics=$(curl -s "$URL/metrics")
grep -m 3 vllm: <<<"$metrics"
spec=$(curl -s "$URL/openapi.json")
echo "${spec:0:200}..."
